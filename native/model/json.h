// A small strict JSON reader (RFC 8259) for the files of model folders: safetensors headers, diffusers
// config.json and shard indexes. Strict because those files come from elsewhere: anything malformed (trailing
// commas, NaN, leading zeros, duplicate keys, invalid UTF-8, lone surrogates) is an error naming its byte offset,
// never a guess.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ncp::json {

enum class Type { Null, Bool, Number, String, Array, Object };

struct Member;

class Value {
 public:
  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  // A number written without fraction or exponent whose value fits int64 ("2" is, "2.0" and "1e3" are not):
  // shapes and offsets must be exact.
  bool is_integer() const { return type_ == Type::Number && integer_; }

  bool as_bool() const { return bool_; }
  double as_double() const { return number_; }
  int64_t as_int() const { return int_; }
  // The decoded string, or for a number the literal as written (so error messages quote the file).
  const std::string& as_string() const { return text_; }
  const std::vector<Value>& items() const { return items_; }
  const std::vector<Member>& members() const { return members_; }
  // The member named key, or nullptr (also for non-objects). Linear: objects here are small or walked in order.
  const Value* find(std::string_view key) const;

 private:
  friend class Parser;
  Type type_ = Type::Null;
  bool bool_ = false, integer_ = false;
  double number_ = 0;
  int64_t int_ = 0;
  std::string text_;
  std::vector<Value> items_;
  std::vector<Member> members_;
};

struct Member {
  std::string key;
  Value value;
};

// Parses one JSON document (surrounding whitespace allowed). Throws ncp::Error(code, source + ": invalid JSON at
// byte N: what"), N counted from the start of text.
Value parse(std::string_view text, const char* code, const std::string& source);

// s as a JSON string literal, quotes included.
std::string quote(std::string_view s);
// Compact JSON text of v (numbers as written in the source), for error messages.
std::string to_string(const Value& v);

}  // namespace ncp::json
