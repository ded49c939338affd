// The CLIP text encoder and the VAE from JavaScript: loadTextEncoder(dir, component, variant) and loadVae(dir,
// variant) resolve to handles (encode / decode / sample / config), and componentForwardFile() runs the whole
// `ncp-native forward --component ...` job (file in, file out) in one call.
#include <cmath>
#include <memory>

#include "model/component_io.h"
#include "napi/async.h"
#include "napi/bindings.h"
#include "napi/tensor_args.h"

namespace ncp::napi {
namespace {

using model::LoadedTextEncoder;
using model::LoadedVae;

model::Tensor32 to_tensor32(HostTensor h) {
  model::Tensor32 t;
  t.shape = std::move(h.shape);
  t.data = std::move(h.data);
  return t;
}

Napi::Object write_tensor32(Napi::Env env, model::Tensor32& t) {
  HostTensor h;
  h.shape = std::move(t.shape);
  h.data = std::move(t.data);
  return write_tensor(env, h);
}

Napi::Object inputs_arg(const Napi::CallbackInfo& info, size_t i, const std::string& usage) {
  if (info.Length() <= i || !info[i].IsObject()) throw_error(info.Env(), "NCP_EINVAL", usage + ": inputs must be an object");
  return info[i].As<Napi::Object>();
}

// options.slice: batch rows per VAE pass (0: all at once).
int64_t slice_option(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsObject()) return 1;
  const double s = number_attr(info.Env(), info[i].As<Napi::Object>(), "slice", 1);
  if (!(s >= 0) || s != std::floor(s) || s > 1e9)
    throw_error(info.Env(), "NCP_EINVAL", "option 'slice' must be a whole number >= 0 (0: the whole batch at once)");
  return int64_t(s);
}

// input_ids: { data: Int32Array, shape: [batch, tokens] } (the TypeScript layer converts other forms).
std::vector<int64_t> read_ids(Napi::Env env, const Napi::Object& inputs, std::vector<int64_t>* shape) {
  Napi::Value v = inputs.Get("input_ids");
  if (!v.IsObject()) throw_error(env, "NCP_EINVAL", "missing tensor 'input_ids' ({ data: Int32Array, shape: [batch, tokens] })");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Value data = o.Get("data"), dims = o.Get("shape");
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_error(env, "NCP_EINVAL", "tensor 'input_ids': data must be an Int32Array");
  if (!dims.IsArray() || dims.As<Napi::Array>().Length() != 2)
    throw_error(env, "NCP_ESHAPE", "tensor 'input_ids': shape must be [batch, tokens]");
  shape->clear();
  for (uint32_t i = 0; i < 2; ++i) {
    Napi::Value d = dims.As<Napi::Array>().Get(i);
    const double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(x >= 1) || x != std::floor(x))
      throw_error(env, "NCP_EINVAL", "tensor 'input_ids': shape[" + std::to_string(i) + "] must be a positive integer");
    shape->push_back(int64_t(x));
  }
  Napi::Int32Array arr = data.As<Napi::Int32Array>();
  if (int64_t(arr.ElementLength()) != (*shape)[0] * (*shape)[1])
    throw_error(env, "NCP_ESHAPE", "tensor 'input_ids': data has " + std::to_string(arr.ElementLength()) +
                                       " ids but shape " + shape_str(*shape) + " needs " +
                                       std::to_string((*shape)[0] * (*shape)[1]));
  return std::vector<int64_t>(arr.Data(), arr.Data() + arr.ElementLength());
}

Napi::Array int_list(Napi::Env env, const std::vector<int64_t>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) a.Set(uint32_t(i), double(v[i]));
  return a;
}

