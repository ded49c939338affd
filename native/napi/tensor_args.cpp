#include "napi/tensor_args.h"

#include "core/error.h"
#include "model/dev_ops.h"
#include "napi/async.h"

namespace ncp::napi {

int64_t numel(const std::vector<int64_t>& shape) { return shape_numel(shape); }

HostTensor read_tensor(Napi::Env env, const Napi::Object& obj, const std::string& name, bool optional) {
  HostTensor t;
  if (!obj.Has(name) || obj.Get(name).IsUndefined() || obj.Get(name).IsNull()) {
    if (optional) return t;
    throw_error(env, "NCP_EINVAL", "missing tensor '" + name + "'");
  }
  Napi::Value v = obj.Get(name);
  if (!v.IsObject()) throw_error(env, "NCP_EINVAL", "tensor '" + name + "' must be an object { data, shape }");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Value data = o.Get("data"), shape = o.Get("shape");
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_error(env, "NCP_EINVAL", "tensor '" + name + "': data must be a Float32Array");
  if (!shape.IsArray()) throw_error(env, "NCP_EINVAL", "tensor '" + name + "': shape must be an array of integers");
  Napi::Array dims = shape.As<Napi::Array>();
  for (uint32_t i = 0; i < dims.Length(); ++i) {
    Napi::Value d = dims.Get(i);
    if (!d.IsNumber() || d.As<Napi::Number>().DoubleValue() < 1 ||
        d.As<Napi::Number>().DoubleValue() != double(d.As<Napi::Number>().Int64Value()))
      throw_error(env, "NCP_EINVAL", "tensor '" + name + "': shape[" + std::to_string(i) +
                                         "] must be a positive integer");
    t.shape.push_back(d.As<Napi::Number>().Int64Value());
  }
  Napi::Float32Array arr = data.As<Napi::Float32Array>();
  if (int64_t(arr.ElementLength()) != numel(t.shape))
    throw_error(env, "NCP_ESHAPE", "tensor '" + name + "': data has " + std::to_string(arr.ElementLength()) +
                                       " values but shape " + shape_str(t.shape) + " needs " +
                                       std::to_string(numel(t.shape)));
  t.data.assign(arr.Data(), arr.Data() + arr.ElementLength());
  return t;
}

Napi::Object write_tensor(Napi::Env env, const HostTensor& t) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Float32Array arr = Napi::Float32Array::New(env, t.data.size());
  std::copy(t.data.begin(), t.data.end(), arr.Data());
  Napi::Array shape = Napi::Array::New(env, t.shape.size());
  for (size_t i = 0; i < t.shape.size(); ++i) shape.Set(uint32_t(i), Napi::Number::New(env, double(t.shape[i])));
  o.Set("data", arr);
  o.Set("shape", shape);
  return o;
}

void expect_rank(Napi::Env env, const std::string& op, const std::string& name, const HostTensor& t, size_t rank) {
  if (t.shape.size() != rank)
    throw_error(env, "NCP_ESHAPE", op + ": tensor '" + name + "' must have " + std::to_string(rank) +
                                       " dimensions, found shape " + shape_str(t.shape));
}

void expect_shape(Napi::Env env, const std::string& op, const std::string& name, const HostTensor& t,
                  const std::vector<int64_t>& want) {
  if (t.shape != want)
    throw_error(env, "NCP_ESHAPE",
                op + ": tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected " + shape_str(want));
}

double number_attr(Napi::Env env, const Napi::Object& attrs, const std::string& name, double fallback) {
  if (!attrs.Has(name) || attrs.Get(name).IsUndefined()) return fallback;
  Napi::Value v = attrs.Get(name);
  if (!v.IsNumber()) throw_error(env, "NCP_EINVAL", "attribute '" + name + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

bool bool_attr(Napi::Env env, const Napi::Object& attrs, const std::string& name, bool fallback) {
  if (!attrs.Has(name) || attrs.Get(name).IsUndefined()) return fallback;
  Napi::Value v = attrs.Get(name);
  if (!v.IsBoolean()) throw_error(env, "NCP_EINVAL", "attribute '" + name + "' must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string string_attr(Napi::Env env, const Napi::Object& attrs, const std::string& name,
                        const std::string& fallback) {
  if (!attrs.Has(name) || attrs.Get(name).IsUndefined()) return fallback;
  Napi::Value v = attrs.Get(name);
  if (!v.IsString()) throw_error(env, "NCP_EINVAL", "attribute '" + name + "' must be a string");
  return v.As<Napi::String>().Utf8Value();
}

int device_arg(Napi::Env env, const std::string& device, const std::string& who) {
  try {
    const int d = dev::parse_device(device);
    dev::require_device(d);
    return d;
  } catch (const Error& e) {
    throw_error(env, e.code(), who + ": " + e.what());
  }
  return -1;
}

model::SelectiveRecompute recompute_attr(Napi::Env env, const Napi::Object& attrs, const std::string& who) {
  if (!attrs.Has("recompute") || attrs.Get("recompute").IsUndefined()) return {};
  if (!attrs.Get("recompute").IsArray())
    throw_error(env, "NCP_EINVAL", who + ": 'recompute' must be an array of 'feedforward' and/or 'qkv'");
  const Napi::Array a = attrs.Get("recompute").As<Napi::Array>();
  std::string list;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    if (!a.Get(i).IsString()) throw_error(env, "NCP_EINVAL", who + ": 'recompute' entries must be strings");
    const std::string part = a.Get(i).As<Napi::String>().Utf8Value();
    if (part.empty() || part.find(',') != std::string::npos)
      throw_error(env, "NCP_EINVAL", who + ": recompute: '" + part + "' is not one of feedforward, qkv");
    list += (i ? "," : "") + part;
  }
  try {
    return model::parse_selective_recompute(list);
  } catch (const Error& e) {
    throw_error(env, e.code(), who + ": " + e.what());
  }
  return {};
}

Napi::Array string_array(Napi::Env env, const std::vector<std::string>& items) {
  Napi::Array a = Napi::Array::New(env, items.size());
  for (size_t i = 0; i < items.size(); ++i) a.Set(uint32_t(i), items[i]);
  return a;
}

}  // namespace ncp::napi
