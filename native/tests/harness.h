// A minimal test runner for the native core: NCP_TEST registers a case, NCP_EXPECT records a failure with
// its location. `ncp_tests [substring...]` runs the cases whose names contain any substring and ends with the
// plain closing line "N passed, N failed".
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace ncp::test {

struct Case {
  std::string name;
  std::function<void()> fn;
};
std::vector<Case>& registry();
struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};
void fail(const char* file, int line, const std::string& message);

// The code of the ncp::Error that fn throws, or "" when it throws none.
template <class F>
std::string error_code(F&& fn) {
  try {
    fn();
  } catch (const ncp::Error& e) {
    return e.code();
  }
  return "";
}

// Relative error ||a - b|| / max(||b||, tiny) over n values.
template <class A, class B>
double rel_error(const A* a, const B* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

// Deterministic random fill, uniform in [lo, hi).
template <class T>
void fill_uniform(std::vector<T>& v, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  for (auto& x : v) x = T(d(rng));
}

}  // namespace ncp::test

#define NCP_TEST_CAT2(a, b) a##b
#define NCP_TEST_CAT(a, b) NCP_TEST_CAT2(a, b)
#define NCP_TEST(name)                                                                                \
  static void NCP_TEST_CAT(ncp_test_fn_, __LINE__)();                                                 \
  static ::ncp::test::Registrar NCP_TEST_CAT(ncp_test_reg_, __LINE__)(name, NCP_TEST_CAT(ncp_test_fn_, \
                                                                                        __LINE__));  \
  static void NCP_TEST_CAT(ncp_test_fn_, __LINE__)()

#define NCP_EXPECT(cond, ...)                                                 \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::ostringstream ncp_msg_;                                            \
      ncp_msg_ << #cond << " " __VA_OPT__(<<) __VA_ARGS__;                    \
      ::ncp::test::fail(__FILE__, __LINE__, ncp_msg_.str());                  \
    }                                                                         \
  } while (0)
