// Conv2d: forward against a naive direct convolution, float64 gradients against finite differences, and the
// float forward/backward (AVX-512 and AVX2 kernels) against float64.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/gemm_dispatch.h"
#include "cpu/ops.h"
#include "tests/gradcheck.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using ncp::cpu::Conv2dShape;
using ncp::cpu::GemmBackend;

struct ForcedBackend {
  explicit ForcedBackend(GemmBackend b) : ok(ncp::cpu::set_gemm_backend(b)) {}
  ~ForcedBackend() { ncp::cpu::set_gemm_backend(GemmBackend::Auto); }
  bool ok;
};

std::string str(const Conv2dShape& s) {
  return "[N=" + std::to_string(s.N) + " Cin=" + std::to_string(s.Cin) + " " + std::to_string(s.H) + "x" +
         std::to_string(s.W) + " Cout=" + std::to_string(s.Cout) + " k=" + std::to_string(s.k) +
         " s=" + std::to_string(s.stride) + " p=" + std::to_string(s.pad) + "]";
}

// The definition: y[n, o, i, j] = b[o] + sum_{c, kh, kw} W[o, c, kh, kw] x[n, c, i s - p + kh, j s - p + kw].
template <class T>
std::vector<double> naive_conv(const std::vector<T>& x, const std::vector<T>& W, const T* b, const Conv2dShape& s) {
  const int64_t Ho = s.Ho(), Wo = s.Wo();
  std::vector<double> y(s.N * s.Cout * Ho * Wo);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t o = 0; o < s.Cout; ++o)
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; ++j) {
          double acc = b ? double(b[o]) : 0.0;
          for (int64_t c = 0; c < s.Cin; ++c)
            for (int64_t kh = 0; kh < s.k; ++kh)
              for (int64_t kw = 0; kw < s.k; ++kw) {
                const int64_t ih = i * s.stride - s.pad + kh, iw = j * s.stride - s.pad + kw;
                if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
                acc += double(W[((o * s.Cin + c) * s.k + kh) * s.k + kw]) *
                       double(x[((n * s.Cin + c) * s.H + ih) * s.W + iw]);
              }
          y[((n * s.Cout + o) * Ho + i) * Wo + j] = acc;
        }
  return y;
}

// k 1 and 3, stride 1 and 2, odd sizes. Each image gets its own GEMM unless Cin k k >= 4 Ho Wo (then one GEMM
// covers the batch): both occur, for the forward and (Cout k k vs H W) for the stride-1 data gradient. The
// last few are big enough to run multithreaded; pad > k - 1 makes the stride-1 data gradient crop.
const Conv2dShape kShapes[] = {
    {1, 1, 1, 1, 1, 1, 1, 0},    {2, 3, 7, 5, 5, 3, 1, 1},     {2, 5, 7, 5, 3, 3, 1, 1},     {3, 3, 7, 5, 5, 3, 2, 1},
    {2, 5, 6, 7, 3, 3, 2, 1},    {2, 3, 7, 5, 5, 1, 1, 0},     {1, 5, 7, 5, 3, 1, 2, 0},     {2, 3, 5, 7, 3, 3, 1, 0},
    {1, 3, 5, 4, 2, 1, 1, 1},    {2, 2, 4, 3, 3, 3, 2, 2},     {2, 16, 5, 3, 7, 3, 1, 1},    {3, 9, 5, 5, 4, 3, 2, 1},
    {2, 3, 3, 5, 16, 3, 1, 1},   {2, 37, 13, 11, 45, 3, 1, 1}, {2, 33, 16, 16, 31, 3, 2, 1}, {1, 20, 40, 36, 19, 3, 1, 1},
    {2, 64, 6, 6, 70, 3, 1, 1}};

template <class T>
double rounding_tol(int64_t K) {
  return 8 * std::sqrt(double(K) + 1) * std::numeric_limits<T>::epsilon() / 2;
}

template <class T>
void check_forward(const Conv2dShape& s, const std::string& backend) {
  const double tol = rounding_tol<T>(s.Cin * s.k * s.k);
  std::vector<T> x(s.N * s.Cin * s.H * s.W), W(s.Cout * s.Cin * s.k * s.k), b(s.Cout);
  fill_uniform(x, 1);
  fill_uniform(W, 2);
  fill_uniform(b, 3);
  std::vector<T> y(s.N * s.Cout * s.Ho() * s.Wo(), T(7));
  for (const T* bias : {static_cast<const T*>(b.data()), static_cast<const T*>(nullptr)}) {
    ncp::cpu::conv2d_forward(y.data(), x.data(), W.data(), bias, s);
    const auto want = naive_conv(x, W, bias, s);
    const double e = rel_error(y.data(), want.data(), int64_t(want.size()));
    NCP_EXPECT(e < tol, backend << " " << str(s) << (bias ? " with" : " without") << " bias: rel error " << e);
  }
}

