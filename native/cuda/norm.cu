// Group norm and layer norm. As on the CPU, statistics are two-pass and accumulated in double (a group holds up
// to 40 channels x 16384 pixels), and the float arithmetic of the outputs follows the CPU formulas term by term.
//
// Group norm splits each group into chunks, a block each: with one block per (n, g), SDXL's 32 groups over a batch
// of 2 made 64 blocks for a 132-SM GPU, each walking 160k values three times (0.37 ms a call on an H200 where the
// traffic takes about 0.03 ms). The chunks' partial sums meet in a small scratch array between the passes.
#include <algorithm>
#include <cstdlib>

#include "cuda/common.cuh"
#include "cuda/entries.h"

namespace ncp::cuda {
namespace {

constexpr int kNormThreads = 256;
constexpr int64_t kMaxChunks = 64;  // per group: each block reads all of its group's partial sums

// Chunks per group: enough blocks to fill a large GPU (about 1024 in all), none under 4096 values, at most
// kMaxChunks. NCP_CUDA_NORM_CHUNK (values) overrides the minimum, so the parity cases split small groups too.
int64_t chunks_per_group(int64_t groups, int64_t m) {
  int64_t min_chunk = 4096;
  if (const char* env = std::getenv("NCP_CUDA_NORM_CHUNK"))
    if (std::atoll(env) > 0) min_chunk = std::atoll(env);
  const int64_t wanted = (1024 + groups - 1) / groups, most = std::max<int64_t>(1, m / min_chunk);
  return std::clamp<int64_t>(std::min(wanted, most), 1, kMaxChunks);
}

// The chunk [lo, hi) of values of group (blockIdx.y) that block blockIdx.x of S takes: equal shares.
struct Chunk {
  int64_t lo, hi;
};
__device__ inline Chunk chunk_of(int64_t m, int64_t S) {
  return {m * int64_t(blockIdx.x) / S, m * (int64_t(blockIdx.x) + 1) / S};
}

// f(j, i) for every value i in [lo, hi) of a group whose channel j holds [j HW, (j + 1) HW), channel by channel
// (no division per value), the block's threads striding over each channel's share.
template <class F>
__device__ inline void for_each_by_channel(Chunk k, int64_t HW, F f) {
  for (int64_t j = k.lo / HW; j * HW < k.hi; ++j) {
    const int64_t end = min(k.hi, (j + 1) * HW);
    for (int64_t i = max(k.lo, j * HW) + threadIdx.x; i < end; i += blockDim.x) f(j, i);
  }
}

// Sum of a group's S partial sums (the same order in every block, so every block gets the same double).
__device__ inline double sum_of(const double* partial, int64_t S) {
  double s = 0;
  for (int64_t i = 0; i < S; ++i) s += partial[i];
  return s;
}

// Pass 1: partial[g S + b] = the sum of chunk b of group g (grid S x groups).
__global__ void group_sum_kernel(double* __restrict__ partial, const float* __restrict__ x, int64_t m) {
  const int64_t S = gridDim.x, p = blockIdx.y;
  const Chunk k = chunk_of(m, S);
  const float* xg = x + p * m;
  double s = 0;
  for (int64_t i = k.lo + threadIdx.x; i < k.hi; i += blockDim.x) s += xg[i];
  s = block_sum(s);
  if (threadIdx.x == 0) partial[p * S + blockIdx.x] = s;
}

// Pass 2: squares[g S + b] = sum over chunk b of (x - mean)^2, the mean from pass 1's sums.
__global__ void group_square_sum_kernel(double* __restrict__ squares, const double* __restrict__ sums,
                                        const float* __restrict__ x, int64_t m) {
  const int64_t S = gridDim.x, p = blockIdx.y;
  const Chunk k = chunk_of(m, S);
  const double mean = sum_of(sums + p * S, S) / double(m);
  const float* xg = x + p * m;
  double v = 0;
  for (int64_t i = k.lo + threadIdx.x; i < k.hi; i += blockDim.x) {
    const double d = double(xg[i]) - mean;
    v += d * d;
  }
  v = block_sum(v);
  if (threadIdx.x == 0) squares[p * S + blockIdx.x] = v;
}

// Mean and 1/sqrt(var + eps) of x[0, n), returned to every thread of the block.
__device__ void moments(const float* x, int64_t n, double eps, double& mean, double& rstd) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  mean = block_sum(s) / double(n);
  double v = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = double(x[i]) - mean;
    v += d * d;
  }
  rstd = 1.0 / sqrt(block_sum(v) / double(n) + eps);
}

