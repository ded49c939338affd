// benchGemm(M, N, K, reps) and benchConv2d({ n, cin, h, w, cout, k, stride, pad }, backward, reps): median GFLOP/s,
// measured off the event loop. `npm run bench` prints them as a table.
#include "cpu/bench.h"
#include "model/attention_bench.h"
#include "model/lora_bench.h"
#include "model/unet_bench.h"
#include "model/dev_ops.h"
#include "napi/async.h"
#include "napi/bindings.h"
#include "napi/tensor_args.h"
#include "train/step_bench.h"

namespace ncp::napi {
namespace {

int64_t positive(Napi::Env env, const Napi::Value& v, const char* name) {
  if (!v.IsNumber() || v.As<Napi::Number>().Int64Value() < 1)
    throw_error(env, "NCP_EINVAL", std::string("bench: '") + name + "' must be a positive integer");
  return v.As<Napi::Number>().Int64Value();
}

Napi::Value BenchGemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t M = positive(env, info[0], "M"), N = positive(env, info[1], "N"), K = positive(env, info[2], "K");
  const int reps = int(positive(env, info[3], "reps"));
  return PromiseWorker<double>::Start(
      env, [=] { return cpu::bench_gemm_gflops(M, N, K, reps); },
      [](Napi::Env e, double& g) -> Napi::Value { return Napi::Number::New(e, g); });
}

Napi::Value BenchConv2d(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw_error(env, "NCP_EINVAL", "benchConv2d(shape, backward, reps): shape must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  cpu::Conv2dShape s{positive(env, o.Get("n"), "n"),       positive(env, o.Get("cin"), "cin"),
                     positive(env, o.Get("h"), "h"),       positive(env, o.Get("w"), "w"),
                     positive(env, o.Get("cout"), "cout"), positive(env, o.Get("k"), "k"),
                     positive(env, o.Get("stride"), "stride"), o.Get("pad").ToNumber().Int64Value()};
  const bool backward = info[1].ToBoolean().Value();
  const int reps = int(positive(env, info[2], "reps"));
  return PromiseWorker<double>::Start(
      env, [=] { return cpu::bench_conv2d_gflops(s, backward, reps); },
      [](Napi::Env e, double& g) -> Napi::Value { return Napi::Number::New(e, g); });
}

Napi::Value BenchUNet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_error(env, "NCP_EINVAL", "benchUNet(preset, latent, batch, reps): preset must be a string");
  const std::string preset = info[0].As<Napi::String>().Utf8Value();
  const int64_t latent = positive(env, info[1], "latent"), batch = positive(env, info[2], "batch");
  const int reps = int(positive(env, info[3], "reps"));
  const int device = device_arg(env, info[4].IsString() ? info[4].As<Napi::String>().Utf8Value() : "cpu", "benchUNet");
  return PromiseWorker<model::UNetBenchResult>::Start(
      env, [=] { return model::bench_unet(preset, latent, batch, reps, device); },
      [](Napi::Env e, model::UNetBenchResult& r) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("medianSeconds", r.median_seconds);
        o.Set("bestSeconds", r.best_seconds);
        o.Set("gflop", r.gflop);
        o.Set("gflops", r.gflop / r.median_seconds);
        o.Set("parameters", double(r.parameters));
        o.Set("weightsSeconds", r.load_seconds);
        o.Set("devicePeakBytes", r.device_peak_bytes);
        return o;
      });
}

Napi::Value BenchUNetLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString() || !info[2].IsString())
    throw_error(env, "NCP_EINVAL", "benchUNetLoad(preset, dtype, path, latent, batch, reps): preset, dtype and path are strings");
  const std::string preset = info[0].As<Napi::String>(), dtype = info[1].As<Napi::String>(), path = info[2].As<Napi::String>();
  const int64_t latent = positive(env, info[3], "latent"), batch = positive(env, info[4], "batch");
  const int reps = info[5].IsNumber() && info[5].As<Napi::Number>().Int32Value() == 0 ? 0 : int(positive(env, info[5], "reps"));
  return PromiseWorker<model::UNetLoadBenchResult>::Start(
      env, [=] { return model::bench_unet_load(preset, dtype, path, latent, batch, reps); },
      [](Napi::Env e, model::UNetLoadBenchResult& r) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("fileBytes", r.file_bytes);
        o.Set("seconds", r.seconds);
        o.Set("peakRssBytes", r.peak_rss_bytes);
        o.Set("peakRssIsLoadOnly", r.peak_rss_is_load_only);
        o.Set("rssBeforeBytes", r.rss_before_bytes);
        o.Set("weightBytes", r.weight_bytes);
        o.Set("copiedBytes", r.copied_bytes);
        o.Set("firstForwardSeconds", r.first_forward_seconds);
        o.Set("forwardMedianSeconds", r.forward_median_seconds);
        o.Set("forwardGflop", r.forward_gflop);
        return o;
      });
}

