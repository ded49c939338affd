// Multi-head softmax attention, one (batch, head) slice at a time through gemm: heads are column slices of
// the [B, L, H*Dh] tensors, so the leading dimension H*Dh addresses them without copies. Queries go in blocks
// of kRows: enough rows for gemm to reach full speed, few enough that a block of scores (4 MiB at 4096 keys)
// stays in cache for the softmax; with a causal mask, keys past the block are never touched.
// Forward accepts saved_probs == nullptr (inference): the probabilities then live in per-task scratch.
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

constexpr int64_t kRows = 256;

void check_shape(const AttentionShape& s) {
  check(s.B >= 0 && s.Lq >= 0 && s.Lk >= 1 && s.H >= 1 && s.Dh >= 1, "NCP_EINVAL",
        "attention: bad shape B=" + std::to_string(s.B) + " Lq=" + std::to_string(s.Lq) +
            " Lk=" + std::to_string(s.Lk) + " H=" + std::to_string(s.H) + " Dh=" + std::to_string(s.Dh));
}

// Keys visible to query i: all of them, or j <= i under the causal mask.
int64_t visible_keys(const AttentionShape& s, int64_t i) { return s.causal ? std::min(s.Lk, i + 1) : s.Lk; }

// Softmax over the first n entries of row, in place; entries [n, ld) are set to zero. Separate passes so
// each loop vectorises (max, exp, double sum, scale).
template <class T>
void softmax_row(T* row, int64_t n, int64_t ld) {
  const T mx = vec::max(row, n);
  for (int64_t j = 0; j < n; ++j) row[j] = vec::exp(row[j] - mx);
  const T inv = T(1.0 / vec::sum(n, [&](int64_t j) { return double(row[j]); }));
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  std::fill(row + n, row + ld, T(0));
}

// The backward of one block of `rows` queries given its probabilities P [rows, kend] (leading dimension ldp):
// dS = P (dP - rowsum(P dP)) with dP = dO V^T, then dq += scale dS K and dk += scale dS^T Q. Pointers are at
// the block's first query row (q, dout, dq) and the head's first key row (k, v, dk); HD is their row stride.
template <class T>
void block_backward_qk(T* dq, T* dk, std::vector<T>& dS, const T* P, int64_t ldp, const T* dout, const T* q,
                       const T* k, const T* v, int64_t rows, int64_t kend, int64_t HD, int64_t Dh, T scale) {
  gemm<T>(false, true, rows, kend, Dh, T(1), dout, HD, v, HD, T(0), dS.data(), kend);
  for (int64_t i = 0; i < rows; ++i) {
    const T* p = P + i * ldp;
    T* d = dS.data() + i * kend;
    const T tdot = T(vec::sum(kend, [&](int64_t j) { return double(p[j]) * double(d[j]); }));
    for (int64_t j = 0; j < kend; ++j) d[j] = p[j] * (d[j] - tdot);
  }
  if (dq) gemm<T>(false, false, rows, Dh, kend, scale, dS.data(), kend, k, HD, T(1), dq, HD);
  if (dk) gemm<T>(true, false, kend, Dh, rows, scale, dS.data(), kend, q, HD, T(1), dk, HD);
}

}  // namespace

template <class T>
void attention_forward(T* out, T* saved_probs, const T* q, const T* k, const T* v, const AttentionShape& s) {
  check_shape(s);
  const int64_t HD = s.H * s.Dh, blocks = (s.Lq + kRows - 1) / kRows;
  const T scale = T(1.0 / std::sqrt(double(s.Dh)));
  parallel_for(s.B * s.H * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> scratch(saved_probs ? 0 : kRows * s.Lk);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / blocks, b = bh / s.H, h = bh % s.H;
      const int64_t r0 = (t % blocks) * kRows, rows = std::min(kRows, s.Lq - r0);
      const int64_t kend = visible_keys(s, r0 + rows - 1);
      const T* qb = q + (b * s.Lq + r0) * HD + h * s.Dh;
      const T* kb = k + b * s.Lk * HD + h * s.Dh;
      const T* vb = v + b * s.Lk * HD + h * s.Dh;
      T* P = saved_probs ? saved_probs + (bh * s.Lq + r0) * s.Lk : scratch.data();
      gemm<T>(false, true, rows, kend, s.Dh, scale, qb, HD, kb, HD, T(0), P, s.Lk);
      for (int64_t i = 0; i < rows; ++i) softmax_row(P + i * s.Lk, visible_keys(s, r0 + i), s.Lk);
      gemm<T>(false, false, rows, s.Dh, kend, T(1), P, s.Lk, vb, HD, T(0), out + (b * s.Lq + r0) * HD + h * s.Dh,
              HD);
    }
  });
}