// Pass 3 (grid S x N G): the group's statistics from the partial sums, saved by the chunk-0 block, then
// y = (x - mean) rstd gamma + beta over the chunk; the group is the contiguous range x[p m, (p + 1) m).
// Silu: y = silu(group_norm(x)).
template <bool Silu>
__global__ void group_norm_apply_kernel(float* __restrict__ y, float* __restrict__ saved_mean,
                                        float* __restrict__ saved_rstd, const double* __restrict__ sums,
                                        const double* __restrict__ squares, const float* __restrict__ x,
                                        const float* __restrict__ gamma, const float* __restrict__ beta, int64_t G,
                                        int64_t Cg, int64_t HW, double eps) {
  const int64_t S = gridDim.x, p = blockIdx.y, m = Cg * HW, c0 = (p % G) * Cg;
  const double mean = sum_of(sums + p * S, S) / double(m);
  const double rstd = 1.0 / sqrt(sum_of(squares + p * S, S) / double(m) + eps);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    saved_mean[p] = float(mean);
    saved_rstd[p] = float(rstd);
  }
  const float tm = float(mean);
  const float* xg = x + p * m;
  float* yg = y + p * m;
  for_each_by_channel(chunk_of(m, S), HW, [&](int64_t j, int64_t i) {
    const int64_t c = c0 + j;
    const float s = float(rstd * (gamma ? double(gamma[c]) : 1.0)), shift = beta ? beta[c] : 0.f;
    const float v = (xg[i] - tm) * s + shift;
    yg[i] = Silu ? silu(v) : v;
  });
}

// The gradient reaching the normalised value at index i of plane (n, c): dy itself, or with Silu (dy being the
// gradient of silu(y)) dy silu'(y), y recomputed from x and the group's saved statistics in the forward's
// formula (to about one ulp: the forward scales by the unrounded rstd).
template <bool Silu>
__device__ inline float normed_grad(const float* dy, const float* x, int64_t i, float tm, float s, float shift) {
  if constexpr (Silu) return dy[i] * silu_grad((x[i] - tm) * s + shift);
  return dy[i];
}

// sums[2 p] = sum_i g[p, i], sums[2 p + 1] = sum_i g[p, i] x[p, i] for each (n, c) plane p, g the gradient of
// the normalised values (normed_grad).
template <bool Silu>
__global__ void plane_sums_kernel(double* __restrict__ sums, const float* __restrict__ dy, const float* __restrict__ x,
                                  const float* __restrict__ saved_mean, const float* __restrict__ saved_rstd,
                                  const float* __restrict__ gamma, const float* __restrict__ beta, int64_t C,
                                  int64_t Cg, int64_t HW) {
  const int64_t p = blockIdx.x, c = p % C, group = p / C * (C / Cg) + c / Cg;
  const double rstd = Silu ? saved_rstd[group] : 0.0;
  const float tm = Silu ? saved_mean[group] : 0.f, s = float(rstd * (gamma ? double(gamma[c]) : 1.0));
  const float shift = beta ? beta[c] : 0.f;
  const float *dp = dy + p * HW, *xp = x + p * HW;
  double sd = 0, sdx = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const double d = normed_grad<Silu>(dp, xp, i, tm, s, shift);
    sd += d;
    sdx += d * double(xp[i]);
  }
  sd = block_sum(sd);
  sdx = block_sum(sdx);
  if (threadIdx.x == 0) {
    sums[2 * p] = sd;
    sums[2 * p + 1] = sdx;
  }
}

