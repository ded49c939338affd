// Group norm (resnets, transformer input) and layer norm (transformer blocks). Statistics are two-pass and
// accumulated in double: a group holds up to 40 channels x 4096 pixels, too many for a float running sum.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "cpu/ops.h"
#include "cpu/vec.h"

namespace ncp::cpu {
namespace {

template <class T>
void moments(const T* x, int64_t n, double eps, double& mean, double& rstd) {
  mean = vec::sum(n, [&](int64_t i) { return double(x[i]); }) / double(n);
  const double m = mean;
  const double var = vec::sum(n, [&](int64_t i) {
                       const double d = double(x[i]) - m;
                       return d * d;
                     }) / double(n);
  rstd = 1.0 / std::sqrt(var + eps);
}

// gamma and beta as arrays even when absent (identity affine), so the row loops carry no branches.
template <class T>
const T* or_filled(const T* p, std::vector<T>& storage, int64_t C, T value) {
  if (p) return p;
  storage.assign(C, value);
  return storage.data();
}

// The row kernels take plain pointers and values: read through a lambda's captured references, the loop
// invariants could alias the stores and the loops would not vectorise.
template <class T>
void layer_norm_row(T* y, const T* x, const T* gamma, const T* beta, T mean, T rstd, int64_t C) {
  for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - mean) * rstd * gamma[c] + beta[c];
}

// dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy gamma, xhat = (x - mean) rstd.
template <class T>
void layer_norm_dx_row(T* dx, const T* dy, const T* x, const T* gamma, double mean, double rstd, int64_t C) {
  const double sg = vec::sum(C, [&](int64_t c) { return double(dy[c]) * double(gamma[c]); });
  const double sgx =
      vec::sum(C, [&](int64_t c) { return double(dy[c]) * double(gamma[c]) * (double(x[c]) - mean); });
  const T tr = T(rstd), tm = T(mean), a = T(sg / double(C)), b = T(sgx * rstd * rstd / double(C));
  for (int64_t c = 0; c < C; ++c) dx[c] += tr * (dy[c] * gamma[c] - a - (x[c] - tm) * b);
}

// dgamma[c] += sum_r dy xhat, dbeta[c] += sum_r dy over the columns [c0, c1), in double.
template <class T>
void layer_norm_param_grads(T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean, const T* rstd,
                            int64_t rows, int64_t C, int64_t c0, int64_t c1) {
  std::vector<double> dg(c1 - c0, 0.0), db(c1 - c0, 0.0);
  double* g = dg.data();
  double* b = db.data();
  for (int64_t r = 0; r < rows; ++r) {
    const T* d = dy + r * C + c0;
    const T* xr = x + r * C + c0;
    const double m = mean[r], rs = rstd[r];
    for (int64_t c = 0; c < c1 - c0; ++c) {
      g[c] += double(d[c]) * ((double(xr[c]) - m) * rs);
      b[c] += double(d[c]);
    }
  }
  for (int64_t c = c0; c < c1; ++c) {
    if (dgamma) dgamma[c] += T(g[c - c0]);
    if (dbeta) dbeta[c] += T(b[c - c0]);
  }
}

}  // namespace