NCP_TEST("conv2d: forward matches a naive direct convolution (float and double, each ISA)") {
  for (GemmBackend b : {GemmBackend::OwnAvx512, GemmBackend::OwnAvx2}) {
    ForcedBackend forced(b);
    if (!forced.ok) continue;
    const std::string name = b == GemmBackend::OwnAvx512 ? "avx512" : "avx2";
    for (const auto& s : kShapes) {
      check_forward<double>(s, name);
      check_forward<float>(s, name);
    }
  }
}

// L = sum(y .* w) with the float64 backward given dy = w.
void gradcheck_conv(const Conv2dShape& s) {
  auto x = random_vector(s.N * s.Cin * s.H * s.W, 11), W = random_vector(s.Cout * s.Cin * s.k * s.k, 12);
  auto b = random_vector(s.Cout, 13), w = random_vector(s.N * s.Cout * s.Ho() * s.Wo(), 14);
  std::vector<double> y(w.size()), dx(x.size()), dW(W.size()), db(b.size());
  auto loss = [&] {
    ncp::cpu::conv2d_forward(y.data(), x.data(), W.data(), b.data(), s);
    return weighted_sum(y, w);
  };
  ncp::cpu::conv2d_backward(dx.data(), dW.data(), db.data(), w.data(), x.data(), W.data(), s);
  GradcheckOptions opt;
  opt.max_elements = 300;
  const auto reports = gradcheck(loss, {{"x", &x, &dx}, {"W", &W, &dW}, {"b", &b, &db}}, opt);
  for (const auto& r : reports)
    NCP_EXPECT(r.rel_error < 1e-6, str(s) << " d" << r.name << ": rel error " << r.rel_error << " over "
                                          << r.checked << " elements");
}

NCP_TEST("conv2d: float64 gradcheck of dx, dW, db") {
  for (const auto& s : kShapes)
    if (s.N * s.Cin * s.H * s.W <= 2000) gradcheck_conv(s);
}

NCP_TEST("conv2d: backward adds into gradients and skips nullptr ones") {
  for (const auto& s : kShapes) {
    if (s.N * s.Cin * s.H * s.W > 2000) continue;
    auto x = random_vector(s.N * s.Cin * s.H * s.W, 21), W = random_vector(s.Cout * s.Cin * s.k * s.k, 22);
    auto dy = random_vector(s.N * s.Cout * s.Ho() * s.Wo(), 23);
    expect_backward_accumulates("conv2d " + str(s), {int64_t(x.size()), int64_t(W.size()), s.Cout},
                                [&](const std::vector<double*>& g) {
                                  ncp::cpu::conv2d_backward(g[0], g[1], g[2], dy.data(), x.data(), W.data(), s);
                                });
  }
}

// The float kernels (not reached by the float64 gradcheck) against the checked float64 path.
NCP_TEST("conv2d: float backward matches float64 (each ISA)") {
  for (GemmBackend b : {GemmBackend::OwnAvx512, GemmBackend::OwnAvx2, GemmBackend::OpenBLAS}) {
    ForcedBackend forced(b);
    if (!forced.ok) continue;
    for (const auto& s : kShapes) {
      auto x = random_vector(s.N * s.Cin * s.H * s.W, 31), W = random_vector(s.Cout * s.Cin * s.k * s.k, 32);
      auto dy = random_vector(s.N * s.Cout * s.Ho() * s.Wo(), 33);
      std::vector<double> dx(x.size()), dW(W.size()), db(s.Cout);
      ncp::cpu::conv2d_backward(dx.data(), dW.data(), db.data(), dy.data(), x.data(), W.data(), s);
      auto xf = cast_vector<float>(x), Wf = cast_vector<float>(W), dyf = cast_vector<float>(dy);
      std::vector<float> dxf(x.size()), dWf(W.size()), dbf(s.Cout);
      ncp::cpu::conv2d_backward(dxf.data(), dWf.data(), dbf.data(), dyf.data(), xf.data(), Wf.data(), s);
      const double ex = rel_error(dxf.data(), dx.data(), int64_t(dx.size()));
      const double eW = rel_error(dWf.data(), dW.data(), int64_t(dW.size()));
      const double eb = rel_error(dbf.data(), db.data(), int64_t(db.size()));
      const double tx = rounding_tol<float>(s.Cout * s.k * s.k), tW = rounding_tol<float>(s.N * s.Ho() * s.Wo());
      NCP_EXPECT(ex < tx && eW < tW && eb < rounding_tol<float>(1),
                 int(b) << " " << str(s) << ": dx " << ex << " dW " << eW << " db " << eb);
    }
  }
}

NCP_TEST("conv2d: invalid shapes throw NCP_EINVAL naming the shape") {
  std::vector<float> buf(64);
  bool threw = false;
  try {
    ncp::cpu::conv2d_forward(buf.data(), buf.data(), buf.data(), static_cast<const float*>(nullptr),
                             Conv2dShape{1, 1, 1, 1, 1, 3, 1, 0});
  } catch (const ncp::Error& e) {
    threw = e.code() == "NCP_EINVAL" && std::string(e.what()).find("k=3") != std::string::npos;
  }
  NCP_EXPECT(threw, "a 3x3 kernel over an unpadded 1x1 input was accepted");
}

}  // namespace