// With P = softmax(S), S = scale Q K^T: dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)),
// dQ = scale dS K, dK = scale dS^T Q. dK and dV sum over every query block, so a task owns a whole head.
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* saved_probs, const AttentionShape& s) {
  check_shape(s);
  check(saved_probs != nullptr, "NCP_EINVAL", "attention_backward: saved_probs [B, H, Lq, Lk] is required");
  const int64_t HD = s.H * s.Dh;
  const T scale = T(1.0 / std::sqrt(double(s.Dh)));
  parallel_for(s.B * s.H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> dS((dq || dk) ? kRows * s.Lk : 0);
    for (int64_t bh = t0; bh < t1; ++bh) {
      const int64_t b = bh / s.H, h = bh % s.H;
      const int64_t qoff = b * s.Lq * HD + h * s.Dh, koff = b * s.Lk * HD + h * s.Dh;
      const T* P = saved_probs + bh * s.Lq * s.Lk;
      if (dv) gemm<T>(true, false, s.Lk, s.Dh, s.Lq, T(1), P, s.Lk, dout + qoff, HD, T(1), dv + koff, HD);
      if (!dq && !dk) continue;
      for (int64_t r0 = 0; r0 < s.Lq; r0 += kRows) {
        const int64_t rows = std::min(kRows, s.Lq - r0), kend = visible_keys(s, r0 + rows - 1);
        block_backward_qk(dq ? dq + qoff + r0 * HD : nullptr, dk ? dk + koff : nullptr, dS, P + r0 * s.Lk, s.Lk,
                          dout + qoff + r0 * HD, q + qoff + r0 * HD, k + koff, v + koff, rows, kend, HD, s.Dh, scale);
      }
    }
  });
}

// The same gradients without saved probabilities, flash-style: per (batch, head) task, each block of kRows
// queries recomputes its scores and softmax exactly as the forward does (same GEMM and row kernel), writes its
// output rows when `out` is given, and runs the backward of that block at once. Scratch is two kRows x Lk blocks
// per task instead of the [H, Lq, Lk] probabilities (537 MB per batch row for SD1.5 at 512^2).
template <class T>
void attention_backward_recompute(T* dq, T* dk, T* dv, T* out, const T* dout, const T* q, const T* k, const T* v,
                                  const AttentionShape& s) {
  check_shape(s);
  const int64_t HD = s.H * s.Dh;
  const T scale = T(1.0 / std::sqrt(double(s.Dh)));
  parallel_for(s.B * s.H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> P(kRows * s.Lk), dS(kRows * s.Lk);
    for (int64_t bh = t0; bh < t1; ++bh) {
      const int64_t b = bh / s.H, h = bh % s.H;
      const int64_t qoff = b * s.Lq * HD + h * s.Dh, koff = b * s.Lk * HD + h * s.Dh;
      for (int64_t r0 = 0; r0 < s.Lq; r0 += kRows) {
        const int64_t rows = std::min(kRows, s.Lq - r0), kend = visible_keys(s, r0 + rows - 1);
        const int64_t at = qoff + r0 * HD;
        gemm<T>(false, true, rows, kend, s.Dh, scale, q + at, HD, k + koff, HD, T(0), P.data(), s.Lk);
        for (int64_t i = 0; i < rows; ++i) softmax_row(P.data() + i * s.Lk, visible_keys(s, r0 + i), s.Lk);
        if (out) gemm<T>(false, false, rows, s.Dh, kend, T(1), P.data(), s.Lk, v + koff, HD, T(0), out + at, HD);
        if (dv) gemm<T>(true, false, kend, s.Dh, rows, T(1), P.data(), s.Lk, dout + at, HD, T(1), dv + koff, HD);
        if (dq || dk)
          block_backward_qk(dq ? dq + at : nullptr, dk ? dk + koff : nullptr, dS, P.data(), s.Lk, dout + at, q + at,
                            k + koff, v + koff, rows, kend, HD, s.Dh, scale);
      }
    }
  });
}

template void attention_forward<float>(float*, float*, const float*, const float*, const float*,
                                       const AttentionShape&);
template void attention_forward<double>(double*, double*, const double*, const double*, const double*,
                                        const AttentionShape&);
template void attention_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        const float*, const float*, const AttentionShape&);
template void attention_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, const AttentionShape&);
template void attention_backward_recompute<float>(float*, float*, float*, float*, const float*, const float*,
                                                  const float*, const float*, const AttentionShape&);
template void attention_backward_recompute<double>(double*, double*, double*, double*, const double*, const double*,
                                                   const double*, const double*, const AttentionShape&);

}  // namespace ncp::cpu
