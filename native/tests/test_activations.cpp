// SiLU, GELU (erf and tanh), quick GELU and GEGLU: reference values, gradients, float against double.
#include <cmath>

#include "cpu/ops.h"
#include "tests/gradcheck.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using namespace ncp::cpu;

const Activation kAll[] = {Activation::SiLU, Activation::GeluErf, Activation::GeluTanh, Activation::QuickGelu};
const char* const kNames[] = {"silu", "gelu_erf", "gelu_tanh", "quick_gelu"};

NCP_TEST("activations: values at known points") {
  // Python: x * sigmoid(x), 0.5 x (1 + erf(x / sqrt 2)), the tanh form, x * sigmoid(1.702 x).
  const double x[] = {-2.0, 0.5, 1.0, 3.0};
  const double want[4][4] = {
      {-0.2384058440442351, 0.3112296656009273, 0.7310585786300049, 2.8577223804673},
      {-0.04550026389635842, 0.34573123063700656, 0.8413447460685429, 2.99595030590511},
      {-0.04540230591222494, 0.34571400982514394, 0.8411919906082768, 2.996362607918227},
      {-0.06434137685579186, 0.35038843660638014, 0.8457957659328212, 2.981928690292214}};
  for (int a = 0; a < 4; ++a) {
    double y[4];
    float yf[4];
    const float xf[4] = {float(x[0]), float(x[1]), float(x[2]), float(x[3])};
    activation_forward(kAll[a], y, x, 4);
    activation_forward(kAll[a], yf, xf, 4);
    for (int i = 0; i < 4; ++i) {
      NCP_EXPECT(std::abs(y[i] - want[a][i]) < 1e-15, kNames[a] << "(" << x[i] << ") = " << y[i]);
      NCP_EXPECT(std::abs(yf[i] - want[a][i]) < 1e-6, kNames[a] << "(" << x[i] << ") in float = " << yf[i]);
    }
  }
}

NCP_TEST("activations: gradcheck") {
  const int64_t n = 41;
  auto w = random_vector(n, 2);
  for (int a = 0; a < 4; ++a) {
    auto x = random_vector(n, 1, -4.0, 4.0);
    std::vector<double> y(n), dx(n);
    auto loss = [&] {
      activation_forward(kAll[a], y.data(), x.data(), n);
      return weighted_sum(y, w);
    };
    activation_backward(kAll[a], dx.data(), w.data(), x.data(), n);
    NCP_EXPECT_GRADCHECK(gradcheck(loss, {{kNames[a], &x, &dx}}), 1e-6);
    expect_backward_accumulates(kNames[a], {n}, [&](const std::vector<double*>& p) {
      activation_backward(kAll[a], p[0], w.data(), x.data(), n);
    });
  }
}

NCP_TEST("geglu: forward is hidden * gelu_erf(gate), gradcheck") {
  const int64_t rows = 3, D = 5;
  auto x = random_vector(rows * 2 * D, 3, -3.0, 3.0), w = random_vector(rows * D, 4);
  std::vector<double> y(rows * D), dx(x.size());
  geglu_forward(y.data(), x.data(), rows, D);
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < D; ++j) {
      const double h = x[r * 2 * D + j], g = x[r * 2 * D + D + j];
      worst = std::max(worst, std::abs(y[r * D + j] - h * 0.5 * g * (1 + std::erf(g / std::sqrt(2.0)))));
    }
  NCP_EXPECT(worst < 1e-15, "geglu forward off by " << worst);
  auto loss = [&] {
    geglu_forward(y.data(), x.data(), rows, D);
    return weighted_sum(y, w);
  };
  geglu_backward(dx.data(), w.data(), x.data(), rows, D);
  NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"geglu x", &x, &dx}}), 1e-6);
  expect_backward_accumulates("geglu", {rows * 2 * D}, [&](const std::vector<double*>& p) {
    geglu_backward(p[0], w.data(), x.data(), rows, D);
  });
}

NCP_TEST("activations: extreme inputs give finite values and the limits") {
  const float x[] = {-1e4f, -100.0f, 100.0f, 1e4f};
  for (int a = 0; a < 4; ++a) {
    float y[4], dx[4] = {}, ones[4] = {1, 1, 1, 1};
    activation_forward(kAll[a], y, x, 4);
    activation_backward(kAll[a], dx, ones, x, 4);
    for (int i = 0; i < 4; ++i) {
      NCP_EXPECT(std::isfinite(y[i]) && std::isfinite(dx[i]), kNames[a] << "(" << x[i] << ") = " << y[i]
                                                                         << ", derivative " << dx[i]);
      const bool positive = x[i] > 0;
      NCP_EXPECT(std::abs(y[i] - (positive ? x[i] : 0.0f)) < 1e-3f, kNames[a] << "(" << x[i] << ") = " << y[i]);
      NCP_EXPECT(std::abs(dx[i] - (positive ? 1.0f : 0.0f)) < 1e-3f, kNames[a] << "'(" << x[i] << ") = " << dx[i]);
    }
  }
}

NCP_TEST("activations: float matches double") {
  const int64_t n = 100003, rows = 67, D = 160;
  auto x = random_vector(n, 5, -6.0, 6.0), dy = random_vector(n, 6);
  for (int a = 0; a < 4; ++a) {
    auto run = [&](auto zero) {
      using T = decltype(zero);
      auto xt = cast_vector<T>(x), dyt = cast_vector<T>(dy);
      std::vector<T> y(n), dx(n);
      activation_forward(kAll[a], y.data(), xt.data(), n);
      activation_backward(kAll[a], dx.data(), dyt.data(), xt.data(), n);
      return std::vector<std::vector<T>>{y, dx};
    };
    auto f = run(0.0f);
    auto d = run(0.0);
    for (int i = 0; i < 2; ++i) {
      const double e = rel_error(f[i].data(), d[i].data(), n);
      NCP_EXPECT(e < 1e-6, kNames[a] << (i ? " backward" : " forward") << " rel error " << e);
    }
  }
  auto gx = random_vector(rows * 2 * D, 7, -4.0, 4.0), gdy = random_vector(rows * D, 8);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    auto xt = cast_vector<T>(gx), dyt = cast_vector<T>(gdy);
    std::vector<T> y(rows * D), dx(gx.size());
    geglu_forward(y.data(), xt.data(), rows, D);
    geglu_backward(dx.data(), dyt.data(), xt.data(), rows, D);
    return std::vector<std::vector<T>>{y, dx};
  };
  auto f = run(0.0f);
  auto d = run(0.0);
  for (int i = 0; i < 2; ++i) {
    const double e = rel_error(f[i].data(), d[i].data(), int64_t(d[i].size()));
    NCP_EXPECT(e < 1e-6, "geglu " << (i ? "backward" : "forward") << " rel error " << e);
  }
}

}  // namespace
