// Multi-head softmax attention with the probabilities saved for backward, as on the CPU: per batch item, the
// heads form one strided-batched GEMM (head h of q, k, v, out starts at column h Dh of the [L, H Dh] rows,
// its [Lq, Lk] score matrix at h Lq Lk), and a row kernel does the softmax and its backward.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/entries.h"
#include "cuda/flash_attention.h"

namespace ncp::cuda {
namespace {

constexpr int kRowThreads = 128;

// In place over the [rows, Lk] scores: softmax over the keys a query may see (key j <= query i when causal,
// i = row % Lq); masked entries become 0.
__global__ void softmax_rows_kernel(float* __restrict__ p, int64_t Lq, int64_t Lk, bool causal) {
  float* row = p + int64_t(blockIdx.x) * Lk;
  const int64_t i = int64_t(blockIdx.x) % Lq, visible = causal && i + 1 < Lk ? i + 1 : Lk;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < visible; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_max(mx);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < visible; j += blockDim.x) sum += expf(row[j] - mx);
  const float inv = 1.f / block_sum(sum);
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) row[j] = j < visible ? expf(row[j] - mx) * inv : 0.f;
}

// ds = P (dP - sum_j P dP) row by row, in place over dP.
__global__ void softmax_backward_rows_kernel(float* __restrict__ ds, const float* __restrict__ probs, int64_t Lk) {
  float* d = ds + int64_t(blockIdx.x) * Lk;
  const float* p = probs + int64_t(blockIdx.x) * Lk;
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) dot += p[j] * d[j];
  dot = block_sum(dot);
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) d[j] = p[j] * (d[j] - dot);
}

int check_shape(const char* op, const ncp_cuda_attention_shape* s) {
  NCP_REQUIRE(s, "%s: shape is NULL", op);
  NCP_REQUIRE(s->B >= 0 && s->Lq >= 0 && s->Lk > 0 && s->H > 0 && s->Dh > 0,
              "%s: bad shape (B %lld, Lq %lld, Lk %lld, H %lld, Dh %lld)", op, (long long)s->B, (long long)s->Lq,
              (long long)s->Lk, (long long)s->H, (long long)s->Dh);
  NCP_REQUIRE(s->B * s->H * s->Lq <= INT32_MAX, "%s: too many query rows (%lld)", op,
              (long long)(s->B * s->H * s->Lq));
  return NCP_CUDA_OK;
}

}  // namespace

// saved_probs may be NULL (inference, as on the CPU): the probabilities then live in scratch, or nowhere when
// the fused kernels take the shape (flash_attention.h).
int attention_forward(float* out, float* saved_probs, const float* q, const float* k, const float* v,
                      const ncp_cuda_attention_shape* s) {
  NCP_TRY(check_shape("attention_forward", s));
  if (!saved_probs && fused_attention_applies(s, false)) return fused_attention_forward(out, nullptr, q, k, v, s);
  const int64_t B = s->B, Lq = s->Lq, Lk = s->Lk, H = s->H, Dh = s->Dh, HD = H * Dh, LL = Lq * Lk;
  if (B == 0 || Lq == 0) return NCP_CUDA_OK;
  if (!saved_probs) NCP_TRY(scratch(1, size_t(B * H * LL) * sizeof(float), reinterpret_cast<void**>(&saved_probs)));
  const float scale = float(1.0 / std::sqrt(double(Dh)));
  for (int64_t b = 0; b < B; ++b)  // scores[h] = scale q[h] k[h]^T
    NCP_TRY(gemm_batched(false, true, Lq, Lk, Dh, scale, q + b * Lq * HD, HD, Dh, k + b * Lk * HD, HD, Dh, 0.f,
                         saved_probs + b * H * LL, Lk, LL, H));
  softmax_rows_kernel<<<unsigned(B * H * Lq), kRowThreads>>>(saved_probs, Lq, Lk, s->causal != 0);
  NCP_TRY(check_launch("attention_forward softmax"));
  for (int64_t b = 0; b < B; ++b)  // out[h] = P[h] v[h]
    NCP_TRY(gemm_batched(false, false, Lq, Dh, Lk, 1.f, saved_probs + b * H * LL, Lk, LL, v + b * Lk * HD, HD, Dh,
                         0.f, out + b * Lq * HD, HD, Dh, H));
  return NCP_CUDA_OK;
}

int attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                       const float* v, const float* saved_probs, const ncp_cuda_attention_shape* s) {
  NCP_TRY(check_shape("attention_backward", s));
  NCP_REQUIRE(saved_probs, "attention_backward: saved_probs [B, H, Lq, Lk] is required");
  const int64_t B = s->B, Lq = s->Lq, Lk = s->Lk, H = s->H, Dh = s->Dh, HD = H * Dh, LL = Lq * Lk;
  if (B == 0 || Lq == 0) return NCP_CUDA_OK;
  const float scale = float(1.0 / std::sqrt(double(Dh)));
  float* ds = nullptr;
  if (dq || dk) NCP_TRY(scratch(0, size_t(H * LL) * sizeof(float), reinterpret_cast<void**>(&ds)));
  for (int64_t b = 0; b < B; ++b) {
    const float* P = saved_probs + b * H * LL;
    const float* g = dout + b * Lq * HD;
    if (dv)  // dv[h] += P[h]^T dout[h]
      NCP_TRY(gemm_batched(true, false, Lk, Dh, Lq, 1.f, P, Lk, LL, g, HD, Dh, 1.f, dv + b * Lk * HD, HD, Dh, H));
    if (!dq && !dk) continue;
    // dP[h] = dout[h] v[h]^T, then dS = P (dP - rowsum(P dP)); scores were scale q k^T.
    NCP_TRY(gemm_batched(false, true, Lq, Lk, Dh, 1.f, g, HD, Dh, v + b * Lk * HD, HD, Dh, 0.f, ds, Lk, LL, H));
    softmax_backward_rows_kernel<<<unsigned(H * Lq), kRowThreads>>>(ds, P, Lk);
    NCP_TRY(check_launch("attention_backward softmax"));
    if (dq)  // dq[h] += scale dS[h] k[h]
      NCP_TRY(gemm_batched(false, false, Lq, Dh, Lk, scale, ds, Lk, LL, k + b * Lk * HD, HD, Dh, 1.f,
                           dq + b * Lq * HD, HD, Dh, H));
    if (dk)  // dk[h] += scale dS[h]^T q[h]
      NCP_TRY(gemm_batched(true, false, Lk, Dh, Lq, scale, ds, Lk, LL, q + b * Lq * HD, HD, Dh, 1.f,
                           dk + b * Lk * HD, HD, Dh, H));
  }
  return NCP_CUDA_OK;
}

// The gradients without saved probabilities (cpu::attention_backward_recompute): the fused kernels when they take
// the shape; otherwise, per batch item, the forward recomputes that item's probabilities into scratch slot 1 and
// the backward above reads them, so the scratch is [H, Lq, Lk] for one item, not B of them. out, when NULL, goes
// to scratch behind them.
int attention_backward_recompute(float* dq, float* dk, float* dv, float* out, const float* dout, const float* q,
                                 const float* k, const float* v, const ncp_cuda_attention_shape* s) {
  NCP_TRY(check_shape("attention_backward_recompute", s));
  if (fused_attention_applies(s, true)) return fused_attention_backward_recompute(dq, dk, dv, out, dout, q, k, v, s);
  const int64_t B = s->B, Lq = s->Lq, Lk = s->Lk, H = s->H, HD = H * s->Dh, LL = Lq * Lk;
  if (B == 0 || Lq == 0) return NCP_CUDA_OK;
  float* probs = nullptr;
  NCP_TRY(scratch(1, size_t(H * LL + (out ? 0 : Lq * HD)) * sizeof(float), reinterpret_cast<void**>(&probs)));
  ncp_cuda_attention_shape item = *s;
  item.B = 1;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t qo = b * Lq * HD, ko = b * Lk * HD;
    NCP_TRY(attention_forward(out ? out + qo : probs + H * LL, probs, q + qo, k + ko, v + ko, &item));
    NCP_TRY(attention_backward(dq ? dq + qo : nullptr, dk ? dk + ko : nullptr, dv ? dv + ko : nullptr, dout + qo,
                               q + qo, k + ko, v + ko, probs, &item));
  }
  return NCP_CUDA_OK;
}

}  // namespace ncp::cuda
