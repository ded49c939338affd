// Sets an environment variable for a scope and puts back what was there after (nullptr: unset for the scope). For
// the backend switches read at each call (NCP_CUDA_LORA, NCP_CUDA_ATTENTION_BLOCK, NCP_CUDA_NORM_CHUNK): the op
// benches force one path at a time, the parity cases each mode. Not thread-safe, as setenv is not.
#pragma once
#include <cstdlib>
#include <optional>
#include <string>

namespace ncp {

class EnvScope {
 public:
  EnvScope(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    set(value);
  }
  ~EnvScope() { set(old_ ? old_->c_str() : nullptr); }
  EnvScope(const EnvScope&) = delete;
  EnvScope& operator=(const EnvScope&) = delete;

 private:
  void set(const char* value) {
    if (value)
      ::setenv(name_.c_str(), value, 1);
    else
      ::unsetenv(name_.c_str());
  }
  std::string name_;
  std::optional<std::string> old_;
};

}  // namespace ncp