class TextEncoderHandle : public Napi::ObjectWrap<TextEncoderHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TextEncoder",
                       {InstanceMethod<&TextEncoderHandle::Encode>("encode"),
                        InstanceMethod<&TextEncoderHandle::Config>("config")});
  }
  explicit TextEncoderHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TextEncoderHandle>(info) {}
  std::shared_ptr<LoadedTextEncoder> model;

 private:
  Napi::Value Encode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto shape = std::make_shared<std::vector<int64_t>>();
    auto ids = std::make_shared<std::vector<int64_t>>(read_ids(env, inputs_arg(info, 0, "encode({ input_ids })"), shape.get()));
    auto m = model;
    return PromiseWorker<model::TextEncoderOutput>::Start(
        env, [m, ids, shape] { return m->encoder->encode(ids->data(), (*shape)[0], (*shape)[1]); },
        [](Napi::Env e, model::TextEncoderOutput& o) -> Napi::Value {
          Napi::Object r = Napi::Object::New(e);
          r.Set("last_hidden_state", write_tensor32(e, o.last_hidden_state));
          r.Set("penultimate_hidden_state", write_tensor32(e, o.penultimate_hidden_state));
          r.Set("pooled", write_tensor32(e, o.pooled));
          if (!o.text_embeds.shape.empty()) r.Set("text_embeds", write_tensor32(e, o.text_embeds));
          return r;
        });
  }

  Napi::Value Config(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const model::ClipTextConfig& c = model->config;
    Napi::Object o = Napi::Object::New(env);
    o.Set("component", model->component);
    o.Set("vocabSize", double(c.vocab_size));
    o.Set("hiddenSize", double(c.hidden_size));
    o.Set("intermediateSize", double(c.intermediate_size));
    o.Set("numHiddenLayers", double(c.num_hidden_layers));
    o.Set("numAttentionHeads", double(c.num_attention_heads));
    o.Set("maxPositionEmbeddings", double(c.max_position_embeddings));
    o.Set("hiddenAct", c.hidden_act);
    o.Set("hasProjection", c.has_projection);
    o.Set("projectionDim", double(c.has_projection ? c.projection_dim : 0));
    o.Set("eosTokenId", double(c.eos_token_id));
    o.Set("parameters", model::parameter_count(model::TextEncoder::manifest(c)));
    return o;
  }
};

class VaeHandle : public Napi::ObjectWrap<VaeHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Vae",
                       {InstanceMethod<&VaeHandle::Encode>("encode"), InstanceMethod<&VaeHandle::Decode>("decode"),
                        InstanceMethod<&VaeHandle::Sample>("sample"), InstanceMethod<&VaeHandle::Config>("config")});
  }
  explicit VaeHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VaeHandle>(info) {}
  std::shared_ptr<LoadedVae> model;

 private:
  Napi::Value Encode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto image = std::make_shared<HostTensor>(read_tensor(env, inputs_arg(info, 0, "encode({ image }, { slice })"), "image"));
    const int64_t channels = model->config.in_channels;
    if (image->shape.size() != 4 || image->shape[1] != channels)
      throw_error(env, "NCP_ESHAPE", "vae.encode: tensor 'image' has shape " + shape_str(image->shape) +
                                         ", expected [batch, " + std::to_string(channels) + ", height, width]");
    const int64_t slice = slice_option(info, 1);
    auto m = model;
    return PromiseWorker<model::LatentDist>::Start(
        env,
        [m, image, slice] {
          const auto& s = image->shape;
          return m->vae->encode(image->data.data(), s[0], s[2], s[3], slice);
        },
        [](Napi::Env e, model::LatentDist& d) -> Napi::Value {
          Napi::Object r = Napi::Object::New(e);
          r.Set("mean", write_tensor32(e, d.mean));
          r.Set("logvar", write_tensor32(e, d.logvar));
          return r;
        });
  }

  Napi::Value Decode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto latent = std::make_shared<model::Tensor32>(
        to_tensor32(read_tensor(env, inputs_arg(info, 0, "decode({ latent }, { slice })"), "latent")));
    const int64_t slice = slice_option(info, 1);
    auto m = model;
    return PromiseWorker<model::Tensor32>::Start(
        env, [m, latent, slice] { return m->vae->decode(*latent, slice); },
        [](Napi::Env e, model::Tensor32& y) -> Napi::Value { return write_tensor32(e, y); });
  }

  Napi::Value Sample(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object in = inputs_arg(info, 0, "sample({ mean, logvar }, seed)");
    auto mean = std::make_shared<model::Tensor32>(to_tensor32(read_tensor(env, in, "mean")));
    auto logvar = std::make_shared<model::Tensor32>(to_tensor32(read_tensor(env, in, "logvar")));
    uint64_t seed = 0;
    if (info.Length() > 1 && info[1].IsBigInt()) {
      bool lossless = false;
      seed = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
      if (!lossless) throw_error(env, "NCP_EINVAL", "sample: seed must fit an unsigned 64-bit integer");
    } else {
      const double s = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
      if (!(s >= 0) || s != std::floor(s) || s > 9007199254740991.0)
        throw_error(env, "NCP_EINVAL", "sample: seed must be a whole number >= 0 (or a BigInt)");
      seed = uint64_t(s);
    }
    return PromiseWorker<model::Tensor32>::Start(
        env, [mean, logvar, seed] { return model::Vae::sample(*mean, *logvar, seed); },
        [](Napi::Env e, model::Tensor32& z) -> Napi::Value { return write_tensor32(e, z); });
  }

  Napi::Value Config(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const model::VaeConfig& c = model->config;
    Napi::Object o = Napi::Object::New(env);
    o.Set("inChannels", double(c.in_channels));
    o.Set("outChannels", double(c.out_channels));
    o.Set("latentChannels", double(c.latent_channels));
    o.Set("blockOutChannels", int_list(env, c.block_out_channels));
    o.Set("layersPerBlock", double(c.layers_per_block));
    o.Set("normNumGroups", double(c.norm_num_groups));
    o.Set("scalingFactor", c.scaling_factor);
    o.Set("shiftFactor", c.shift_factor);
    o.Set("downscale", double(model->vae->image_size(1)));
    o.Set("parameters", model::parameter_count(model::Vae::manifest(c)));
    return o;
  }
};

