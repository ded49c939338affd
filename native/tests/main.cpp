#include <chrono>
#include <cstdio>
#include <exception>

#include "tests/harness.h"

namespace ncp::test {

std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

namespace {
int failures_in_case = 0;
}

void fail(const char* file, int line, const std::string& message) {
  ++failures_in_case;
  std::fprintf(stderr, "    FAIL %s:%d: %s\n", file, line, message.c_str());
}

}  // namespace ncp::test

int main(int argc, char** argv) {
  using namespace ncp::test;
  int passed = 0, failed = 0;
  for (const auto& c : registry()) {
    bool selected = argc < 2;
    for (int i = 1; i < argc; ++i) selected = selected || c.name.find(argv[i]) != std::string::npos;
    if (!selected) continue;
    failures_in_case = 0;
    const auto start = std::chrono::steady_clock::now();
    try {
      c.fn();
    } catch (const std::exception& e) {
      fail(__FILE__, __LINE__, std::string("uncaught exception: ") + e.what());
    }
    // The wall time, so a slow case shows up in every run (the suite's time budget is CI's).
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s %s (%.1f s)\n", failures_in_case ? "not ok" : "ok", c.name.c_str(), seconds);
    std::fflush(stdout);
    (failures_in_case ? failed : passed)++;
  }
  std::printf("native: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