Napi::Value BenchStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject())
    throw_error(env, "NCP_EINVAL", "benchStep({ preset, latent, pairs, objective, space, reps }): an object is required");
  const Napi::Object o = info[0].As<Napi::Object>();
  const std::string preset = string_attr(env, o, "preset", "sd15"), objective = string_attr(env, o, "objective", "dpo"),
                    space = string_attr(env, o, "space", "ncp");
  const double latent = number_attr(env, o, "latent", 32), pairs = number_attr(env, o, "pairs", 1),
               reps = number_attr(env, o, "reps", 3);
  if (!(latent >= 1 && pairs >= 1 && reps >= 1))
    throw_error(env, "NCP_EINVAL", "benchStep: latent, pairs and reps must be >= 1");
  const int device = device_arg(env, string_attr(env, o, "device", "cpu"), "benchStep");
  const std::string weights_file = string_attr(env, o, "weightsFile", "");
  const bool checkpointing = bool_attr(env, o, "gradientCheckpointing", false);
  const model::SelectiveRecompute recompute = recompute_attr(env, o, "benchStep");
  return PromiseWorker<train::StepBenchResult>::Start(
      env,
      [=] {
        train::StepBenchOptions so;
        so.preset = preset, so.latent = int64_t(latent), so.pairs = int64_t(pairs);
        so.objective = objective, so.space = space, so.reps = int(reps), so.device = device;
        so.file_dtype = weights_file;
        so.checkpointing = checkpointing, so.recompute = recompute;
        return train::bench_step(so);
      },
      [](Napi::Env e, train::StepBenchResult& r) -> Napi::Value {
        Napi::Object out = Napi::Object::New(e);
        out.Set("medianSeconds", r.median_seconds);
        out.Set("bestSeconds", r.best_seconds);
        out.Set("peakRssBytes", r.peak_rss_bytes);
        out.Set("loraParameters", double(r.lora_parameters));
        out.Set("devicePeakBytes", r.device_peak_bytes);
        out.Set("activationPeakBytes", r.activation_peak_bytes);
        out.Set("activationHeldBytes", r.activation_held_bytes);
        out.Set("forwardGflop", r.forward_gflop);
        return out;
      });
}

// The op benches' `device` ("cuda" unless given), parsed here; the bench itself checks that it can run.
int op_bench_device(Napi::Env env, const Napi::Object& o, const char* bench) {
  try {
    return dev::parse_device(string_attr(env, o, "device", "cuda"));
  } catch (const Error& e) {
    throw_error(env, e.code(), std::string(bench) + ": " + e.what());
  }
}

// One JS object per result, its fields set by `fields(object, result)`.
template <typename Result, typename Fields>
Napi::Array results_array(Napi::Env env, const std::vector<Result>& rs, Fields fields) {
  Napi::Array out = Napi::Array::New(env, rs.size());
  for (size_t i = 0; i < rs.size(); ++i) {
    Napi::Object r = Napi::Object::New(env);
    fields(r, rs[i]);
    out.Set(uint32_t(i), r);
  }
  return out;
}