// With xhat = (x - mean) rstd and g = dy gamma, dx = rstd (g - mean(g) - xhat mean(g xhat)) over the group,
// i.e. dx = rstd gamma_c dy + a (x - mean) + b with a, b from the per-plane sums (dy: normed_grad).
// Grid S x N G: chunks of each group, as the forward's.
template <bool Silu>
__global__ void group_norm_dx_kernel(float* __restrict__ dx, const double* __restrict__ sums,
                                     const float* __restrict__ dy, const float* __restrict__ x,
                                     const float* __restrict__ saved_mean, const float* __restrict__ saved_rstd,
                                     const float* __restrict__ gamma, const float* __restrict__ beta, int64_t C,
                                     int64_t G, int64_t Cg, int64_t HW) {
  const int64_t p = blockIdx.y, n = p / G, c0 = (p % G) * Cg, m = Cg * HW;
  double sg = 0, sgx = 0;
  for (int64_t c = c0; c < c0 + Cg; ++c) {
    const double gm = gamma ? double(gamma[c]) : 1.0;
    sg += gm * sums[2 * (n * C + c)];
    sgx += gm * sums[2 * (n * C + c) + 1];
  }
  const double mean = saved_mean[p], rstd = saved_rstd[p], inv_m = 1.0 / double(m);
  const double a = (mean * sg - sgx) * rstd * rstd * rstd * inv_m;
  const float ta = float(a), tb = float(-sg * rstd * inv_m), tm = float(mean);
  for_each_by_channel(chunk_of(m, gridDim.x), HW, [&](int64_t j, int64_t i) {
    const int64_t c = c0 + j, at = p * m + i;
    const float s = float(rstd * (gamma ? double(gamma[c]) : 1.0)), shift = beta ? beta[c] : 0.f;
    dx[at] += s * normed_grad<Silu>(dy, x, at, tm, s, shift) + ta * (x[at] - tm) + tb;
  });
}

__global__ void group_norm_params_kernel(float* __restrict__ dgamma, float* __restrict__ dbeta,
                                         const double* __restrict__ sums, const float* __restrict__ saved_mean,
                                         const float* __restrict__ saved_rstd, int64_t N, int64_t C, int64_t G,
                                         int64_t Cg) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  double dg = 0, db = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t p = n * G + c / Cg;
    const double sd = sums[2 * (n * C + c)], sdx = sums[2 * (n * C + c) + 1];
    dg += (sdx - double(saved_mean[p]) * sd) * double(saved_rstd[p]);
    db += sd;
  }
  if (dgamma) dgamma[c] += float(dg);
  if (dbeta) dbeta[c] += float(db);
}

__global__ void layer_norm_forward_kernel(float* __restrict__ y, float* __restrict__ saved_mean,
                                          float* __restrict__ saved_rstd, const float* __restrict__ x,
                                          const float* __restrict__ gamma, const float* __restrict__ beta, int64_t C,
                                          double eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * C;
  double mean, rstd;
  moments(xr, C, eps, mean, rstd);
  if (threadIdx.x == 0) {
    saved_mean[r] = float(mean);
    saved_rstd[r] = float(rstd);
  }
  const float tm = float(mean), tr = float(rstd);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    y[r * C + c] = (xr[c] - tm) * tr * (gamma ? gamma[c] : 1.f) + (beta ? beta[c] : 0.f);
}

__global__ void layer_norm_dx_kernel(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x,
                                     const float* __restrict__ saved_mean, const float* __restrict__ saved_rstd,
                                     const float* __restrict__ gamma, int64_t C) {
  const int64_t r = blockIdx.x;
  const float *d = dy + r * C, *xr = x + r * C;
  const double mean = saved_mean[r], rstd = saved_rstd[r];
  double sg = 0, sgx = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const double g = double(d[c]) * (gamma ? double(gamma[c]) : 1.0);
    sg += g;
    sgx += g * (double(xr[c]) - mean);
  }
  sg = block_sum(sg);
  sgx = block_sum(sgx) * rstd;
  const float tr = float(rstd), tm = float(mean), a = float(sg / double(C)), b = float(sgx * rstd / double(C));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    dx[r * C + c] += tr * (d[c] * (gamma ? gamma[c] : 1.f) - a - (xr[c] - tm) * b);
}

