#include "core/threads.h"
#include "cpu/ops.h"
#include "napi/async.h"
#include "napi/bindings.h"

namespace ncp::napi {
namespace {

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", NCP_VERSION);
  o.Set("threads", ncp::num_threads());
  o.Set("gemm", cpu::gemm_provider());
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("avx2", bool(__builtin_cpu_supports("avx2")));
  cpu.Set("fma", bool(__builtin_cpu_supports("fma")));
  cpu.Set("avx512f", bool(__builtin_cpu_supports("avx512f")));
  o.Set("cpu", cpu);
  return o;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber() || info[0].As<Napi::Number>().Int32Value() < 1)
    throw_error(info.Env(), "NCP_EINVAL", "setThreads(n): n must be a positive integer");
  ncp::set_num_threads(info[0].As<Napi::Number>().Int32Value());
  return Napi::Number::New(info.Env(), ncp::num_threads());
}

}  // namespace

void register_info(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
}

}  // namespace ncp::napi
