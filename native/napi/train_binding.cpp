// Training from JavaScript: createTrainer(config) resolves to a handle whose step() runs one optimiser step on
// encoded pairs off the event loop; its LoRA weights, optimiser moments and generator state can be read and
// restored synchronously (checkpoints, exports). gradFile() is the whole `ncp-native grad` job.
#include <atomic>
#include <cstdio>
#include <memory>

#include "napi/async.h"
#include "napi/bindings.h"
#include "napi/tensor_args.h"
#include "train/grad_io.h"
#include "train/trainer.h"

namespace ncp::napi {
namespace {

using train::Trainer;

Napi::Object object_attr(Napi::Env env, const Napi::Object& o, const char* name) {
  if (!o.Has(name) || o.Get(name).IsUndefined()) return Napi::Object::New(env);
  if (!o.Get(name).IsObject()) throw_error(env, "NCP_EINVAL", std::string("trainer config: '") + name + "' must be an object");
  return o.Get(name).As<Napi::Object>();
}

train::ObjectiveConfig read_objective(Napi::Env env, const Napi::Object& o) {
  train::ObjectiveConfig c;
  try {
    c.objective = train::parse_objective(string_attr(env, o, "objective", "dpo"));
    c.space = train::parse_space(string_attr(env, o, "space", "ncp"));
    c.ncp_layer = train::parse_ncp_layer(string_attr(env, o, "ncpLayer", "mid"));
    c.ncp_timestep = train::parse_ncp_timestep(string_attr(env, o, "ncpTimestep", "prev"));
  } catch (const Error& e) {
    throw_error(env, e.code(), e.what());
  }
  c.beta = number_attr(env, o, "beta", c.beta);
  c.cpo_lambda = number_attr(env, o, "cpoLambda", c.cpo_lambda);
  c.ncp_coeff = number_attr(env, o, "ncpCoeff", c.ncp_coeff);
  c.ncp_pool = bool_attr(env, o, "ncpPool", c.ncp_pool);
  c.log_reference = bool_attr(env, o, "logReference", c.log_reference);
  return c;
}

train::TrainerConfig read_trainer_config(Napi::Env env, const Napi::Object& o) {
  train::TrainerConfig c;
  c.model_dir = string_attr(env, o, "model", "");
  if (c.model_dir.empty()) throw_error(env, "NCP_EINVAL", "createTrainer: 'model' (a diffusers folder) is required");
  c.variant = string_attr(env, o, "variant", "");
  c.seed = uint64_t(number_attr(env, o, "seed", 0));
  c.gradient_checkpointing = bool_attr(env, o, "gradientCheckpointing", false);
  c.recompute = recompute_attr(env, o, "createTrainer");
  c.device = device_arg(env, string_attr(env, o, "device", "cpu"), "createTrainer");
  const std::string mp = string_attr(env, o, "mixedPrecision", "no");
  if (mp != "no" && mp != "bf16" && mp != "fp16")
    throw_error(env, "NCP_EINVAL", "createTrainer: mixedPrecision must be 'no', 'bf16' or 'fp16', got '" + mp + "'");
  if (mp != "no" && c.device < 0)
    throw_error(env, "NCP_EINVAL", "createTrainer: mixed precision " + mp + " needs a CUDA device (device is cpu)");
  c.weight_matrices = mp == "bf16" ? DType::BF16 : mp == "fp16" ? DType::F16 : DType::F32;
  // Dynamic loss scaling (fp16 turns it on): { initScale, growthInterval }; present = on.
  if (o.Has("lossScaling") && !o.Get("lossScaling").IsUndefined()) {
    const Napi::Object ls = object_attr(env, o, "lossScaling");
    c.loss_scaling.enabled = true;
    c.loss_scaling.init_scale = number_attr(env, ls, "initScale", c.loss_scaling.init_scale);
    c.loss_scaling.growth_interval = int64_t(number_attr(env, ls, "growthInterval", double(c.loss_scaling.growth_interval)));
  }
  const Napi::Object lora = object_attr(env, o, "lora");
  c.lora_rank = int64_t(number_attr(env, lora, "rank", double(c.lora_rank)));
  c.lora_alpha = number_attr(env, lora, "alpha", NAN);
  const std::string init = string_attr(env, lora, "init", "gaussian");
  if (init != "gaussian" && init != "kaiming")
    throw_error(env, "NCP_EINVAL", "createTrainer: lora.init must be 'gaussian' or 'kaiming', got '" + init + "'");
  c.lora_init = init == "gaussian" ? model::LoraInit::Gaussian : model::LoraInit::Kaiming;
  if (lora.Has("targets") && lora.Get("targets").IsArray()) {
    const Napi::Array t = lora.Get("targets").As<Napi::Array>();
    c.lora_targets.clear();
    for (uint32_t i = 0; i < t.Length(); ++i) c.lora_targets.push_back(t.Get(i).ToString().Utf8Value());
  }
  c.objective = read_objective(env, object_attr(env, o, "objective"));
  const Napi::Object opt = object_attr(env, o, "optimizer");
  auto& a = c.optimizer.adamw;
  a.lr = number_attr(env, opt, "lr", 5e-4);
  a.beta1 = number_attr(env, opt, "beta1", a.beta1);
  a.beta2 = number_attr(env, opt, "beta2", a.beta2);
  a.eps = number_attr(env, opt, "eps", a.eps);
  a.weight_decay = number_attr(env, opt, "weightDecay", a.weight_decay);
  c.optimizer.max_grad_norm = number_attr(env, opt, "maxGradNorm", c.optimizer.max_grad_norm);
  try {
    c.optimizer.schedule = train::parse_lr_schedule(string_attr(env, opt, "schedule", "constant_with_warmup"));
  } catch (const Error& e) {
    throw_error(env, e.code(), e.what());
  }
  c.optimizer.warmup_steps = int64_t(number_attr(env, opt, "warmupSteps", 0));
  c.optimizer.total_steps = int64_t(number_attr(env, opt, "totalSteps", 0));
  return c;
}

train::PairData read_pairs(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsObject()) throw_error(env, "NCP_EINVAL", what + ": a batch must be an object of tensors");
  const Napi::Object o = v.As<Napi::Object>();
  HostTensor w = read_tensor(env, o, "x0_w"), l = read_tensor(env, o, "x0_l");
  HostTensor ctx = read_tensor(env, o, "encoder_hidden_states");
  HostTensor te = read_tensor(env, o, "text_embeds", true), tid = read_tensor(env, o, "time_ids", true);
  expect_rank(env, what, "x0_w", w, 4);
  expect_shape(env, what, "x0_l", l, w.shape);
  expect_rank(env, what, "encoder_hidden_states", ctx, 3);
  train::PairData d;
  d.pairs = w.dim(0), d.channels = w.dim(1), d.height = w.dim(2), d.width = w.dim(3), d.text_len = ctx.dim(1);
  if (ctx.dim(0) != d.pairs) expect_shape(env, what, "encoder_hidden_states", ctx, {d.pairs, ctx.dim(1), ctx.dim(2)});
  d.x0_w = std::move(w.data), d.x0_l = std::move(l.data), d.encoder_hidden_states = std::move(ctx.data);
  d.text_embeds = std::move(te.data), d.time_ids = std::move(tid.data);
  return d;
}

Napi::Object metrics_object(Napi::Env env, const train::ObjectiveResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("loss", r.loss);
  o.Set("implicitAcc", r.implicit_acc);
  o.Set("rewardW", r.reward_w);
  o.Set("rewardL", r.reward_l);
  o.Set("policyW", r.policy_w);
  o.Set("policyL", r.policy_l);
  o.Set("refW", r.ref_w);
  o.Set("refL", r.ref_l);
  return o;
}

// Clears the trainer's busy flag when a worker's call ends, however it ends.
struct Release {
  std::atomic<bool>& flag;
  ~Release() { flag = false; }
};

class TrainerHandle : public Napi::ObjectWrap<TrainerHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Trainer",
                       {InstanceMethod<&TrainerHandle::Step>("step"),
                        InstanceMethod<&TrainerHandle::Evaluate>("evaluate"),
                        InstanceMethod<&TrainerHandle::Lora>("loraTensors"),
                        InstanceMethod<&TrainerHandle::SetLora>("setLoraTensors"),
                        InstanceMethod<&TrainerHandle::State>("state"),
                        InstanceMethod<&TrainerHandle::SetState>("setState"),
                        InstanceMethod<&TrainerHandle::Info>("info")});
  }
  explicit TrainerHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TrainerHandle>(info) {}
  std::shared_ptr<Trainer> trainer;
  std::shared_ptr<std::atomic<bool>> busy = std::make_shared<std::atomic<bool>>(false);

 private:
  // One native call at a time: the trainer's buffers and adapters are shared by every method.
  void claim(Napi::Env env, const char* what) {
    if (busy->exchange(true))
      throw_error(env, "NCP_EBUSY", std::string(what) + ": the trainer is running another call; await it first");
  }
  void claim_sync(Napi::Env env, const char* what) {
    if (busy->load()) throw_error(env, "NCP_EBUSY", std::string(what) + ": the trainer is running a step; await it first");
  }

  Napi::Value Step(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsArray()) throw_error(env, "NCP_EINVAL", "step(microBatches): an array of batches is required");
    const Napi::Array a = info[0].As<Napi::Array>();
    auto batches = std::make_shared<std::vector<train::PairData>>();
    for (uint32_t i = 0; i < a.Length(); ++i)
      batches->push_back(read_pairs(env, a.Get(i), "step: micro-batch " + std::to_string(i)));
    claim(env, "step");
    auto t = trainer;
    auto b = busy;
    return PromiseWorker<train::StepMetrics>::Start(
        env,
        [t, batches, b] {
          const Release release{*b};
          return t->step(*batches);
        },
        [](Napi::Env e, train::StepMetrics& m) -> Napi::Value {
          Napi::Object o = metrics_object(e, m.objective);
          o.Set("step", double(m.step));
          o.Set("gradNorm", m.grad_norm);
          o.Set("lr", m.lr);
          o.Set("seconds", m.seconds);
          o.Set("lossScale", m.loss_scale);
          o.Set("skipped", m.skipped);
          return o;
        });
  }

  Napi::Value Evaluate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto batch = std::make_shared<train::PairData>(read_pairs(env, info[0], "evaluate"));
    const uint64_t seed = info.Length() > 1 && info[1].IsNumber() ? uint64_t(info[1].As<Napi::Number>().Int64Value()) : 0;
    claim(env, "evaluate");
    auto t = trainer;
    auto b = busy;
    return PromiseWorker<train::ObjectiveResult>::Start(
        env,
        [t, batch, seed, b] {
          const Release release{*b};
          return t->evaluate(*batch, seed);
        },
        [](Napi::Env e, train::ObjectiveResult& r) -> Napi::Value { return metrics_object(e, r); });
  }

  Napi::Value Lora(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    claim_sync(env, "loraTensors");
    const auto& ads = trainer->lora().adapters();
    Napi::Array out = Napi::Array::New(env, ads.size());
    for (size_t i = 0; i < ads.size(); ++i) {
      const model::LoraAdapter& a = *ads[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("module", a.module);
      o.Set("rank", double(a.rank));
      o.Set("alpha", double(a.alpha));
      o.Set("inFeatures", double(a.in));
      o.Set("outFeatures", double(a.out));
      o.Set("A", write_tensor(env, HostTensor{{a.rank, a.in}, a.A}));
      o.Set("B", write_tensor(env, HostTensor{{a.out, a.rank}, a.B}));
      out.Set(uint32_t(i), o);
    }
    return out;
  }

  // setLoraTensors([{ module, A: {data, shape}, B: {data, shape} }]): every module must exist with its shapes.
  Napi::Value SetLora(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    claim_sync(env, "setLoraTensors");
    if (!info[0].IsArray()) throw_error(env, "NCP_EINVAL", "setLoraTensors(list): an array is required");
    const Napi::Array a = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      if (!a.Get(i).IsObject()) throw_error(env, "NCP_EINVAL", "setLoraTensors: entry " + std::to_string(i) + " is not an object");
      const Napi::Object o = a.Get(i).As<Napi::Object>();
      const std::string module = string_attr(env, o, "module", "");
      model::LoraAdapter* ad = trainer->lora().find(module);
      if (!ad) throw_error(env, "NCP_ELORA", "setLoraTensors: module '" + module + "' has no adapter in this run (rank " +
                                                 std::to_string(trainer->config().lora_rank) + ", its targets)");
      HostTensor A = read_tensor(env, o, "A"), B = read_tensor(env, o, "B");
      expect_shape(env, "setLoraTensors " + module, "A", A, {ad->rank, ad->in});
      expect_shape(env, "setLoraTensors " + module, "B", B, {ad->out, ad->rank});
      ad->A = std::move(A.data), ad->B = std::move(B.data);
    }
    return env.Undefined();
  }

  // { step, rng: [4 hex strings], moments: Float32Array[] (m_A, v_A, m_B, v_B per adapter, in loraTensors order),
  //   lossScale, lossScaleGoodSteps (loss scaling only) }
  Napi::Value State(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    claim_sync(env, "state");
    Napi::Object o = Napi::Object::New(env);
    o.Set("step", double(trainer->optimizer().steps_done()));
    Napi::Array rng = Napi::Array::New(env, 4);
    const auto s = trainer->rng().state();
    for (uint32_t i = 0; i < 4; ++i) {
      char hex[17];
      std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(s[i]));
      rng.Set(i, hex);
    }
    o.Set("rng", rng);
    auto& mom = trainer->optimizer().moments();
    Napi::Array m = Napi::Array::New(env, mom.size());
    for (size_t i = 0; i < mom.size(); ++i) {
      Napi::Float32Array f = Napi::Float32Array::New(env, mom[i].size());
      std::copy(mom[i].begin(), mom[i].end(), f.Data());
      m.Set(uint32_t(i), f);
    }
    o.Set("moments", m);
    if (trainer->loss_scaler().enabled()) {
      o.Set("lossScale", trainer->loss_scaler().scale());
      o.Set("lossScaleGoodSteps", double(trainer->loss_scaler().good_steps()));
    }
    return o;
  }

  Napi::Value SetState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    claim_sync(env, "setState");
    if (!info[0].IsObject()) throw_error(env, "NCP_EINVAL", "setState(state): an object is required");
    const Napi::Object o = info[0].As<Napi::Object>();
    const double step = number_attr(env, o, "step", -1);
    if (step < 0) throw_error(env, "NCP_EINVAL", "setState: 'step' must be a number >= 0");
    if (!o.Get("rng").IsArray() || o.Get("rng").As<Napi::Array>().Length() != 4)
      throw_error(env, "NCP_EINVAL", "setState: 'rng' must be 4 hex strings");
    std::array<uint64_t, 4> s{};
    for (uint32_t i = 0; i < 4; ++i) s[i] = std::stoull(o.Get("rng").As<Napi::Array>().Get(i).ToString().Utf8Value(), nullptr, 16);
    auto& mom = trainer->optimizer().moments();
    if (!o.Get("moments").IsArray() || o.Get("moments").As<Napi::Array>().Length() != mom.size())
      throw_error(env, "NCP_EINVAL", "setState: 'moments' must hold " + std::to_string(mom.size()) + " arrays");
    const Napi::Array m = o.Get("moments").As<Napi::Array>();
    for (uint32_t i = 0; i < m.Length(); ++i) {
      if (!m.Get(i).IsTypedArray() || m.Get(i).As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
          m.Get(i).As<Napi::Float32Array>().ElementLength() != mom[i].size())
        throw_error(env, "NCP_ESHAPE", "setState: moments[" + std::to_string(i) + "] must be a Float32Array of " +
                                           std::to_string(mom[i].size()));
      const Napi::Float32Array f = m.Get(i).As<Napi::Float32Array>();
      std::copy(f.Data(), f.Data() + f.ElementLength(), mom[i].begin());
    }
    // A checkpoint from a run without loss scaling resumes at the initial scale.
    const double scale = number_attr(env, o, "lossScale", 0);
    if (trainer->loss_scaler().enabled() && scale > 0) {
      try {
        trainer->loss_scaler().set_state(scale, int64_t(number_attr(env, o, "lossScaleGoodSteps", 0)));
      } catch (const Error& e) {
        throw_error(env, e.code(), "setState: " + std::string(e.what()));
      }
    }
    trainer->rng().set_state(s);
    trainer->optimizer().set_steps_done(int64_t(step));
    return env.Undefined();
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const auto& m = trainer->model();
    Napi::Object o = Napi::Object::New(env);
    o.Set("loraParameters", double(trainer->lora().num_params()));
    o.Set("loraModules", double(trainer->lora().adapters().size()));
    o.Set("sdxl", m.config.text_time_embedding);
    o.Set("latentChannels", double(m.config.in_channels));
    o.Set("crossAttentionDim", double(m.config.cross_attention_dim));
    o.Set("pooledDim", double(m.unet->pooled_dim()));
    o.Set("downscale", double(int64_t(1) << (m.config.levels() - 1)));
    return o;
  }
};