// Block (32, 8) over 32 columns; each thread sums its column over every 8th row, then the 8 phases combine.
__global__ void layer_norm_params_kernel(float* __restrict__ dgamma, float* __restrict__ dbeta,
                                         const float* __restrict__ dy, const float* __restrict__ x,
                                         const float* __restrict__ saved_mean, const float* __restrict__ saved_rstd,
                                         int64_t rows, int64_t C) {
  __shared__ double part[2][8][32];
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
  double dg = 0, db = 0;
  if (c < C)
    for (int64_t r = threadIdx.y; r < rows; r += 8) {
      const double d = dy[r * C + c];
      dg += d * (double(x[r * C + c]) - double(saved_mean[r])) * double(saved_rstd[r]);
      db += d;
    }
  part[0][threadIdx.y][threadIdx.x] = dg;
  part[1][threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  dg = db = 0;
  for (int i = 0; i < 8; ++i) {
    dg += part[0][i][threadIdx.x];
    db += part[1][i][threadIdx.x];
  }
  if (dgamma) dgamma[c] += float(dg);
  if (dbeta) dbeta[c] += float(db);
}

int check_groups(const char* op, int64_t N, int64_t C, int64_t HW, int64_t G) {
  NCP_REQUIRE(N >= 0 && C > 0 && HW > 0 && G > 0 && C % G == 0,
              "%s: channels %lld not divisible by groups %lld (N %lld, HW %lld)", op, (long long)C, (long long)G,
              (long long)N, (long long)HW);
  NCP_REQUIRE(N * C <= INT32_MAX, "%s: too many planes (%lld)", op, (long long)(N * C));
  return NCP_CUDA_OK;
}

template <bool Silu>
int group_norm_forward_as(const char* op, float* y, float* saved_mean, float* saved_rstd, const float* x,
                          const float* gamma, const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G,
                          double eps) {
  NCP_TRY(check_groups(op, N, C, HW, G));
  if (N == 0) return NCP_CUDA_OK;
  const int64_t m = C / G * HW, S = chunks_per_group(N * G, m);
  NCP_REQUIRE(N * G <= 65535, "%s: too many groups (%lld)", op, (long long)(N * G));
  double* partial = nullptr;
  NCP_TRY(scratch(0, size_t(2 * N * G * S) * sizeof(double), reinterpret_cast<void**>(&partial)));
  double *sums = partial, *squares = partial + N * G * S;
  const dim3 grid(unsigned(S), unsigned(N * G));
  NCP_LAUNCH(group_sum_kernel, grid, kNormThreads, 0)(sums, x, m);
  NCP_TRY(check_launch(op));
  NCP_LAUNCH(group_square_sum_kernel, grid, kNormThreads, 0)(squares, sums, x, m);
  NCP_TRY(check_launch(op));
  NCP_LAUNCH(group_norm_apply_kernel<Silu>, grid, kNormThreads, 0)(
      y, saved_mean, saved_rstd, sums, squares, x, gamma, beta, G, C / G, HW, eps);
  return check_launch(op);
}

template <bool Silu>
int group_norm_backward_as(const char* op, float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                           const float* saved_mean, const float* saved_rstd, const float* gamma, const float* beta,
                           int64_t N, int64_t C, int64_t HW, int64_t G) {
  NCP_TRY(check_groups(op, N, C, HW, G));
  if (N == 0 || (!dx && !dgamma && !dbeta)) return NCP_CUDA_OK;
  double* sums = nullptr;
  NCP_TRY(scratch(0, size_t(2 * N * C) * sizeof(double), reinterpret_cast<void**>(&sums)));
  NCP_LAUNCH(plane_sums_kernel<Silu>, unsigned(N * C), kNormThreads, 0)(
      sums, dy, x, saved_mean, saved_rstd, gamma, beta, C, C / G, HW);
  NCP_TRY(check_launch(op));
  if (dgamma || dbeta) {
    NCP_LAUNCH(group_norm_params_kernel, blocks_for(C), kThreads, 0)(
        dgamma, dbeta, sums, saved_mean, saved_rstd, N, C, G, C / G);
    NCP_TRY(check_launch(op));
  }
  if (!dx) return NCP_CUDA_OK;
  NCP_REQUIRE(N * G <= 65535, "%s: too many groups (%lld)", op, (long long)(N * G));
  const dim3 grid(unsigned(chunks_per_group(N * G, C / G * HW)), unsigned(N * G));
  NCP_LAUNCH(group_norm_dx_kernel<Silu>, grid, kNormThreads, 0)(
      dx, sums, dy, x, saved_mean, saved_rstd, gamma, beta, C, G, C / G, HW);
  return check_launch(op);
}

}  // namespace

