// The U-Net from JavaScript: loadUNet(dir, variant) resolves to a handle with forward() and encode(), and
// setLora()/clearLora() to run them with LoRA adapters at a scale; and unetForwardFile(), the whole
// `ncp-native forward` job (file in, file out) in one call.
#include <atomic>
#include <cmath>
#include <memory>

#include "model/unet_io.h"
#include "napi/async.h"
#include "napi/bindings.h"
#include "napi/tensor_args.h"

namespace ncp::napi {
namespace {

using model::LoadedUNet;

model::Tensor32 to_tensor32(HostTensor h) {
  model::Tensor32 t;
  t.shape = std::move(h.shape);
  t.data = std::move(h.data);
  return t;
}

HostTensor from_tensor32(model::Tensor32 t) {
  HostTensor h;
  h.shape = std::move(t.shape);
  h.data = std::move(t.data);
  return h;
}

model::UNetInputTensors read_inputs(Napi::Env env, const Napi::Object& o) {
  model::UNetInputTensors t;
  t.sample = to_tensor32(read_tensor(env, o, "sample"));
  t.timestep = to_tensor32(read_tensor(env, o, "timestep"));
  t.encoder_hidden_states = to_tensor32(read_tensor(env, o, "encoder_hidden_states"));
  t.text_embeds = to_tensor32(read_tensor(env, o, "text_embeds", true));
  t.time_ids = to_tensor32(read_tensor(env, o, "time_ids", true));
  return t;
}

class UNetHandle : public Napi::ObjectWrap<UNetHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UNet",
                       {InstanceMethod<&UNetHandle::Forward>("forward"), InstanceMethod<&UNetHandle::Encode>("encode"),
                        InstanceMethod<&UNetHandle::Config>("config"), InstanceMethod<&UNetHandle::SetLora>("setLora"),
                        InstanceMethod<&UNetHandle::ClearLora>("clearLora"),
                        InstanceMethod<&UNetHandle::LoraInfo>("loraInfo")});
  }
  explicit UNetHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UNetHandle>(info) {}
  std::shared_ptr<LoadedUNet> model;

 private:
  // The attached adapters (alpha already times the scale), or null: forward/encode run with LoRA on when set.
  // Each call's worker holds its own reference, so the adapters outlive the call even if the handle goes.
  std::shared_ptr<model::LoraSet> lora_;
  double lora_scale_ = 0;
  // Calls in flight. Only this (JS) thread starts calls and changes the adapters, so "no call in flight" seen
  // here stays true until setLora returns: the Linear layers' adapter pointers never change under a running pass.
  std::shared_ptr<std::atomic<int>> running_ = std::make_shared<std::atomic<int>>(0);

  struct Running {
    std::shared_ptr<std::atomic<int>> n;
    explicit Running(std::shared_ptr<std::atomic<int>> c) : n(std::move(c)) { ++*n; }
    Running(const Running&) = delete;
    ~Running() { --*n; }
  };

  void refuse_if_running(Napi::Env env, const char* what) {
    if (running_->load() > 0)
      throw_error(env, "NCP_EBUSY", std::string(what) + ": a forward/encode call of this U-Net is running; await it first");
  }

  // setLora(modules: [{ module, A: [r, in] (or [r, in, 1, 1]), B: [out, r] (or [out, r, 1, 1]), alpha }], scale):
  // adapters with alpha * scale, replacing any attached before. An empty list or scale 0 detaches them (the plain
  // network, exactly). Every module must be a Linear of this U-Net with matching features (NCP_ELORA).
  Napi::Value SetLora(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    refuse_if_running(env, "setLora");
    if (info.Length() < 1 || !info[0].IsArray())
      throw_error(env, "NCP_EINVAL", "setLora(modules, scale): modules must be an array of { module, A, B, alpha }");
    const double scale = info.Length() > 1 && !info[1].IsUndefined() ? (info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : NAN) : 1.0;
    if (!std::isfinite(scale)) throw_error(env, "NCP_EINVAL", "setLora(modules, scale): scale must be a finite number");
    const Napi::Array a = info[0].As<Napi::Array>();
    if (a.Length() == 0 || scale == 0) {
      detach();
      return env.Undefined();
    }
    auto set = std::make_shared<model::LoraSet>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      const std::string where = "setLora: entry " + std::to_string(i);
      if (!a.Get(i).IsObject()) throw_error(env, "NCP_EINVAL", where + " is not an object");
      const Napi::Object o = a.Get(i).As<Napi::Object>();
      const std::string module = string_attr(env, o, "module", "");
      if (module.empty()) throw_error(env, "NCP_EINVAL", where + ": 'module' (a diffusers module name) is required");
      const std::string op = "setLora " + module;
      HostTensor A = read_tensor(env, o, "A"), B = read_tensor(env, o, "B");
      // 1x1-conv LoRAs (SD1.x proj_in/proj_out) have the memory layout of the Linear ones.
      if (A.shape.size() == 4 && A.shape[2] == 1 && A.shape[3] == 1) A.shape.resize(2);
      if (B.shape.size() == 4 && B.shape[2] == 1 && B.shape[3] == 1) B.shape.resize(2);
      expect_rank(env, op, "A", A, 2);
      const int64_t rank = A.dim(0), in = A.dim(1);
      expect_rank(env, op, "B", B, 2);
      const int64_t out = B.dim(0);
      expect_shape(env, op, "B", B, {out, rank});
      const double alpha = number_attr(env, o, "alpha", double(rank));
      if (!(alpha > 0) || !std::isfinite(alpha))
        throw_error(env, "NCP_EINVAL", op + ": alpha must be a positive number, got " + std::to_string(alpha));
      if (set->find(module)) throw_error(env, "NCP_ELORA", op + ": module given twice");
      model::LoraAdapter& ad = set->add(module, rank, in, out, float(alpha * scale));
      ad.A = std::move(A.data), ad.B = std::move(B.data);
      // Inference only: no gradient buffers.
      ad.dA.clear(), ad.dA.shrink_to_fit(), ad.dB.clear(), ad.dB.shrink_to_fit();
    }
    try {
      model->unet->attach_lora(*set);  // checks every module and its features; detaches all first
    } catch (const Error& e) {
      detach();
      throw_error(env, e.code(), e.what());
    }
    lora_ = std::move(set);
    lora_scale_ = scale;
    return env.Undefined();
  }

  Napi::Value ClearLora(const Napi::CallbackInfo& info) {
    refuse_if_running(info.Env(), "clearLora");
    detach();
    return info.Env().Undefined();
  }

  // { modules, scale }: what forward() runs with now (modules 0: the plain network).
  Napi::Value LoraInfo(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("modules", double(lora_ ? lora_->adapters().size() : 0));
    o.Set("scale", lora_ ? lora_scale_ : 0.0);
    return o;
  }

  void detach() {
    model->unet->detach_lora();
    lora_.reset();
    lora_scale_ = 0;
  }

  struct Result {
    HostTensor out;
    model::Trace trace;
  };

  Napi::Value Forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw_error(env, "NCP_EINVAL", "forward(inputs, { trace }): inputs must be an object");
    auto inputs = std::make_shared<model::UNetInputTensors>(read_inputs(env, info[0].As<Napi::Object>()));
    const bool trace = info.Length() > 1 && info[1].IsObject() && bool_attr(env, info[1].As<Napi::Object>(), "trace", false);
    auto m = model;
    auto lora = lora_;
    auto running = std::make_shared<Running>(running_);
    return PromiseWorker<Result>::Start(
        env,
        [m, inputs, trace, lora, running] {
          const model::UNetInputs in = model::bind_inputs(*m->unet, *inputs, "forward inputs");
          Result r;
          r.out.shape = m->unet->output_shape(in);
          r.out.data.resize(size_t(numel(r.out.shape)));
          m->unet->forward(in, r.out.data.data(), trace ? &r.trace : nullptr, lora != nullptr);
          return r;
        },
        [trace](Napi::Env e, Result& r) -> Napi::Value {
          Napi::Object o = Napi::Object::New(e);
          o.Set("sample", write_tensor(e, r.out));
          if (trace) {
            Napi::Object t = Napi::Object::New(e);
            for (auto& [name, x] : r.trace) t.Set(name, write_tensor(e, from_tensor32(std::move(x))));
            o.Set("trace", t);
          }
          return o;
        });
  }

  Napi::Value Encode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw_error(env, "NCP_EINVAL", "encode(inputs, layer): inputs must be an object");
    auto inputs = std::make_shared<model::UNetInputTensors>(read_inputs(env, info[0].As<Napi::Object>()));
    const std::string layer = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "mid";
    if (layer != "mid" && layer != "down")
      throw_error(env, "NCP_EINVAL", "encode: layer must be 'mid' or 'down', got '" + layer + "'");
    const auto which = layer == "mid" ? model::EncoderLayer::Mid : model::EncoderLayer::Down;
    auto m = model;
    auto lora = lora_;
    auto running = std::make_shared<Running>(running_);
    return PromiseWorker<HostTensor>::Start(
        env,
        [m, inputs, which, lora, running] {
          const model::UNetInputs in = model::bind_inputs(*m->unet, *inputs, "encode inputs");
          HostTensor out;
          out.shape = m->unet->encode_shape(in, which);
          out.data.resize(size_t(numel(out.shape)));
          m->unet->encode(in, which, out.data.data(), nullptr, lora != nullptr);
          return out;
        },
        [](Napi::Env e, HostTensor& out) -> Napi::Value { return write_tensor(e, out); });
  }

  Napi::Value Config(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const model::UNetConfig& c = model->config;
    auto list = [&](const std::vector<int64_t>& v) {
      Napi::Array a = Napi::Array::New(env, v.size());
      for (size_t i = 0; i < v.size(); ++i) a.Set(uint32_t(i), double(v[i]));
      return a;
    };
    Napi::Object o = Napi::Object::New(env);
    o.Set("inChannels", double(c.in_channels));
    o.Set("outChannels", double(c.out_channels));
    o.Set("blockOutChannels", list(c.block_out_channels));
    o.Set("numAttentionHeads", list(c.num_attention_heads));
    o.Set("transformerLayersPerBlock", list(c.transformer_layers_per_block));
    o.Set("crossAttentionDim", double(c.cross_attention_dim));
    o.Set("sdxl", c.text_time_embedding);
    o.Set("pooledDim", double(model->unet->pooled_dim()));
    // From the manifest: the host map holds the matrices in their file dtype, or nothing once on a device.
    o.Set("parameters", model::parameter_count(model::UNet::manifest(c)));
    return o;
  }
};

