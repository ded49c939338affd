// Timestep embedding, MSE and AdamW against values computed by hand (Python, float64).
#include <cmath>

#include "core/error.h"
#include "cpu/ops.h"
#include "tests/gradcheck.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using namespace ncp::cpu;

NCP_TEST("timestep_embedding: t=37, dim 8, flip and freq_shift variants") {
  // numpy float64: exponent = -ln(1e4) * arange(4) / (4 - shift); cat(sin, cos)(37 * exp(exponent)).
  const double want[2][2][8] = {
      {{-0.6435381333569995, -0.5298361409084926, 0.3616154319649618, 0.036991558411180785, 0.7654140519453434,
        -0.8481000317104085, 0.9323273456060345, 0.9993155780864782},
       {-0.6435381333569995, 0.9892746870393262, 0.07962968868263336, 0.003699991557839109, 0.7654140519453434,
        -0.14606708589974376, 0.9968245144860287, 0.999993155007809}},
      {{0.7654140519453434, -0.8481000317104085, 0.9323273456060345, 0.9993155780864782, -0.6435381333569995,
        -0.5298361409084926, 0.3616154319649618, 0.036991558411180785},
       {0.7654140519453434, -0.14606708589974376, 0.9968245144860287, 0.999993155007809, -0.6435381333569995,
        0.9892746870393262, 0.07962968868263336, 0.003699991557839109}}};
  for (int flip = 0; flip < 2; ++flip)
    for (int shift = 0; shift < 2; ++shift) {
      const double t = 37.0;
      const float tf = 37.0f;
      double y[8];
      float yf[8];
      timestep_embedding(y, &t, 1, 8, flip == 1, double(shift));
      timestep_embedding(yf, &tf, 1, 8, flip == 1, double(shift));
      // The argument t * freq is rounded to float32 as in diffusers: ~2e-6 away from the float64 values.
      for (int i = 0; i < 8; ++i) {
        NCP_EXPECT(std::abs(y[i] - want[flip][shift][i]) < 1e-5, "flip " << flip << " shift " << shift << " [" << i
                                                                         << "] = " << y[i]);
        NCP_EXPECT(std::abs(yf[i] - y[i]) < 1e-7, "float [" << i << "] = " << yf[i] << " vs " << y[i]);
      }
    }
}

NCP_TEST("timestep_embedding: float32 argument like diffusers, odd dim padding, batch rows") {
  // numpy: f = float32(exp(float32(-ln 1e4) * arange(4, float32) / float32(3))); arg = float32(999 * f).
  const double want999[8] = {0.9996498529808264, -0.7286733496466093, -0.5492646466925052, 0.9950141444079402,
                             -0.026460752737064126, 0.6848614089834455, 0.8356484595173723, 0.09973390811622064};
  // dim 7, flip, shift 1, t = 37: the dim-6 values (half = 3) and a zero column.
  const double want37[7] = {0.7654140519453434, 0.9323273456060345, 0.999993155007809, -0.6435381333569995,
                            0.3616154319649618, 0.003699991557839109, 0.0};
  const double t[2] = {999.0, 37.0};
  double y8[16], y7[14];
  timestep_embedding(y8, t, 2, 8, true, 1.0);
  timestep_embedding(y7, t, 2, 7, true, 1.0);
  for (int i = 0; i < 8; ++i) NCP_EXPECT(std::abs(y8[i] - want999[i]) < 1e-12, "t=999 [" << i << "] = " << y8[i]);
  for (int i = 0; i < 7; ++i)
    NCP_EXPECT(std::abs(y7[7 + i] - want37[i]) < 1e-5, "dim 7 t=37 [" << i << "] = " << y7[7 + i]);
  NCP_EXPECT(y7[6] == 0.0 && y7[13] == 0.0, "padding column " << y7[6] << ", " << y7[13]);
}