namespace {

void check_groups(int64_t C, int64_t G) {
  check(G > 0 && C % G == 0, "NCP_EINVAL",
        "group_norm: channels " + std::to_string(C) + " not divisible by groups " + std::to_string(G));
}

// The affine map of channel c of group p: y = (x - mean) scale + shift, in the forward's float formula. The fused
// backward builds it from the saved (rounded) statistics, the forward from the unrounded ones, so a recomputed
// value can differ from the forward's by the rounding of scale: about one ulp, far below any gradient tolerance.
template <class T>
struct ChannelAffine {
  T mean, scale, shift;
};
template <class T>
ChannelAffine<T> channel_affine(double mean, double rstd, const T* gamma, const T* beta, int64_t c) {
  return {T(mean), T(rstd * (gamma ? double(gamma[c]) : 1.0)), beta ? beta[c] : T(0)};
}

template <bool Silu, class T>
void group_norm_forward_impl(T* y, T* saved_mean, T* saved_rstd, const T* x, const T* gamma, const T* beta,
                             int64_t N, int64_t C, int64_t HW, int64_t G, double eps) {
  check_groups(C, G);
  const int64_t Cg = C / G, m = Cg * HW;
  parallel_for(N * G, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {  // p = n * G + g; the group is the contiguous block x[p * m, (p+1) m)
      double mean, rstd;
      moments(x + p * m, m, eps, mean, rstd);
      saved_mean[p] = T(mean);
      saved_rstd[p] = T(rstd);
      for (int64_t cg = 0; cg < Cg; ++cg) {
        const ChannelAffine<T> a = channel_affine(mean, rstd, gamma, beta, (p % G) * Cg + cg);
        const T* xc = x + p * m + cg * HW;
        T* yc = y + p * m + cg * HW;
        for (int64_t i = 0; i < HW; ++i) {
          const T v = (xc[i] - a.mean) * a.scale + a.shift;
          yc[i] = Silu ? vec::silu(v) : v;
        }
      }
    }
  });
}

// With xhat = (x - mean) rstd and g = dy * gamma, dx = rstd (g - mean(g) - xhat mean(g xhat)) over the group.
// Expanding xhat gives dx = rstd gamma_c dy + a (x - mean) + b per group, from per-channel sums of dy, dy x.
// Silu: dy is the gradient of silu(y); the gradient of y, dy silu'(y), is formed one group at a time from the
// recomputed y, so no tensor of the normalised values is needed.
template <bool Silu, class T>
void group_norm_backward_impl(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* saved_mean,
                              const T* saved_rstd, const T* gamma, const T* beta, int64_t N, int64_t C, int64_t HW,
                              int64_t G) {
  check_groups(C, G);
  const int64_t Cg = C / G, m = Cg * HW;
  const double inv_m = 1.0 / double(m);
  std::vector<double> sum_dy(N * C), sum_dyx(N * C);
  parallel_for(N * G, 1, [&](int64_t p0, int64_t p1) {
    std::vector<T> group_grad(Silu ? m : 0);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / G, c0 = (p % G) * Cg;
      const double mean = saved_mean[p], rstd = saved_rstd[p];
      const T* d = dy + p * m;  // the gradient of the normalised output, [Cg, HW]
      if constexpr (Silu) {
        for (int64_t cg = 0; cg < Cg; ++cg) {
          const ChannelAffine<T> a = channel_affine(mean, rstd, gamma, beta, c0 + cg);
          const T* xc = x + p * m + cg * HW;
          const T* dc = dy + p * m + cg * HW;
          T* gc = group_grad.data() + cg * HW;
          for (int64_t i = 0; i < HW; ++i) gc[i] = dc[i] * vec::silu_grad((xc[i] - a.mean) * a.scale + a.shift);
        }
        d = group_grad.data();
      }
      for (int64_t cg = 0; cg < Cg; ++cg) {
        const T* dc = d + cg * HW;
        const T* xc = x + p * m + cg * HW;
        sum_dy[n * C + c0 + cg] = vec::sum(HW, [&](int64_t i) { return double(dc[i]); });
        sum_dyx[n * C + c0 + cg] = vec::sum(HW, [&](int64_t i) { return double(dc[i]) * double(xc[i]); });
      }
      if (!dx) continue;
      double sg = 0, sgx = 0;  // sums over the group of g and of g * x
      for (int64_t c = c0; c < c0 + Cg; ++c) {
        const double gm = gamma ? double(gamma[c]) : 1.0;
        sg += gm * sum_dy[n * C + c];
        sgx += gm * sum_dyx[n * C + c];
      }
      const double a = (mean * sg - sgx) * rstd * rstd * rstd * inv_m;
      const T ta = T(a), tb = T(-sg * rstd * inv_m), tm = T(mean);
      for (int64_t cg = 0; cg < Cg; ++cg) {
        const T s = T(rstd * (gamma ? double(gamma[c0 + cg]) : 1.0));
        const T* dc = d + cg * HW;
        const T* xc = x + p * m + cg * HW;
        T* out = dx + p * m + cg * HW;
        for (int64_t i = 0; i < HW; ++i) out[i] += s * dc[i] + ta * (xc[i] - tm) + tb;
      }
    }
  });
  if (!dgamma && !dbeta) return;
  for (int64_t c = 0; c < C; ++c) {
    double dg = 0, db = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t p = n * G + c / Cg;
      dg += (sum_dyx[n * C + c] - double(saved_mean[p]) * sum_dy[n * C + c]) * double(saved_rstd[p]);
      db += sum_dy[n * C + c];
    }
    if (dgamma) dgamma[c] += T(dg);
    if (dbeta) dbeta[c] += T(db);
  }
}

}  // namespace

