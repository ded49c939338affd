// The strict JSON reader: what it accepts decodes exactly; everything RFC 8259 forbids is an error at the
// right byte offset.
#include <string>

#include "core/error.h"
#include "model/json.h"
#include "tests/harness.h"

namespace {
using namespace ncp::json;

std::string error_of(const std::string& text) {
  try {
    parse(text, "NCP_EFORMAT", "t.json");
  } catch (const ncp::Error& e) {
    return e.code() + " " + e.what();
  }
  return "(parsed)";
}

NCP_TEST("json: values, nesting and number kinds") {
  const Value v = parse(R"( {"a": [1, -2.5, 3e2, 0, -0, 9223372036854775807, 9223372036854775808],
                             "b": {"c": null, "d": true, "e": false}, "s": "x", "empty": [], "o": {}} )",
                        "NCP_EFORMAT", "t.json");
  NCP_EXPECT(v.is_object() && v.members().size() == 5 && v.members()[0].key == "a", to_string(v));
  const auto& a = v.find("a")->items();
  NCP_EXPECT(a.size() == 7, a.size());
  NCP_EXPECT(a[0].is_integer() && a[0].as_int() == 1, to_string(a[0]));
  NCP_EXPECT(!a[1].is_integer() && a[1].as_double() == -2.5, to_string(a[1]));
  NCP_EXPECT(!a[2].is_integer() && a[2].as_double() == 300.0 && a[2].as_string() == "3e2", to_string(a[2]));
  NCP_EXPECT(a[3].is_integer() && a[4].is_integer() && a[4].as_int() == 0, "zeros");
  NCP_EXPECT(a[5].is_integer() && a[5].as_int() == INT64_MAX, to_string(a[5]));
  NCP_EXPECT(a[6].is_number() && !a[6].is_integer() && a[6].as_double() == 9223372036854775808.0, "beyond int64");
  const Value* b = v.find("b");
  NCP_EXPECT(b->find("c")->is_null() && b->find("d")->as_bool() && !b->find("e")->as_bool(), to_string(*b));
  NCP_EXPECT(v.find("missing") == nullptr && v.find("s")->find("x") == nullptr, "find");
  NCP_EXPECT(v.find("empty")->is_array() && v.find("empty")->items().empty() && v.find("o")->is_object(), "empty");
  NCP_EXPECT(to_string(*b) == R"({"c": null, "d": true, "e": false})", to_string(*b));
}

NCP_TEST("json: string escapes, \\u escapes, surrogate pairs and UTF-8 pass through") {
  const Value v = parse(R"(["a\"b\\c\/d\b\f\n\r\t", "\u00e9\u4e2D", "\ud83d\ude00", "caf)" "\xc3\xa9" R"(", "\u0000"])",
                        "NCP_EFORMAT", "t.json");
  const auto& s = v.items();
  NCP_EXPECT(s[0].as_string() == "a\"b\\c/d\b\f\n\r\t", s[0].as_string());
  NCP_EXPECT(s[1].as_string() == "\xc3\xa9\xe4\xb8\xad", s[1].as_string());
  NCP_EXPECT(s[2].as_string() == "\xf0\x9f\x98\x80", s[2].as_string());
  NCP_EXPECT(s[3].as_string() == "caf\xc3\xa9", s[3].as_string());
  NCP_EXPECT(s[4].as_string() == std::string(1, '\0'), s[4].as_string().size());
  NCP_EXPECT(quote("a\"\\\n\x01") == R"("a\"\\\n\u0001")", quote("a\"\\\n\x01"));
  NCP_EXPECT(parse(quote(s[0].as_string()), "NCP_EFORMAT", "q").as_string() == s[0].as_string(), "quote round trip");
}

NCP_TEST("json: malformed documents name the byte offset") {
  const struct {
    const char* text;
    const char* says;
  } cases[] = {
      {"", "at byte 0: unexpected end"},
      {"[1, 2,]", "at byte 6: unexpected character"},
      {"{\"a\": 1,}", "at byte 8: expected a string key"},
      {"{\"a\" 1}", "at byte 5: expected ':'"},
      {"{\"a\": 1, \"a\": 2}", "at byte 9: duplicate key \"a\""},
      {"[1] x", "at byte 4: unexpected text after"},
      {"01", "at byte 1: leading zero"},
      {"-", "at byte 1: expected a digit"},
      {"1.", "at byte 2: expected a digit after '.'"},
      {".5", "at byte 0: unexpected character"},
      {"1e", "at byte 2: expected a digit in the exponent"},
      {"1e999", "at byte 0: number out of range"},
      {"NaN", "at byte 0"},
      {"[Infinity]", "at byte 1"},
      {"tru", "at byte 0"},
      {"\"abc", "at byte 4: unterminated string"},
      {"\"a\tb\"", "at byte 2: unescaped control character"},
      {"\"\\x\"", "at byte 1: invalid escape"},
      {"\"\\u12G4\"", "at byte 3: invalid hex digit"},
      {"\"\\ude00\"", "at byte 1: lone low surrogate"},
      {"\"\\ud83d x\"", "at byte 1: high surrogate without"},
      {"\"\xc3\"", "at byte 1: invalid UTF-8"},
      {"\"\xc0\xaf\"", "at byte 1: invalid UTF-8"},        // overlong '/'
      {"\"\xed\xa0\x80\"", "at byte 1: invalid UTF-8"},    // encoded surrogate
      {"\"\xf4\x90\x80\x80\"", "at byte 1: invalid UTF-8"},  // above U+10FFFF
      {"{\"a\": [1 2]}", "at byte 9: expected ']'"},
  };
  for (const auto& c : cases) {
    const std::string e = error_of(c.text);
    NCP_EXPECT(e.rfind("NCP_EFORMAT t.json: invalid JSON ", 0) == 0 && e.find(c.says) != std::string::npos,
               "'" << c.text << "': " << e);
  }
  const std::string deep = std::string(300, '[') + std::string(300, ']');
  NCP_EXPECT(error_of(deep).find("nested deeper than 256") != std::string::npos, error_of(deep));
  const std::string ok_deep = std::string(200, '[') + std::string(200, ']');
  NCP_EXPECT(error_of(ok_deep) == "(parsed)", error_of(ok_deep));
}

}  // namespace
