// Errors that cross into JavaScript carry a stable code and a message naming the tensor, shape or file.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>
#include <cstdint>

namespace ncp {

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

// "[2, 4, 16, 16]"
std::string shape_str(const std::vector<int64_t>& shape);
// The number of elements of a tensor of that shape (1 for a scalar).
int64_t shape_numel(const std::vector<int64_t>& shape);

// Throws Error("NCP_EINVAL", what + ": " + detail) unless cond holds.
inline void check(bool cond, const char* code, const std::string& message) {
  if (!cond) throw Error(code, message);
}

}  // namespace ncp