Napi::Value LoadUNet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString())
    throw_error(env, "NCP_EINVAL", "loadUNet(modelDir, variant?, device?): modelDir must be a string");
  const std::string dir = info[0].As<Napi::String>().Utf8Value();
  const std::string variant = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  const int device =
      device_arg(env, info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "cpu",
                 "loadUNet");
  return PromiseWorker<std::shared_ptr<LoadedUNet>>::Start(
      env,
      [dir, variant, device] {
        std::shared_ptr<LoadedUNet> m(model::load_unet(dir, variant));
        m->to_device(device);  // the handle's forward/encode then run there (host arrays in and out)
        return m;
      },
      [](Napi::Env e, std::shared_ptr<LoadedUNet>& m) -> Napi::Value {
        // The class constructor is kept per environment (worker threads each load the addon).
        Napi::Object handle = e.GetInstanceData<Napi::FunctionReference>()->New({});
        UNetHandle::Unwrap(handle)->model = m;
        return handle;
      });
}

Napi::Value UNetForwardFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw_error(env, "NCP_EINVAL", "unetForwardFile({ model, input, output, trace, variant })");
  Napi::Object o = info[0].As<Napi::Object>();
  const std::string dir = string_attr(env, o, "model", ""), input = string_attr(env, o, "input", ""),
                    output = string_attr(env, o, "output", ""), variant = string_attr(env, o, "variant", "");
  const bool trace = bool_attr(env, o, "trace", false);
  if (dir.empty() || input.empty() || output.empty())
    throw_error(env, "NCP_EINVAL", "unetForwardFile: model, input and output paths are required");
  return PromiseWorker<std::vector<std::string>>::Start(
      env,
      [=] {
        auto m = model::load_unet(dir, variant);
        return model::unet_forward_file(*m, input, output, trace);
      },
      [](Napi::Env e, std::vector<std::string>& names) -> Napi::Value { return string_array(e, names); });
}

}  // namespace

void register_unet(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new Napi::FunctionReference(Napi::Persistent(UNetHandle::Define(env))));
  exports.Set("loadUNet", Napi::Function::New(env, LoadUNet, "loadUNet"));
  exports.Set("unetForwardFile", Napi::Function::New(env, UNetForwardFile, "unetForwardFile"));
}

}  // namespace ncp::napi