NCP_TEST("mse: value, gradcheck, float matches double") {
  const double a[3] = {1.0, 2.0, 3.0}, b[3] = {1.5, 2.0, 1.0};
  NCP_EXPECT(std::abs(mse_forward(a, b, 3) - 4.25 / 3) < 1e-15, mse_forward(a, b, 3));
  const int64_t n = 37;
  const double scale = 0.7;
  auto x = random_vector(n, 1), y = random_vector(n, 2);
  std::vector<double> dx(n), dy(n);
  mse_backward(dx.data(), dy.data(), x.data(), y.data(), n, scale);
  auto loss = [&] { return scale * mse_forward(x.data(), y.data(), n); };
  NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"mse a", &x, &dx}, {"mse b", &y, &dy}}), 1e-6);
  expect_backward_accumulates("mse", {n, n}, [&](const std::vector<double*>& p) {
    mse_backward(p[0], p[1], x.data(), y.data(), n, scale);
  });
  const int64_t big = 300001;  // several blocks of the blocked sum
  auto p = random_vector(big, 3), q = random_vector(big, 4);
  auto pf = cast_vector<float>(p), qf = cast_vector<float>(q);
  const double md = mse_forward(p.data(), q.data(), big), mf = mse_forward(pf.data(), qf.data(), big);
  NCP_EXPECT(std::abs(mf - md) < 1e-7 * md, mf << " vs " << md);
  std::vector<float> gf(big);
  std::vector<double> gd(big);
  mse_backward(gf.data(), static_cast<float*>(nullptr), pf.data(), qf.data(), big, 1.0);
  mse_backward(gd.data(), static_cast<double*>(nullptr), p.data(), q.data(), big, 1.0);
  NCP_EXPECT(rel_error(gf.data(), gd.data(), big) < 1e-6, rel_error(gf.data(), gd.data(), big));
}

NCP_TEST("adamw: two steps match a hand computation") {
  // Python float64, PyTorch's update: p *= 1 - lr wd; m, v moments; p -= lr mhat / (sqrt(vhat) + eps).
  const double want_p[2][3] = {{0.39950000333333324, -0.8990000049999998, 1.8980000006666666},
                               {0.3590786479247475, -0.9347113565410368, 1.7963697134444003}};
  const double want_m[3] = {0.016999999999999994, 0.021999999999999995, 0.33499999999999996};
  const double want_v[3] = {9.991000000000009e-05, 0.00019996000000000022, 0.006247750000000005};
  const double grads[2][3] = {{0.3, -0.2, 1.5}, {-0.1, 0.4, 2.0}};
  AdamWConfig c;
  c.lr = 0.1;
  c.weight_decay = 0.01;
  auto run = [&](auto zero, double tol) {
    using T = decltype(zero);
    T p[3] = {T(0.5), T(-1.0), T(2.0)}, m[3] = {}, v[3] = {};
    for (int step = 1; step <= 2; ++step) {
      const T g[3] = {T(grads[step - 1][0]), T(grads[step - 1][1]), T(grads[step - 1][2])};
      adamw_step(p, g, m, v, 3, step, c);
      for (int i = 0; i < 3; ++i)
        NCP_EXPECT(std::abs(p[i] - want_p[step - 1][i]) < tol, sizeof(T) << "-byte step " << step << " p[" << i
                                                                        << "] = " << p[i]);
    }
    for (int i = 0; i < 3; ++i) {
      NCP_EXPECT(std::abs(m[i] - want_m[i]) < tol, sizeof(T) << "-byte m[" << i << "] = " << m[i]);
      NCP_EXPECT(std::abs(v[i] - want_v[i]) < tol * 1e-2, sizeof(T) << "-byte v[" << i << "] = " << v[i]);
    }
  };
  run(0.0, 1e-15);
  run(0.0f, 1e-6);
  bool threw = false;
  try {
    double p = 0, g = 0, m = 0, v = 0;
    adamw_step(&p, &g, &m, &v, 1, 0, c);
  } catch (const ncp::Error& e) {
    threw = e.code() == "NCP_EINVAL";
  }
  NCP_EXPECT(threw, "step 0 accepted");
}

}  // namespace
