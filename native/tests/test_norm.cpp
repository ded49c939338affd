// Group norm and layer norm: normalisation properties, naive references, gradients, float against double.
#include <cmath>

#include "core/error.h"
#include "cpu/ops.h"
#include "tests/gradcheck.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using namespace ncp::cpu;

// Per-group mean and biased variance, straight from the definition.
void naive_group_stats(const std::vector<double>& x, int64_t groups, int64_t m, std::vector<double>& mean,
                       std::vector<double>& var) {
  mean.assign(groups, 0.0);
  var.assign(groups, 0.0);
  for (int64_t p = 0; p < groups; ++p) {
    for (int64_t i = 0; i < m; ++i) mean[p] += x[p * m + i] / double(m);
    for (int64_t i = 0; i < m; ++i) var[p] += (x[p * m + i] - mean[p]) * (x[p * m + i] - mean[p]) / double(m);
  }
}

NCP_TEST("group_norm: groups come out with mean 0 and variance 1 before the affine") {
  const int64_t N = 2, C = 6, HW = 15, G = 3, m = (C / G) * HW;
  auto x = random_vector(N * C * HW, 1, -2.0, 5.0);
  std::vector<double> y(x.size()), mean(N * G), rstd(N * G), ref_mean, ref_var;
  naive_group_stats(x, N * G, m, ref_mean, ref_var);
  group_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), static_cast<const double*>(nullptr),
                     static_cast<const double*>(nullptr), N, C, HW, G, 0.0);
  for (int64_t p = 0; p < N * G; ++p) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < m; ++i) s += y[p * m + i];
    for (int64_t i = 0; i < m; ++i) s2 += y[p * m + i] * y[p * m + i];
    NCP_EXPECT(std::abs(s / m) < 1e-14, "group " << p << " mean " << s / m);
    NCP_EXPECT(std::abs(s2 / m - 1) < 1e-13, "group " << p << " variance " << s2 / m);
    NCP_EXPECT(std::abs(mean[p] - ref_mean[p]) < 1e-14, "saved mean " << mean[p] << " vs " << ref_mean[p]);
    NCP_EXPECT(std::abs(rstd[p] - 1 / std::sqrt(ref_var[p])) < 1e-13, "saved rstd " << rstd[p]);
  }
}

NCP_TEST("group_norm: affine and eps match a naive reference") {
  const int64_t N = 2, C = 6, HW = 15, G = 3, Cg = C / G;
  const double eps = 0.25;  // large, so a misplaced eps shows
  auto x = random_vector(N * C * HW, 2, -2.0, 5.0), gamma = random_vector(C, 3), beta = random_vector(C, 4);
  std::vector<double> y(x.size()), mean(N * G), rstd(N * G), ref_mean, ref_var;
  naive_group_stats(x, N * G, Cg * HW, ref_mean, ref_var);
  group_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), N, C, HW, G, eps);
  double worst = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t p = n * G + c / Cg, at = (n * C + c) * HW + i;
        const double want = (x[at] - ref_mean[p]) / std::sqrt(ref_var[p] + eps) * gamma[c] + beta[c];
        worst = std::max(worst, std::abs(y[at] - want));
      }
  NCP_EXPECT(worst < 1e-13, "affine group norm off by " << worst);
}

NCP_TEST("group_norm: gradcheck with and without affine") {
  const int64_t N = 2, C = 6, HW = 15, G = 3;
  auto x = random_vector(N * C * HW, 5, -1.0, 2.0), gamma = random_vector(C, 6, 0.5, 1.5);
  auto beta = random_vector(C, 7), w = random_vector(x.size(), 8);
  std::vector<double> y(x.size()), mean(N * G), rstd(N * G), dx(x.size()), dg(C), db(C);
  const double eps = 1e-5;
  for (bool affine : {true, false}) {
    const double* g = affine ? gamma.data() : nullptr;
    const double* b = affine ? beta.data() : nullptr;
    auto loss = [&] {
      group_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), g, b, N, C, HW, G, eps);
      return weighted_sum(y, w);
    };
    loss();
    std::fill(dx.begin(), dx.end(), 0.0);
    std::fill(dg.begin(), dg.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    group_norm_backward(dx.data(), dg.data(), db.data(), w.data(), x.data(), mean.data(), rstd.data(), g, N, C,
                        HW, G);
    if (affine)
      NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"x", &x, &dx}, {"gamma", &gamma, &dg}, {"beta", &beta, &db}}), 1e-6);
    else
      NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"x (no affine)", &x, &dx}}), 1e-6);
  }
  expect_backward_accumulates("group_norm", {N * C * HW, C, C}, [&](const std::vector<double*>& p) {
    group_norm_backward(p[0], p[1], p[2], w.data(), x.data(), mean.data(), rstd.data(), gamma.data(), N, C, HW, G);
  });
}

