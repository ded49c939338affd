// Typed field access over a parsed config.json for the component configs (CLIP text, VAE): every error is
// NCP_ECONFIG naming the file, the field and the value as written, so a bad or unsupported config is reported
// where it is, never silently turned into a different network.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/json.h"

namespace ncp::model {

class ConfigReader {
 public:
  ConfigReader(const json::Value& root, const std::string& source) : root_(root), source_(source) {}

  const std::string& source() const { return source_; }

  [[noreturn]] void fail(const std::string& field, const json::Value& v, const std::string& why) const {
    throw Error("NCP_ECONFIG", source_ + ": " + field + " = " + json::to_string(v) + ": " + why);
  }
  [[noreturn]] void fail(const std::string& what) const { throw Error("NCP_ECONFIG", source_ + ": " + what); }

  // nullptr when the field is absent.
  const json::Value* get(const char* field) const { return root_.find(field); }
  // Absent or JSON null.
  bool unset(const char* field) const {
    const json::Value* v = get(field);
    return !v || v->is_null();
  }

  int64_t integer(const std::string& field, const json::Value& v, int64_t min) const {
    if (!v.is_integer()) fail(field, v, "must be an integer");
    if (v.as_int() < min) fail(field, v, "must be at least " + std::to_string(min));
    return v.as_int();
  }
  int64_t integer(const char* field, int64_t fallback, int64_t min) const {
    const json::Value* v = get(field);
    return v && !v->is_null() ? integer(field, *v, min) : fallback;
  }
  double number(const char* field, double fallback) const {
    const json::Value* v = get(field);
    if (!v || v->is_null()) return fallback;
    if (!v->is_number()) fail(field, *v, "must be a number");
    return v->as_double();
  }
  double positive(const char* field, double fallback) const {
    const double x = number(field, fallback);
    if (!(x > 0)) fail(field, *get(field), "must be positive");
    return x;
  }
  bool boolean(const char* field, bool fallback) const {
    const json::Value* v = get(field);
    if (!v || v->is_null()) return fallback;
    if (!v->is_bool()) fail(field, *v, "must be true or false");
    return v->as_bool();
  }
  std::string string(const char* field, const std::string& fallback) const {
    const json::Value* v = get(field);
    if (!v || v->is_null()) return fallback;
    if (!v->is_string()) fail(field, *v, "must be a string");
    return v->as_string();
  }
  // A required non-empty list of positive integers.
  std::vector<int64_t> int_list(const char* field) const {
    const json::Value* v = get(field);
    if (!v) fail(std::string("missing required field \"") + field + "\"");
    if (!v->is_array() || v->items().empty()) fail(field, *v, "must be a non-empty list of positive integers");
    std::vector<int64_t> out;
    for (size_t i = 0; i < v->items().size(); ++i)
      out.push_back(integer(std::string(field) + "[" + std::to_string(i) + "]", v->items()[i], 1));
    return out;
  }
  // A list of `n` strings, each of which must be `only` (the one block type implemented).
  void only_strings(const char* field, size_t n, const char* only) const {
    const json::Value* v = get(field);
    if (!v) return;  // diffusers' default is that block type
    if (!v->is_array()) fail(field, *v, "must be a list of block type names");
    if (v->items().size() != n)
      fail(field, *v, "has " + std::to_string(v->items().size()) + " entries but block_out_channels has " +
                          std::to_string(n) + " levels");
    for (size_t i = 0; i < n; ++i) {
      const json::Value& x = v->items()[i];
      if (!(x.is_string() && x.as_string() == only))
        fail(std::string(field) + "[" + std::to_string(i) + "]", x,
             std::string("unknown block type (supported: ") + only + ")");
    }
  }
  // The field, when present and not null, must equal `supported`.
  void only_string(const char* field, const char* supported) const {
    const json::Value* v = get(field);
    if (v && !v->is_null() && !(v->is_string() && v->as_string() == supported))
      fail(field, *v, std::string("not supported (only \"") + supported + "\")");
  }

 private:
  const json::Value& root_;
  const std::string& source_;
};

}  // namespace ncp::model