int group_norm_forward(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                       const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G, double eps) {
  return group_norm_forward_as<false>("group_norm_forward", y, saved_mean, saved_rstd, x, gamma, beta, N, C, HW, G,
                                      eps);
}

int group_norm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* saved_mean, const float* saved_rstd, const float* gamma, int64_t N, int64_t C,
                        int64_t HW, int64_t G) {
  return group_norm_backward_as<false>("group_norm_backward", dx, dgamma, dbeta, dy, x, saved_mean, saved_rstd,
                                       gamma, nullptr, N, C, HW, G);
}

int group_norm_silu_forward(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                            const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G, double eps) {
  return group_norm_forward_as<true>("group_norm_silu_forward", y, saved_mean, saved_rstd, x, gamma, beta, N, C, HW,
                                     G, eps);
}

int group_norm_silu_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                             const float* saved_mean, const float* saved_rstd, const float* gamma, const float* beta,
                             int64_t N, int64_t C, int64_t HW, int64_t G) {
  return group_norm_backward_as<true>("group_norm_silu_backward", dx, dgamma, dbeta, dy, x, saved_mean, saved_rstd,
                                      gamma, beta, N, C, HW, G);
}

int layer_norm_forward(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                       const float* beta, int64_t rows, int64_t C, double eps) {
  NCP_REQUIRE(rows >= 0 && rows <= INT32_MAX && C > 0, "layer_norm_forward: bad shape (rows %lld, C %lld)",
              (long long)rows, (long long)C);
  if (rows == 0) return NCP_CUDA_OK;
  NCP_LAUNCH(layer_norm_forward_kernel, unsigned(rows), kNormThreads, 0)(
      y, saved_mean, saved_rstd, x, gamma, beta, C, eps);
  return check_launch("layer_norm_forward");
}

int layer_norm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* saved_mean, const float* saved_rstd, const float* gamma, int64_t rows, int64_t C) {
  NCP_REQUIRE(rows >= 0 && rows <= INT32_MAX && C > 0, "layer_norm_backward: bad shape (rows %lld, C %lld)",
              (long long)rows, (long long)C);
  if (rows == 0) return NCP_CUDA_OK;
  if (dx) {
    NCP_LAUNCH(layer_norm_dx_kernel, unsigned(rows), kNormThreads, 0)(dx, dy, x, saved_mean, saved_rstd, gamma, C);
    NCP_TRY(check_launch("layer_norm_backward"));
  }
  if (!dgamma && !dbeta) return NCP_CUDA_OK;
  NCP_LAUNCH(layer_norm_params_kernel, unsigned((C + 31) / 32), dim3(32, 8), 0)(
      dgamma, dbeta, dy, x, saved_mean, saved_rstd, rows, C);
  return check_launch("layer_norm_backward");
}

}  // namespace ncp::cuda