struct Constructors {
  Napi::FunctionReference trainer;
};

Napi::Value CreateTrainer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw_error(env, "NCP_EINVAL", "createTrainer(config): config must be an object");
  const train::TrainerConfig config = read_trainer_config(env, info[0].As<Napi::Object>());
  auto* ctors = static_cast<Constructors*>(info.Data());
  return PromiseWorker<std::shared_ptr<Trainer>>::Start(
      env, [config] { return std::make_shared<Trainer>(config); },
      [ctors](Napi::Env e, std::shared_ptr<Trainer>& t) -> Napi::Value {
        Napi::Object handle = ctors->trainer.New({});
        TrainerHandle::Unwrap(handle)->trainer = t;
        return handle;
      });
}

Napi::Value GradFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject())
    throw_error(env, "NCP_EINVAL", "gradFile({ model, input, output, objective, space, beta, ... }): an object is required");
  const Napi::Object o = info[0].As<Napi::Object>();
  const std::string dir = string_attr(env, o, "model", ""), input = string_attr(env, o, "input", ""),
                    output = string_attr(env, o, "output", ""), variant = string_attr(env, o, "variant", "");
  if (dir.empty() || input.empty() || output.empty())
    throw_error(env, "NCP_EINVAL", "gradFile: model, input and output paths are required");
  train::GradOptions opts;
  opts.objective = read_objective(env, o);
  opts.objective.log_reference = true;
  opts.lora_alpha = number_attr(env, o, "loraAlpha", NAN);
  return PromiseWorker<std::vector<std::string>>::Start(
      env,
      [=] {
        auto m = model::load_unet(dir, variant);
        return train::grad_file(*m, input, output, opts);
      },
      [](Napi::Env e, std::vector<std::string>& names) -> Napi::Value { return string_array(e, names); });
}

}  // namespace

void register_train(Napi::Env env, Napi::Object exports) {
  auto* ctors = new Constructors{Napi::Persistent(TrainerHandle::Define(env))};
  env.AddCleanupHook([ctors] { delete ctors; });
  exports.Set("createTrainer", Napi::Function::New(env, CreateTrainer, "createTrainer", ctors));
  exports.Set("gradFile", Napi::Function::New(env, GradFile, "gradFile"));
}

}  // namespace ncp::napi