// The fused op against its definition: silu of the plain group norm, forward and backward.
NCP_TEST("group_norm_silu: forward is silu(group_norm), gradcheck, and float matches double") {
  const int64_t N = 2, C = 6, HW = 15, G = 3;
  auto x = random_vector(N * C * HW, 31, -1.0, 2.0), gamma = random_vector(C, 32, 0.5, 1.5);
  auto beta = random_vector(C, 33), w = random_vector(x.size(), 34);
  std::vector<double> y(x.size()), plain(x.size()), mean(N * G), rstd(N * G), dx(x.size()), dg(C), db(C);
  const double eps = 1e-5;
  for (bool affine : {true, false}) {
    const double* g = affine ? gamma.data() : nullptr;
    const double* b = affine ? beta.data() : nullptr;
    group_norm_forward(plain.data(), mean.data(), rstd.data(), x.data(), g, b, N, C, HW, G, eps);
    group_norm_silu_forward(y.data(), mean.data(), rstd.data(), x.data(), g, b, N, C, HW, G, eps);
    double worst = 0;
    for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::abs(y[i] - plain[i] / (1 + std::exp(-plain[i]))));
    NCP_EXPECT(worst < 1e-14, "fused forward off silu(group_norm) by " << worst << (affine ? "" : " (no affine)"));
    auto loss = [&] {
      group_norm_silu_forward(y.data(), mean.data(), rstd.data(), x.data(), g, b, N, C, HW, G, eps);
      return weighted_sum(y, w);
    };
    loss();
    std::fill(dx.begin(), dx.end(), 0.0);
    std::fill(dg.begin(), dg.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    group_norm_silu_backward(dx.data(), dg.data(), db.data(), w.data(), x.data(), mean.data(), rstd.data(), g, b,
                             N, C, HW, G);
    if (affine)
      NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"x", &x, &dx}, {"gamma", &gamma, &dg}, {"beta", &beta, &db}}), 1e-6);
    else
      NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"x (no affine)", &x, &dx}}), 1e-6);
  }
  expect_backward_accumulates("group_norm_silu", {N * C * HW, C, C}, [&](const std::vector<double*>& p) {
    group_norm_silu_backward(p[0], p[1], p[2], w.data(), x.data(), mean.data(), rstd.data(), gamma.data(),
                             beta.data(), N, C, HW, G);
  });
  // Float (the vectorised exp) against double at the SD down-block shape.
  const int64_t N2 = 2, C2 = 64, HW2 = 257, G2 = 32;
  auto x2 = random_vector(N2 * C2 * HW2, 35, 1.0, 7.0), g2 = random_vector(C2, 36), b2 = random_vector(C2, 37);
  auto dy2 = random_vector(x2.size(), 38);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    auto xt = cast_vector<T>(x2), gt = cast_vector<T>(g2), bt = cast_vector<T>(b2), dyt = cast_vector<T>(dy2);
    std::vector<T> yt(x2.size()), mt(N2 * G2), rt(N2 * G2), dxt(x2.size());
    group_norm_silu_forward(yt.data(), mt.data(), rt.data(), xt.data(), gt.data(), bt.data(), N2, C2, HW2, G2, 1e-5);
    group_norm_silu_backward(dxt.data(), static_cast<T*>(nullptr), static_cast<T*>(nullptr), dyt.data(), xt.data(),
                             mt.data(), rt.data(), gt.data(), bt.data(), N2, C2, HW2, G2);
    return std::vector<std::vector<T>>{yt, dxt};
  };
  auto f = run(0.0f);
  auto d = run(0.0);
  for (size_t i = 0; i < d.size(); ++i) {
    const double e = rel_error(f[i].data(), d[i].data(), int64_t(d[i].size()));
    NCP_EXPECT(e < 1e-6, "group_norm_silu " << (i ? "dx" : "y") << " float vs double rel error " << e);
  }
}

NCP_TEST("group_norm: channels not divisible by groups is an error") {
  std::vector<double> x(10), y(10), mean(4), rstd(4);
  bool threw = false;
  try {
    group_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), static_cast<const double*>(nullptr),
                       static_cast<const double*>(nullptr), 1, 5, 2, 2, 1e-5);
  } catch (const ncp::Error& e) {
    threw = e.code() == "NCP_EINVAL";
  }
  NCP_EXPECT(threw);
}

