// The vectorisable float math of cpu/vec.h against libm in float64: accuracy over the ranges the ops use,
// and the edges (overflow, underflow, infinities, NaN, negative maxima).
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/vec.h"
#include "tests/harness.h"

namespace {
using namespace ncp::cpu;

std::vector<float> grid(float lo, float hi, int64_t n) {
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = lo + (hi - lo) * float(i) / float(n - 1);
  return x;
}

NCP_TEST("vec math: exp, erf, tanh accuracy against libm") {
  double worst = 0;
  for (float x : grid(-87.0f, 88.0f, 1000001)) {
    const double want = std::exp(double(x));
    worst = std::max(worst, std::abs(double(vec::exp(x)) - want) / want);
  }
  NCP_EXPECT(worst < 1.5e-7, "exp max relative error " << worst);  // float rounding alone gives 6e-8
  worst = 0;
  for (float x : grid(-6.0f, 6.0f, 1000001)) worst = std::max(worst, std::abs(vec::erf(x) - std::erf(double(x))));
  NCP_EXPECT(worst < 1.5e-7, "erf max absolute error " << worst);
  worst = 0;
  for (float x : grid(-0.5f, 0.5f, 100001))
    if (x != 0) worst = std::max(worst, std::abs(vec::erf(x) / std::erf(double(x)) - 1));
  NCP_EXPECT(worst < 2e-7, "erf max relative error below 0.5: " << worst);
  worst = 0;
  for (float x : grid(-10.0f, 10.0f, 1000001))
    worst = std::max(worst, std::abs(vec::tanh(x) - std::tanh(double(x))));
  NCP_EXPECT(worst < 2.5e-7, "tanh max absolute error " << worst);
}

NCP_TEST("vec math: exp edges and max ordering") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  NCP_EXPECT(vec::exp(-inf) == 0.0f && vec::exp(-1e30f) == 0.0f && vec::exp(-100.0f) == 0.0f);
  NCP_EXPECT(vec::exp(inf) == inf && vec::exp(1e30f) == inf && vec::exp(89.0f) == inf);
  NCP_EXPECT(std::isnan(vec::exp(nan)) && std::isnan(vec::exp(-nan)));
  NCP_EXPECT(vec::exp(0.0f) == 1.0f && vec::exp(-0.0f) == 1.0f);
  NCP_EXPECT(std::abs(vec::exp(-87.0f) / std::exp(-87.0) - 1) < 1.5e-7, vec::exp(-87.0f));
  const float a[] = {-3.5f, -0.25f, -7.0f, -0.5f, -1e30f, -0.125f, -2.0f, -9.0f, -0.3f};  // 9: one past a vector
  NCP_EXPECT(vec::max(a, 9) == -0.125f, vec::max(a, 9));
  const float b[] = {-1.0f, 2.0f, -inf, 0.0f, 1.5f};
  NCP_EXPECT(vec::max(b, 5) == 2.0f, vec::max(b, 5));
  const float c[] = {-inf, -inf};
  NCP_EXPECT(vec::max(c, 2) == -inf, vec::max(c, 2));
  double s = vec::sum(1001, [](int64_t i) { return double(i); });
  NCP_EXPECT(s == 500500.0, s);
}

}  // namespace
