// toFloat32(bytes, dtype) and fromFloat32(values, dtype): the storage conversions model files need, exposed so
// TypeScript tools (and tests) use exactly the engine's rounding.
#include "core/dtype.h"
#include "napi/async.h"
#include "napi/bindings.h"

namespace ncp::napi {
namespace {

DType parse_dtype(Napi::Env env, const Napi::Value& v) {
  DType t;
  if (!v.IsString() || !dtype_from_name(v.As<Napi::String>().Utf8Value(), &t))
    throw_error(env, "NCP_EDTYPE", "dtype must be one of F32, F16, BF16, F64, I64, I32");
  return t;
}

Napi::Value ToFloat32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray())
    throw_error(env, "NCP_EINVAL", "toFloat32(bytes: Uint8Array, dtype): bytes must be a typed array");
  const DType t = parse_dtype(env, info[1]);
  Napi::TypedArray src = info[0].As<Napi::TypedArray>();
  const size_t bytes = src.ByteLength(), size = dtype_size(t);
  if (bytes % size != 0)
    throw_error(env, "NCP_ESHAPE", "toFloat32: " + std::to_string(bytes) + " bytes is not a whole number of " +
                                       dtype_name(t) + " values");
  const uint8_t* p = static_cast<const uint8_t*>(src.ArrayBuffer().Data()) + src.ByteOffset();
  Napi::Float32Array out = Napi::Float32Array::New(env, bytes / size);
  convert_to_f32(out.Data(), p, t, int64_t(bytes / size));
  return out;
}

Napi::Value FromFloat32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_error(env, "NCP_EINVAL", "fromFloat32(values: Float32Array, dtype): values must be a Float32Array");
  const DType t = parse_dtype(env, info[1]);
  Napi::Float32Array src = info[0].As<Napi::Float32Array>();
  Napi::Uint8Array out = Napi::Uint8Array::New(env, src.ElementLength() * dtype_size(t));
  convert_from_f32(out.Data(), src.Data(), t, int64_t(src.ElementLength()));
  return out;
}

}  // namespace

void register_dtype(Napi::Env env, Napi::Object exports) {
  exports.Set("toFloat32", Napi::Function::New(env, ToFloat32, "toFloat32"));
  exports.Set("fromFloat32", Napi::Function::New(env, FromFloat32, "fromFloat32"));
}

}  // namespace ncp::napi
