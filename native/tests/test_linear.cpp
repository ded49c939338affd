// Linear layer: forward against a naive loop, gradients against finite differences, float against double.
#include "cpu/ops.h"
#include "tests/gradcheck.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using ncp::cpu::linear_backward;
using ncp::cpu::linear_forward;

std::vector<double> naive_linear(const std::vector<double>& x, const std::vector<double>& W, const double* b,
                                 int64_t rows, int64_t in, int64_t out) {
  std::vector<double> y(rows * out);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = b ? b[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) acc += x[r * in + i] * W[o * in + i];
      y[r * out + o] = acc;
    }
  return y;
}

NCP_TEST("linear: forward matches a naive loop, with and without bias") {
  const int64_t rows = 7, in = 5, out = 3;
  auto x = random_vector(rows * in, 1), W = random_vector(out * in, 2), b = random_vector(out, 3);
  std::vector<double> y(rows * out);
  linear_forward(y.data(), x.data(), W.data(), b.data(), rows, in, out);
  auto want = naive_linear(x, W, b.data(), rows, in, out);
  NCP_EXPECT(rel_error(y.data(), want.data(), rows * out) < 1e-14, rel_error(y.data(), want.data(), rows * out));
  linear_forward(y.data(), x.data(), W.data(), static_cast<const double*>(nullptr), rows, in, out);
  want = naive_linear(x, W, nullptr, rows, in, out);
  NCP_EXPECT(rel_error(y.data(), want.data(), rows * out) < 1e-14, rel_error(y.data(), want.data(), rows * out));
}

NCP_TEST("linear: gradcheck") {
  const int64_t rows = 7, in = 5, out = 3;
  auto x = random_vector(rows * in, 4), W = random_vector(out * in, 5), b = random_vector(out, 6);
  auto w = random_vector(rows * out, 7);
  std::vector<double> y(rows * out), dx(x.size()), dW(W.size()), db(b.size());
  auto loss = [&] {
    linear_forward(y.data(), x.data(), W.data(), b.data(), rows, in, out);
    return weighted_sum(y, w);
  };
  loss();
  linear_backward(dx.data(), dW.data(), db.data(), w.data(), x.data(), W.data(), rows, in, out);
  NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"x", &x, &dx}, {"W", &W, &dW}, {"b", &b, &db}}), 1e-6);
  expect_backward_accumulates("linear", {rows * in, out * in, out}, [&](const std::vector<double*>& g) {
    linear_backward(g[0], g[1], g[2], w.data(), x.data(), W.data(), rows, in, out);
  });
}

NCP_TEST("linear: float matches double") {
  const int64_t rows = 77, in = 65, out = 33;
  auto x = random_vector(rows * in, 8), W = random_vector(out * in, 9), b = random_vector(out, 10);
  auto dy = random_vector(rows * out, 11);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    auto xt = cast_vector<T>(x), Wt = cast_vector<T>(W), bt = cast_vector<T>(b), dyt = cast_vector<T>(dy);
    std::vector<T> y(rows * out), dx(x.size()), dW(W.size()), db(b.size());
    linear_forward(y.data(), xt.data(), Wt.data(), bt.data(), rows, in, out);
    linear_backward(dx.data(), dW.data(), db.data(), dyt.data(), xt.data(), Wt.data(), rows, in, out);
    return std::vector<std::vector<T>>{y, dx, dW, db};
  };
  auto f = run(0.0f);
  auto d = run(0.0);
  for (size_t i = 0; i < d.size(); ++i) {
    const double e = rel_error(f[i].data(), d[i].data(), int64_t(d[i].size()));
    NCP_EXPECT(e < 1e-6, "output " << i << " rel error " << e);
  }
}

}  // namespace