template <class T>
void group_norm_forward(T* y, T* saved_mean, T* saved_rstd, const T* x, const T* gamma, const T* beta, int64_t N,
                        int64_t C, int64_t HW, int64_t G, double eps) {
  group_norm_forward_impl<false>(y, saved_mean, saved_rstd, x, gamma, beta, N, C, HW, G, eps);
}

template <class T>
void group_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* saved_mean,
                         const T* saved_rstd, const T* gamma, int64_t N, int64_t C, int64_t HW, int64_t G) {
  group_norm_backward_impl<false>(dx, dgamma, dbeta, dy, x, saved_mean, saved_rstd, gamma, static_cast<const T*>(nullptr),
                                  N, C, HW, G);
}

template <class T>
void group_norm_silu_forward(T* y, T* saved_mean, T* saved_rstd, const T* x, const T* gamma, const T* beta,
                             int64_t N, int64_t C, int64_t HW, int64_t G, double eps) {
  group_norm_forward_impl<true>(y, saved_mean, saved_rstd, x, gamma, beta, N, C, HW, G, eps);
}

template <class T>
void group_norm_silu_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* saved_mean,
                              const T* saved_rstd, const T* gamma, const T* beta, int64_t N, int64_t C, int64_t HW,
                              int64_t G) {
  group_norm_backward_impl<true>(dx, dgamma, dbeta, dy, x, saved_mean, saved_rstd, gamma, beta, N, C, HW, G);
}

template <class T>
void layer_norm_forward(T* y, T* saved_mean, T* saved_rstd, const T* x, const T* gamma, const T* beta,
                        int64_t rows, int64_t C, double eps) {
  std::vector<T> ones, zeros;
  gamma = or_filled(gamma, ones, C, T(1));
  beta = or_filled(beta, zeros, C, T(0));
  parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      double mean, rstd;
      moments(x + r * C, C, eps, mean, rstd);
      saved_mean[r] = T(mean);
      saved_rstd[r] = T(rstd);
      layer_norm_row(y + r * C, x + r * C, gamma, beta, T(mean), T(rstd), C);
    }
  });
}

template <class T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* saved_mean,
                         const T* saved_rstd, const T* gamma, int64_t rows, int64_t C) {
  if (dx) {
    std::vector<T> ones;
    gamma = or_filled(gamma, ones, C, T(1));
    parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        layer_norm_dx_row(dx + r * C, dy + r * C, x + r * C, gamma, double(saved_mean[r]), double(saved_rstd[r]),
                          C);
    });
  }
  if (!dgamma && !dbeta) return;
  // Columns are independent sums over rows: split the columns so no two threads touch the same parameter.
  parallel_for(C, 64, [&](int64_t c0, int64_t c1) {
    layer_norm_param_grads(dgamma, dbeta, dy, x, saved_mean, saved_rstd, rows, C, c0, c1);
  });
}

#define NCP_INSTANTIATE(T)                                                                                     \
  template void group_norm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,     \
                                      int64_t, double);                                                        \
  template void group_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t, \
                                       int64_t, int64_t, int64_t);                                             \
  template void group_norm_silu_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                           int64_t, double);                                                   \
  template void group_norm_silu_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,      \
                                            const T*, int64_t, int64_t, int64_t, int64_t);                     \
  template void layer_norm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, double);    \
  template void layer_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int64_t,  \
                                       int64_t);
NCP_INSTANTIATE(float)
NCP_INSTANTIATE(double)
#undef NCP_INSTANTIATE

}  // namespace ncp::cpu
