// The U-Net from JavaScript: loadUNet(dir, variant) resolves to a handle with forward() and encode(); and
// unetForwardFile(), the whole `ncp-native forward` job (file in, file out) in one call.
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
                        InstanceMethod<&UNetHandle::Config>("config")});
  }
  explicit UNetHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UNetHandle>(info) {}
  std::shared_ptr<LoadedUNet> model;

 private:
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
    return PromiseWorker<Result>::Start(
        env,
        [m, inputs, trace] {
          const model::UNetInputs in = model::bind_inputs(*m->unet, *inputs, "forward inputs");
          Result r;
          r.out.shape = m->unet->output_shape(in);
          r.out.data.resize(size_t(numel(r.out.shape)));
          m->unet->forward(in, r.out.data.data(), trace ? &r.trace : nullptr);
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
    return PromiseWorker<HostTensor>::Start(
        env,
        [m, inputs, which] {
          const model::UNetInputs in = model::bind_inputs(*m->unet, *inputs, "encode inputs");
          HostTensor out;
          out.shape = m->unet->encode_shape(in, which);
          out.data.resize(size_t(numel(out.shape)));
          m->unet->encode(in, which, out.data.data());
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
    o.Set("parameters", double(model->weights.bytes() / sizeof(float)));
    return o;
  }
};

Napi::Value LoadUNet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_error(env, "NCP_EINVAL", "loadUNet(modelDir, variant?): modelDir must be a string");
  const std::string dir = info[0].As<Napi::String>().Utf8Value();
  const std::string variant = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  return PromiseWorker<std::shared_ptr<LoadedUNet>>::Start(
      env, [dir, variant] { return std::shared_ptr<LoadedUNet>(model::load_unet(dir, variant)); },
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
      [](Napi::Env e, std::vector<std::string>& names) -> Napi::Value {
        Napi::Array a = Napi::Array::New(e, names.size());
        for (size_t i = 0; i < names.size(); ++i) a.Set(uint32_t(i), names[i]);
        return a;
      });
}

}  // namespace

void register_unet(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new Napi::FunctionReference(Napi::Persistent(UNetHandle::Define(env))));
  exports.Set("loadUNet", Napi::Function::New(env, LoadUNet, "loadUNet"));
  exports.Set("unetForwardFile", Napi::Function::New(env, UNetForwardFile, "unetForwardFile"));
}

}  // namespace ncp::napi
