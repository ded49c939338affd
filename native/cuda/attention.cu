// Multi-head softmax attention with the probabilities saved for backward, as on the CPU: per batch item, the
// heads form one strided-batched GEMM (head h of q, k, v, out starts at column h Dh of the [L, H Dh] rows,
// its [Lq, Lk] score matrix at h Lq Lk), and a row kernel does the softmax and its backward.
//
// Without saved probabilities (inference, and training since backward recomputes them) the scores are made for one
// batch item and one block of queries at a time, [H, Qb, Lk] with Qb chosen so the block stays under a budget
// (128 MiB): SDXL at 1024^2 has 10 heads over 4096 tokens, where one item's [H, Lq, Lk] is 671 MB and the whole
// batch's 1.3 GB, and the scratch arenas keep their largest size for the rest of the process.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "cuda/common.cuh"
#include "cuda/entries.h"
#include "cuda/flash_attention.h"

namespace ncp::cuda {
namespace {

constexpr int kRowThreads = 128;

// In place over the [rows, Lk] scores of query rows q0 .. q0 + Lq - 1 (per head): softmax over the keys a query may
// see (key j <= query i when causal, i = q0 + row % Lq); masked entries become 0.
__global__ void softmax_rows_kernel(float* __restrict__ p, int64_t Lq, int64_t q0, int64_t Lk, bool causal) {
  float* row = p + int64_t(blockIdx.x) * Lk;
  const int64_t i = q0 + int64_t(blockIdx.x) % Lq, visible = causal && i + 1 < Lk ? i + 1 : Lk;
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

// Query rows per probability block: as many as keep H * Qb * Lk floats under the budget (at least 1, at most Lq).
// NCP_CUDA_ATTENTION_BLOCK (floats) overrides the budget, so the parity tests can run several blocks on small shapes.
int64_t query_block(int64_t H, int64_t Lq, int64_t Lk) {
  int64_t budget = int64_t(1) << 25;
  if (const char* env = std::getenv("NCP_CUDA_ATTENTION_BLOCK"))
    if (std::atoll(env) > 0) budget = std::atoll(env);
  return std::clamp<int64_t>(budget / (H * Lk), 1, std::max<int64_t>(Lq, 1));
}

// P [H, Qb, Lk] = softmax(scale q k^T) for queries q0 .. q0 + Qb - 1 of one batch item (q, k: that item's rows).
int block_probs(float* P, const float* q, const float* k, int64_t Qb, int64_t q0, const ncp_cuda_attention_shape* s,
                float scale) {
  const int64_t Lk = s->Lk, H = s->H, Dh = s->Dh, HD = H * Dh;
  NCP_TRY(gemm_batched(false, true, Qb, Lk, Dh, scale, q + q0 * HD, HD, Dh, k, HD, Dh, 0.f, P, Lk, Qb * Lk, H));
  NCP_LAUNCH(softmax_rows_kernel, unsigned(H * Qb), kRowThreads, 0)(P, Qb, q0, Lk, s->causal != 0);
  return check_launch("attention softmax");
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
  const float scale = float(1.0 / std::sqrt(double(Dh)));
  if (!saved_probs) {  // block by block of queries, into scratch; nothing is kept
    const int64_t Qb = query_block(H, Lq, Lk);
    float* P = nullptr;
    NCP_TRY(scratch(1, size_t(H * Qb * Lk) * sizeof(float), reinterpret_cast<void**>(&P)));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t q0 = 0; q0 < Lq; q0 += Qb) {
        const int64_t rows = std::min(Qb, Lq - q0);
        NCP_TRY(block_probs(P, q + b * Lq * HD, k + b * Lk * HD, rows, q0, s, scale));
        NCP_TRY(gemm_batched(false, false, rows, Dh, Lk, 1.f, P, Lk, rows * Lk, v + b * Lk * HD, HD, Dh, 0.f,
                             out + (b * Lq + q0) * HD, HD, Dh, H));
      }
    return NCP_CUDA_OK;
  }
  for (int64_t b = 0; b < B; ++b)  // scores[h] = scale q[h] k[h]^T
    NCP_TRY(gemm_batched(false, true, Lq, Lk, Dh, scale, q + b * Lq * HD, HD, Dh, k + b * Lk * HD, HD, Dh, 0.f,
                         saved_probs + b * H * LL, Lk, LL, H));
  NCP_LAUNCH(softmax_rows_kernel, unsigned(B * H * Lq), kRowThreads, 0)(saved_probs, Lq, 0, Lk, s->causal != 0);
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
    NCP_LAUNCH(softmax_backward_rows_kernel, unsigned(H * Lq), kRowThreads, 0)(ds, P, Lk);
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
// the shape; otherwise per batch item and block of queries (query_block), as the CPU does: the block's
// probabilities are recomputed into scratch slot 1 ([H, Qb, Lk]), its output written when `out` is given, and its
// share of the gradients added (dv and dk sum over the blocks; dq is the block's own rows), with dS in slot 0.
int attention_backward_recompute(float* dq, float* dk, float* dv, float* out, const float* dout, const float* q,
                                 const float* k, const float* v, const ncp_cuda_attention_shape* s) {
  NCP_TRY(check_shape("attention_backward_recompute", s));
  if (fused_attention_applies(s, true)) return fused_attention_backward_recompute(dq, dk, dv, out, dout, q, k, v, s);
  const int64_t B = s->B, Lq = s->Lq, Lk = s->Lk, H = s->H, Dh = s->Dh, HD = H * Dh;
  if (B == 0 || Lq == 0) return NCP_CUDA_OK;
  const float scale = float(1.0 / std::sqrt(double(Dh)));
  const int64_t Qb = query_block(H, Lq, Lk);
  float *P = nullptr, *ds = nullptr;
  NCP_TRY(scratch(1, size_t(H * Qb * Lk) * sizeof(float), reinterpret_cast<void**>(&P)));
  if (dq || dk) NCP_TRY(scratch(0, size_t(H * Qb * Lk) * sizeof(float), reinterpret_cast<void**>(&ds)));
  for (int64_t b = 0; b < B; ++b) {
    const float *qb = q + b * Lq * HD, *kb = k + b * Lk * HD, *vb = v + b * Lk * HD;
    for (int64_t q0 = 0; q0 < Lq; q0 += Qb) {
      const int64_t rows = std::min(Qb, Lq - q0), PL = rows * Lk, at = (b * Lq + q0) * HD;
      const float* g = dout + at;
      NCP_TRY(block_probs(P, qb, kb, rows, q0, s, scale));
      if (out)  // out[h] = P[h] v[h]
        NCP_TRY(gemm_batched(false, false, rows, Dh, Lk, 1.f, P, Lk, PL, vb, HD, Dh, 0.f, out + at, HD, Dh, H));
      if (dv)  // dv[h] += P[h]^T dout[h]
        NCP_TRY(gemm_batched(true, false, Lk, Dh, rows, 1.f, P, Lk, PL, g, HD, Dh, 1.f, dv + b * Lk * HD, HD, Dh, H));
      if (!dq && !dk) continue;
      // dP[h] = dout[h] v[h]^T, then dS = P (dP - rowsum(P dP)); scores were scale q k^T.
      NCP_TRY(gemm_batched(false, true, rows, Lk, Dh, 1.f, g, HD, Dh, vb, HD, Dh, 0.f, ds, Lk, PL, H));
      NCP_LAUNCH(softmax_backward_rows_kernel, unsigned(H * rows), kRowThreads, 0)(ds, P, Lk);
      NCP_TRY(check_launch("attention_backward_recompute softmax"));
      if (dq)  // dq[h] += scale dS[h] k[h]
        NCP_TRY(gemm_batched(false, false, rows, Dh, Lk, scale, ds, Lk, PL, kb, HD, Dh, 1.f, dq + at, HD, Dh, H));
      if (dk)  // dk[h] += scale dS[h]^T q[h]
        NCP_TRY(gemm_batched(true, false, Lk, Dh, rows, scale, ds, Lk, PL, qb + q0 * HD, HD, Dh, 1.f,
                             dk + b * Lk * HD, HD, Dh, H));
    }
  }
  return NCP_CUDA_OK;
}

}  // namespace ncp::cuda