// The handle classes' constructors, one set per environment (each worker thread loads the addon anew); the load
// functions receive them as their callback data.
struct Constructors {
  Napi::FunctionReference text_encoder, vae;
};

std::string string_arg(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() > i && info[i].IsString() ? info[i].As<Napi::String>().Utf8Value() : "";
}

Napi::Value LoadTextEncoder(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString())
    throw_error(env, "NCP_EINVAL", "loadTextEncoder(modelDir, component?, variant?): modelDir must be a string");
  const std::string dir = info[0].As<Napi::String>().Utf8Value(), variant = string_arg(info, 2);
  std::string component = string_arg(info, 1);
  if (component.empty()) component = "text_encoder";
  if (component != "text_encoder" && component != "text_encoder_2")
    throw_error(env, "NCP_EINVAL", "loadTextEncoder: component must be 'text_encoder' or 'text_encoder_2', got '" +
                                       component + "'");
  auto* ctors = static_cast<Constructors*>(info.Data());
  return PromiseWorker<std::shared_ptr<LoadedTextEncoder>>::Start(
      env,
      [dir, component, variant] {
        return std::shared_ptr<LoadedTextEncoder>(model::load_text_encoder(dir, component, variant));
      },
      [ctors](Napi::Env, std::shared_ptr<LoadedTextEncoder>& m) -> Napi::Value {
        Napi::Object handle = ctors->text_encoder.New({});
        TextEncoderHandle::Unwrap(handle)->model = m;
        return handle;
      });
}

Napi::Value LoadVae(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_error(env, "NCP_EINVAL", "loadVae(modelDir, variant?): modelDir must be a string");
  const std::string dir = info[0].As<Napi::String>().Utf8Value(), variant = string_arg(info, 1);
  auto* ctors = static_cast<Constructors*>(info.Data());
  return PromiseWorker<std::shared_ptr<LoadedVae>>::Start(
      env, [dir, variant] { return std::shared_ptr<LoadedVae>(model::load_vae(dir, variant)); },
      [ctors](Napi::Env, std::shared_ptr<LoadedVae>& m) -> Napi::Value {
        Napi::Object handle = ctors->vae.New({});
        VaeHandle::Unwrap(handle)->model = m;
        return handle;
      });
}

Napi::Value ComponentForwardFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject())
    throw_error(env, "NCP_EINVAL", "componentForwardFile({ model, component, input, output, variant, trace, slice })");
  Napi::Object o = info[0].As<Napi::Object>();
  model::ForwardJob job;
  job.model_dir = string_attr(env, o, "model", "");
  job.component = string_attr(env, o, "component", "unet");
  job.input = string_attr(env, o, "input", "");
  job.output = string_attr(env, o, "output", "");
  job.variant = string_attr(env, o, "variant", "");
  job.trace = bool_attr(env, o, "trace", false);
  const double slice = number_attr(env, o, "slice", 1);
  if (!(slice >= 0) || slice != std::floor(slice) || slice > 1e9)
    throw_error(env, "NCP_EINVAL", "componentForwardFile: slice must be a whole number >= 0");
  job.slice = int64_t(slice);
  if (job.model_dir.empty() || job.input.empty() || job.output.empty())
    throw_error(env, "NCP_EINVAL", "componentForwardFile: model, input and output paths are required");
  return guarded(info, [&]() -> Napi::Value {
    model::parse_component(job.component);  // an unknown name fails here, before any work is queued
    return PromiseWorker<std::vector<std::string>>::Start(
        env, [job] { return model::forward_component_file(job); },
        [](Napi::Env e, std::vector<std::string>& names) -> Napi::Value { return string_array(e, names); });
  });
}

}  // namespace

void register_encoders(Napi::Env env, Napi::Object exports) {
  auto* ctors = new Constructors{Napi::Persistent(TextEncoderHandle::Define(env)), Napi::Persistent(VaeHandle::Define(env))};
  env.AddCleanupHook([ctors] { delete ctors; });
  exports.Set("loadTextEncoder", Napi::Function::New(env, LoadTextEncoder, "loadTextEncoder", ctors));
  exports.Set("loadVae", Napi::Function::New(env, LoadVae, "loadVae", ctors));
  exports.Set("componentForwardFile", Napi::Function::New(env, ComponentForwardFile, "componentForwardFile"));
}

}  // namespace ncp::napi
