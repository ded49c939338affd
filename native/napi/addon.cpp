#include "napi/bindings.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ncp::napi::register_info(env, exports);
  ncp::napi::register_ops(env, exports);
  ncp::napi::register_bench(env, exports);
  ncp::napi::register_dtype(env, exports);
  ncp::napi::register_cuda(env, exports);
  ncp::napi::register_unet(env, exports);
  ncp::napi::register_encoders(env, exports);
  ncp::napi::register_train(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(ncp_native, Init)
