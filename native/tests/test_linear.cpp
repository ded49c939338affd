// Linear layer and its LoRA adapter: forward against a naive loop, gradients against finite differences, float
// against double.
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

NCP_TEST("lora: forward adds scale (x A^T) B^T, as a naive loop does") {
  const ncp::cpu::LoraShape s{9, 7, 5, 3};
  const double scale = 0.625;
  auto x = random_vector(s.rows * s.in, 20), A = random_vector(s.rank * s.in, 21),
       B = random_vector(s.out * s.rank, 22);
  auto y = random_vector(s.rows * s.out, 23), want = y;
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t o = 0; o < s.out; ++o)
      for (int64_t j = 0; j < s.rank; ++j) {
        double u = 0;
        for (int64_t c = 0; c < s.in; ++c) u += x[r * s.in + c] * A[j * s.in + c];
        want[r * s.out + o] += scale * u * B[o * s.rank + j];
      }
  ncp::cpu::lora_forward(y.data(), x.data(), A.data(), B.data(), scale, s);
  const double e = rel_error(y.data(), want.data(), s.rows * s.out);
  NCP_EXPECT(e < 1e-14, e);
}

NCP_TEST("lora: gradcheck, and each gradient alone (x not needed for dx)") {
  const ncp::cpu::LoraShape s{6, 5, 4, 3};
  const double scale = 1.5;
  auto x = random_vector(s.rows * s.in, 24), A = random_vector(s.rank * s.in, 25),
       B = random_vector(s.out * s.rank, 26);
  auto w = random_vector(s.rows * s.out, 27), y0 = random_vector(s.rows * s.out, 28);
  std::vector<double> y, dx(x.size()), dA(A.size()), dB(B.size());
  auto loss = [&] {
    y = y0;
    ncp::cpu::lora_forward(y.data(), x.data(), A.data(), B.data(), scale, s);
    return weighted_sum(y, w);
  };
  loss();
  ncp::cpu::lora_backward(dx.data(), dA.data(), dB.data(), w.data(), x.data(), A.data(), B.data(), scale, s);
  NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"x", &x, &dx}, {"A", &A, &dA}, {"B", &B, &dB}}), 1e-6);
  const std::vector<int64_t> sizes{s.rows * s.in, s.rank * s.in, s.out * s.rank};
  expect_backward_accumulates("lora", sizes, [&](const std::vector<double*>& g) {
    const double* x_if_needed = g[1] || g[2] ? x.data() : nullptr;
    ncp::cpu::lora_backward(g[0], g[1], g[2], w.data(), x_if_needed, A.data(), B.data(), scale, s);
  });
}

NCP_TEST("lora: float matches double") {
  const ncp::cpu::LoraShape s{77, 65, 33, 8};
  auto x = random_vector(s.rows * s.in, 29), A = random_vector(s.rank * s.in, 30),
       B = random_vector(s.out * s.rank, 31);
  auto dy = random_vector(s.rows * s.out, 32);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    auto xt = cast_vector<T>(x), At = cast_vector<T>(A), Bt = cast_vector<T>(B), dyt = cast_vector<T>(dy);
    std::vector<T> y(s.rows * s.out), dx(x.size()), dA(A.size()), dB(B.size());
    ncp::cpu::lora_forward(y.data(), xt.data(), At.data(), Bt.data(), T(0.5), s);
    ncp::cpu::lora_backward(dx.data(), dA.data(), dB.data(), dyt.data(), xt.data(), At.data(), Bt.data(), T(0.5), s);
    return std::vector<std::vector<T>>{y, dx, dA, dB};
  };
  auto f = run(0.0f);
  auto d = run(0.0);
  for (size_t i = 0; i < d.size(); ++i) {
    const double e = rel_error(f[i].data(), d[i].data(), int64_t(d[i].size()));
    NCP_EXPECT(e < 1e-6, "output " << i << " rel error " << e);
  }
}

}  // namespace
