// Where the tests find their fixture files, and scratch directories for the files they write.
#pragma once
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace ncp::test {

// The golden vectors (made by diffusers, see test/fixtures/golden/README.md): $NCP_GOLDEN_DIR, else the copy in
// test/fixtures/golden. The root is found from this header's own path so the tests pass from any directory.
inline std::string golden_path(const std::string& relative) {
  const char* env = std::getenv("NCP_GOLDEN_DIR");
  std::string dir;
  if (env && *env) {
    dir = env;
  } else {
    const std::string self = __FILE__;  // <root>/native/tests/fixtures.h
    const size_t at = self.rfind("native/tests/fixtures.h");
    const std::string root = at == std::string::npos || at == 0 ? "./" : self.substr(0, at);
    dir = root + "test/fixtures/golden";
  }
  return dir + "/" + relative;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it when the test ends.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/ncp-test-XXXXXX";
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace ncp::test