NCP_TEST("layer_norm: forward matches a naive reference") {
  const int64_t rows = 3, C = 9;
  auto x = random_vector(rows * C, 8, -3.0, 4.0), gamma = random_vector(C, 9), beta = random_vector(C, 10);
  std::vector<double> y(x.size()), mean(rows), rstd(rows);
  const double eps = 0.1;
  layer_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows, C, eps);
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mu += x[r * C + c] / C;
    for (int64_t c = 0; c < C; ++c) var += (x[r * C + c] - mu) * (x[r * C + c] - mu) / C;
    worst = std::max({worst, std::abs(mean[r] - mu), std::abs(rstd[r] - 1 / std::sqrt(var + eps))});
    for (int64_t c = 0; c < C; ++c)
      worst = std::max(worst, std::abs(y[r * C + c] - ((x[r * C + c] - mu) / std::sqrt(var + eps) * gamma[c] +
                                                       beta[c])));
  }
  NCP_EXPECT(worst < 1e-13, "layer norm off by " << worst);
}

NCP_TEST("layer_norm: gradcheck") {
  const int64_t rows = 5, C = 7;
  auto x = random_vector(rows * C, 11, -1.0, 2.0), gamma = random_vector(C, 12, 0.5, 1.5);
  auto beta = random_vector(C, 13), w = random_vector(x.size(), 14);
  std::vector<double> y(x.size()), mean(rows), rstd(rows), dx(x.size()), dg(C), db(C);
  auto loss = [&] {
    layer_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows, C, 1e-5);
    return weighted_sum(y, w);
  };
  loss();
  layer_norm_backward(dx.data(), dg.data(), db.data(), w.data(), x.data(), mean.data(), rstd.data(), gamma.data(),
                      rows, C);
  NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"x", &x, &dx}, {"gamma", &gamma, &dg}, {"beta", &beta, &db}}), 1e-6);
  expect_backward_accumulates("layer_norm", {rows * C, C, C}, [&](const std::vector<double*>& p) {
    layer_norm_backward(p[0], p[1], p[2], w.data(), x.data(), mean.data(), rstd.data(), gamma.data(), rows, C);
  });
}

// Shapes of the SD 1.5 down block at 1/8 size: 32 groups, offset data so the mean matters.
NCP_TEST("norm: float matches double") {
  auto compare = [](const char* what, auto& f, auto& d) {
    for (size_t i = 0; i < d.size(); ++i) {
      const double e = rel_error(f[i].data(), d[i].data(), int64_t(d[i].size()));
      NCP_EXPECT(e < 1e-6, what << " output " << i << " rel error " << e);
    }
  };
  {
    const int64_t N = 2, C = 64, HW = 257, G = 32;
    auto x = random_vector(N * C * HW, 15, 1.0, 7.0), gamma = random_vector(C, 16), beta = random_vector(C, 17);
    auto dy = random_vector(x.size(), 18);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      auto xt = cast_vector<T>(x), gt = cast_vector<T>(gamma), bt = cast_vector<T>(beta), dyt = cast_vector<T>(dy);
      std::vector<T> y(x.size()), mean(N * G), rstd(N * G), dx(x.size()), dg(C), db(C);
      group_norm_forward(y.data(), mean.data(), rstd.data(), xt.data(), gt.data(), bt.data(), N, C, HW, G, 1e-5);
      group_norm_backward(dx.data(), dg.data(), db.data(), dyt.data(), xt.data(), mean.data(), rstd.data(),
                          gt.data(), N, C, HW, G);
      return std::vector<std::vector<T>>{y, mean, rstd, dx, dg, db};
    };
    auto f = run(0.0f);
    auto d = run(0.0);
    compare("group_norm", f, d);
  }
  {
    const int64_t rows = 129, C = 320;
    auto x = random_vector(rows * C, 19, -2.0, 6.0), gamma = random_vector(C, 20), beta = random_vector(C, 21);
    auto dy = random_vector(x.size(), 22);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      auto xt = cast_vector<T>(x), gt = cast_vector<T>(gamma), bt = cast_vector<T>(beta), dyt = cast_vector<T>(dy);
      std::vector<T> y(x.size()), mean(rows), rstd(rows), dx(x.size()), dg(C), db(C);
      layer_norm_forward(y.data(), mean.data(), rstd.data(), xt.data(), gt.data(), bt.data(), rows, C, 1e-5);
      layer_norm_backward(dx.data(), dg.data(), db.data(), dyt.data(), xt.data(), mean.data(), rstd.data(),
                          gt.data(), rows, C);
      return std::vector<std::vector<T>>{y, mean, rstd, dx, dg, db};
    };
    auto f = run(0.0f);
    auto d = run(0.0);
    compare("layer_norm", f, d);
  }
}

}  // namespace
