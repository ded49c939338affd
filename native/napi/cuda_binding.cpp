// cudaStatus(): whether the CUDA backend was compiled, loads, and has a device (and why not).
// cudaParity(): every CUDA op against the CPU reference, off the event loop.
#include <vector>

#include "core/cuda_backend.h"
#include "model/dev_ops.h"
#include "napi/async.h"
#include "napi/bindings.h"

namespace ncp::napi {
namespace {

Napi::Value CudaStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const cuda::Status& s = cuda::status();
  Napi::Object o = Napi::Object::New(env);
  o.Set("compiled", s.compiled);
  o.Set("loadable", s.loadable);
  o.Set("usable", s.usable);
  o.Set("library", s.library);
  o.Set("device", s.device);
  o.Set("deviceCount", s.device_count);
  o.Set("computeCapability", s.usable ? std::to_string(s.cc_major) + "." + std::to_string(s.cc_minor) : "");
  o.Set("memoryBytes", double(s.total_memory));
  o.Set("driverVersion", s.driver_version);
  o.Set("runtimeVersion", s.runtime_version);
  o.Set("gemm", s.gemm_provider);
  o.Set("attention", s.attention);
  o.Set("attentionBf16", s.usable ? dev::unet_attention(DType::BF16) : std::string());
  o.Set("reason", s.reason);
  return o;
}

Napi::Value CudaParity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const cuda::Status& s = cuda::status();
  if (!s.usable) {
    auto d = Napi::Promise::Deferred::New(env);
    Napi::Error err = Napi::Error::New(env, "CUDA backend not usable: " + s.reason);
    err.Set("code", Napi::String::New(env, "NCP_ENOCUDA"));
    d.Reject(err.Value());
    return d.Promise();
  }
  return PromiseWorker<std::vector<cuda::ParityResult>>::Start(
      env, [] { return cuda::parity_check(); },
      [](Napi::Env e, std::vector<cuda::ParityResult>& results) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        for (const auto& r : results) o.Set(r.op, r.max_rel_error);
        return o;
      });
}

}  // namespace

void register_cuda(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaStatus", Napi::Function::New(env, CudaStatus, "cudaStatus"));
  exports.Set("cudaParity", Napi::Function::New(env, CudaParity, "cudaParity"));
}

}  // namespace ncp::napi
