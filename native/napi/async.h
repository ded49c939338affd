// Runs native work off the event loop and settles a Promise with the result. ncp::Error becomes a JS Error
// whose `code` is the error's code; anything else becomes code NCP_EINTERNAL.
#pragma once
#include <napi.h>

#include <functional>
#include <string>

#include "core/error.h"

namespace ncp::napi {

template <class Result>
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<Result()>;
  using Convert = std::function<Napi::Value(Napi::Env, Result&)>;

  static Napi::Promise Start(Napi::Env env, Work work, Convert convert) {
    auto* w = new PromiseWorker(env, std::move(work), std::move(convert));
    auto promise = w->deferred_.Promise();
    w->Queue();
    return promise;
  }

 protected:
  void Execute() override {
    try {
      result_ = work_();
    } catch (const ncp::Error& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = "NCP_ENOMEM";
      SetError("out of memory");
    } catch (const std::exception& e) {
      code_ = "NCP_EINTERNAL";
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    try {
      deferred_.Resolve(convert_(Env(), result_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    Napi::HandleScope scope(Env());
    Napi::Object err = e.Value();
    err.Set("code", Napi::String::New(Env(), code_));
    deferred_.Reject(err);
  }

 private:
  PromiseWorker(Napi::Env env, Work work, Convert convert)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)),
        convert_(std::move(convert)) {}

  Napi::Promise::Deferred deferred_;
  Work work_;
  Convert convert_;
  Result result_{};
  std::string code_;
};

// Throws a JS Error with a code synchronously (argument validation on the calling thread).
[[noreturn]] inline void throw_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  throw err;
}

// Wraps a synchronous binding so ncp::Error thrown inside becomes a coded JS Error.
template <class F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& f) {
  try {
    return f();
  } catch (const ncp::Error& e) {
    throw_error(info.Env(), e.code(), e.what());
  }
}

}  // namespace ncp::napi