// benchAttention({ batch, tokens, keys, heads, headDim, reps, device, modes }): the attention op alone under each
// CUDA attention mode (model/attention_bench.h); a device other than CUDA is refused there.
Napi::Value BenchAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject())
    throw_error(env, "NCP_EINVAL",
                "benchAttention({ batch, tokens, heads, headDim, reps, device }): an object is required");
  const Napi::Object o = info[0].As<Napi::Object>();
  model::AttentionBenchOptions a;
  a.batch = int64_t(number_attr(env, o, "batch", 2));
  a.queries = int64_t(number_attr(env, o, "tokens", 4096));
  a.keys = int64_t(number_attr(env, o, "keys", double(a.queries)));
  a.heads = int64_t(number_attr(env, o, "heads", 10));
  a.head_dim = int64_t(number_attr(env, o, "headDim", 64));
  a.reps = int(number_attr(env, o, "reps", 10));
  const Napi::Value modes = o.Get("modes");
  if (modes.IsArray()) {
    const Napi::Array list = modes.As<Napi::Array>();
    a.modes.clear();
    for (uint32_t i = 0; i < list.Length(); ++i) {
      if (!list.Get(i).IsString())
        throw_error(env, "NCP_EINVAL", "benchAttention: 'modes' must be an array of strings");
      a.modes.push_back(list.Get(i).As<Napi::String>().Utf8Value());
    }
  } else if (!modes.IsUndefined()) {
    throw_error(env, "NCP_EINVAL", "benchAttention: 'modes' must be an array of strings");
  }
  a.device = op_bench_device(env, o, "benchAttention");
  return PromiseWorker<std::vector<model::AttentionBenchResult>>::Start(
      env, [=] { return model::bench_attention(a); },
      [](Napi::Env e, std::vector<model::AttentionBenchResult>& rs) -> Napi::Value {
        return results_array(e, rs, [](Napi::Object& r, const model::AttentionBenchResult& x) {
          r.Set("mode", x.mode);
          r.Set("forwardSeconds", x.forward_s);
          r.Set("backwardSeconds", x.backward_s);
          r.Set("forwardGflop", x.forward_gflop);
          r.Set("backwardGflop", x.backward_gflop);
        });
      });
}

// benchLora({ rows, in, out, rank, reps, device }): one LoRA adapter's forward and backward alone
// (model/lora_bench.h): on a CUDA device its fused kernels and the GEMM chain, on the CPU the CPU's GEMMs.
Napi::Value BenchLora(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject())
    throw_error(env, "NCP_EINVAL", "benchLora({ rows, in, out, rank, reps, device }): an object is required");
  const Napi::Object o = info[0].As<Napi::Object>();
  model::LoraBenchOptions a;
  a.rows = int64_t(number_attr(env, o, "rows", 8192));
  a.in = int64_t(number_attr(env, o, "in", 640));
  a.out = int64_t(number_attr(env, o, "out", double(a.in)));
  a.rank = int64_t(number_attr(env, o, "rank", 4));
  a.reps = int(number_attr(env, o, "reps", 20));
  a.device = op_bench_device(env, o, "benchLora");
  return PromiseWorker<std::vector<model::LoraBenchResult>>::Start(
      env, [=] { return model::bench_lora(a); },
      [](Napi::Env e, std::vector<model::LoraBenchResult>& rs) -> Napi::Value {
        return results_array(e, rs, [](Napi::Object& r, const model::LoraBenchResult& x) {
          r.Set("path", x.path);
          r.Set("forwardSeconds", x.forward_s);
          r.Set("backwardSeconds", x.backward_s);
          r.Set("forwardBytes", x.forward_bytes);
          r.Set("backwardBytes", x.backward_bytes);
        });
      });
}

}  // namespace

void register_bench(Napi::Env env, Napi::Object exports) {
  exports.Set("benchGemm", Napi::Function::New(env, BenchGemm, "benchGemm"));
  exports.Set("benchConv2d", Napi::Function::New(env, BenchConv2d, "benchConv2d"));
  exports.Set("benchUNet", Napi::Function::New(env, BenchUNet, "benchUNet"));
  exports.Set("benchUNetLoad", Napi::Function::New(env, BenchUNetLoad, "benchUNetLoad"));
  exports.Set("benchStep", Napi::Function::New(env, BenchStep, "benchStep"));
  exports.Set("benchAttention", Napi::Function::New(env, BenchAttention, "benchAttention"));
  exports.Set("benchLora", Napi::Function::New(env, BenchLora, "benchLora"));
}

}  // namespace ncp::napi
