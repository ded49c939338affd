// The fused attention kernels' device code (flash_attention.cu launches them). Kept apart from the launch code
// and free of CUDA runtime calls so that native/tests/test_flash_emulated.cpp can compile it as C++ against a
// small SIMT emulation (threads per block, barriers, warp shuffles, WMMA tiles) and check the tiling, masking and
// online-softmax logic on the CPU. One thread block owns a tile of query rows (forward) or of key rows (backward)
// of one (batch item, head) and keeps every operand tile in shared memory: bf16 copies of the q, k, v (and dout)
// rows it reads, float score and accumulator tiles. The tile products use WMMA 16x16x16 bf16 fragments with
// float accumulation; the warps of a block share out a product's 16x16 output tiles, so one helper (mma_tiles)
// serves every product of both passes and any tile shape that is a multiple of 16.
//
// Shapes: q, out, dq, dout [B, Lq, H*Dh]; k, v, dk, dv [B, Lk, H*Dh] (head h at columns h*Dh), as everywhere in
// the backend. The head dim is zero-padded to dp, a multiple of 16, inside shared memory only.
#pragma once
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <mma.h>
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cuda/flash_mma_kernels.cuh"  // the block's dynamic shared memory (NCP_DYNAMIC_SHARED), load_tile_bf16

namespace ncp::cuda::flash {

namespace wm = nvcuda::wmma;
using bf16 = __nv_bfloat16;

constexpr int kFlashThreads = 256;  // 8 warps
constexpr int kPadBf16 = 8;         // row padding of bf16 tiles (16 bytes): rows start on different banks
constexpr int kPadF32 = 4;          // row padding of float tiles (16 bytes)
constexpr int kMaxHeadDim = 256;

// Query rows (bm), key rows (bn) and the padded head dim (dp) of one block's tiles; all multiples of 16.
struct Tile {
  int bm, bn, dp;
  __host__ __device__ int ld_bf16() const { return dp + kPadBf16; }   // q, k, v, dout tiles [rows, dp]
  __host__ __device__ int ld_score() const { return bn + kPadF32; }   // float [bm, bn]
  __host__ __device__ int ld_prob() const { return bn + kPadBf16; }   // bf16 [bm, bn]
  __host__ __device__ int ld_acc() const { return dp + kPadF32; }     // float [rows, dp]
};

__host__ __device__ inline size_t round128(size_t bytes) { return (bytes + 127) & ~size_t(127); }

// Byte offsets of the forward's shared-memory regions; every region starts on a 128-byte boundary, which WMMA's
// 256-bit pointer alignment needs (tile offsets inside a region are multiples of 32 bytes by the paddings above).
struct ForwardSmem {
  size_t q, k, v, s, p, o, m, l, total;
  __host__ __device__ explicit ForwardSmem(Tile t) {
    size_t at = 0;
    q = at, at += round128(size_t(t.bm) * t.ld_bf16() * 2);
    k = at, at += round128(size_t(t.bn) * t.ld_bf16() * 2);
    v = at, at += round128(size_t(t.bn) * t.ld_bf16() * 2);
    s = at, at += round128(size_t(t.bm) * t.ld_score() * 4);
    p = at, at += round128(size_t(t.bm) * t.ld_prob() * 2);
    o = at, at += round128(size_t(t.bm) * t.ld_acc() * 4);
    m = at, at += round128(size_t(t.bm) * 4);
    l = at, at += round128(size_t(t.bm) * 4);
    total = at;
  }
};

// The backward's: the score and dP tiles are dead once dS is formed, so the dq tile reuses their bytes.
struct BackwardSmem {
  size_t k, v, q, dout, s, dp, dq, p, ds, dk, dv, lse, delta, total;
  __host__ __device__ explicit BackwardSmem(Tile t) {
    size_t at = 0;
    k = at, at += round128(size_t(t.bn) * t.ld_bf16() * 2);
    v = at, at += round128(size_t(t.bn) * t.ld_bf16() * 2);
    q = at, at += round128(size_t(t.bm) * t.ld_bf16() * 2);
    dout = at, at += round128(size_t(t.bm) * t.ld_bf16() * 2);
    const size_t scores = round128(size_t(t.bm) * t.ld_score() * 4), dq_bytes = round128(size_t(t.bm) * t.ld_acc() * 4);
    s = at, dp = at + scores, dq = at;
    at += 2 * scores > dq_bytes ? 2 * scores : dq_bytes;
    p = at, at += round128(size_t(t.bm) * t.ld_prob() * 2);
    ds = at, at += round128(size_t(t.bm) * t.ld_prob() * 2);
    dk = at, at += round128(size_t(t.bn) * t.ld_acc() * 4);
    dv = at, at += round128(size_t(t.bn) * t.ld_acc() * 4);
    lse = at, at += round128(size_t(t.bm) * 4);
    delta = at, at += round128(size_t(t.bm) * 4);
    total = at;
  }
};

// Element (r, c) of a matrix stored in the given WMMA layout with leading dimension ld.
template <class Layout>
__device__ inline int element(int r, int c, int ld) {
  if constexpr (std::is_same_v<Layout, wm::row_major>) return r * ld + c;
  else return r + c * ld;
}

// C[M, N] = A[M, K] B[K, N] (+ C when accumulate), C float row-major in shared memory, A and B bf16 in the given
// layouts. Each warp takes every nwarps-th 16x16 tile of C. M, N, K are multiples of 16.
template <class LayoutA, class LayoutB>
__device__ void mma_tiles(float* C, int ldc, const bf16* A, int lda, const bf16* B, int ldb, int M, int N, int K,
                          bool accumulate) {
  const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5, tiles_n = N / 16, tiles = (M / 16) * tiles_n;
  for (int tile = warp; tile < tiles; tile += nwarps) {
    const int m0 = (tile / tiles_n) * 16, n0 = (tile % tiles_n) * 16;
    wm::fragment<wm::accumulator, 16, 16, 16, float> c;
    if (accumulate) wm::load_matrix_sync(c, C + m0 * ldc + n0, ldc, wm::mem_row_major);
    else wm::fill_fragment(c, 0.f);
    for (int k0 = 0; k0 < K; k0 += 16) {
      wm::fragment<wm::matrix_a, 16, 16, 16, bf16, LayoutA> a;
      wm::fragment<wm::matrix_b, 16, 16, 16, bf16, LayoutB> b;
      wm::load_matrix_sync(a, A + element<LayoutA>(m0, k0, lda), lda);
      wm::load_matrix_sync(b, B + element<LayoutB>(k0, n0, ldb), ldb);
      wm::mma_sync(c, a, b, c);
    }
    wm::store_matrix_sync(C + m0 * ldc + n0, c, ldc, wm::mem_row_major);
  }
}

// dst[r, d] = bf16(src row (row0 + r), column d) for r < rows, d < dp; zero past `valid` rows and past dh columns
// (src: this head's column 0 of row 0, rows `stride` floats apart): the register-level kernels' tile load, on the
// same bits.
__device__ inline void load_rows_bf16(bf16* dst, int ld, const float* src, int64_t stride, int row0, int valid, int rows,
                                      int dh, int dp) {
  static_assert(sizeof(bf16) == sizeof(uint16_t), "a bf16 tile is a tile of 16-bit patterns");
  load_tile_bf16(reinterpret_cast<uint16_t*>(dst), ld, src, stride, row0, valid, rows, dh, dp);
}

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct FlashArgs {
  const float *q, *k, *v, *dout, *lse_in, *delta;
  float *out, *lse, *dq, *dk, *dv;
  int Lq, Lk, H, Dh;
  float scale;
  bool causal;
  Tile tile;
};

// grid (query tiles, B*H). Online softmax over key tiles: per row the running max m and sum l of exp(s - m);
// when m grows, l and the row's output accumulator are rescaled by exp(m_old - m_new).
__global__ void __launch_bounds__(kFlashThreads) flash_forward_kernel(FlashArgs a) {
  NCP_DYNAMIC_SHARED(smem);
  const Tile t = a.tile;
  const ForwardSmem L(t);
  bf16* Qs = reinterpret_cast<bf16*>(smem + L.q);
  bf16* Ks = reinterpret_cast<bf16*>(smem + L.k);
  bf16* Vs = reinterpret_cast<bf16*>(smem + L.v);
  float* S = reinterpret_cast<float*>(smem + L.s);
  bf16* P = reinterpret_cast<bf16*>(smem + L.p);
  float* O = reinterpret_cast<float*>(smem + L.o);
  float* row_max = reinterpret_cast<float*>(smem + L.m);
  float* row_sum = reinterpret_cast<float*>(smem + L.l);
  const int ldh = t.ld_bf16(), lds = t.ld_score(), ldp = t.ld_prob(), ldo = t.ld_acc();
  const int bh = blockIdx.y, b = bh / a.H, h = bh % a.H, q0 = blockIdx.x * t.bm;
  const int64_t HD = int64_t(a.H) * a.Dh;
  const float* qb = a.q + int64_t(b) * a.Lq * HD + int64_t(h) * a.Dh;
  const float* kb = a.k + int64_t(b) * a.Lk * HD + int64_t(h) * a.Dh;
  const float* vb = a.v + int64_t(b) * a.Lk * HD + int64_t(h) * a.Dh;
  const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5, lane = threadIdx.x & 31;

  load_rows_bf16(Qs, ldh, qb, HD, q0, a.Lq, t.bm, a.Dh, t.dp);
  for (int i = threadIdx.x; i < t.bm * ldo; i += blockDim.x) O[i] = 0.f;
  for (int r = threadIdx.x; r < t.bm; r += blockDim.x) row_max[r] = -INFINITY, row_sum[r] = 0.f;
  // Causal: keys past this tile's last query row are masked for all of its rows.
  const int k_end = a.causal ? min(a.Lk, q0 + t.bm) : a.Lk;
  for (int k0 = 0; k0 < k_end; k0 += t.bn) {
    __syncthreads();  // the previous tile's readers of Ks, Vs and P are done
    load_rows_bf16(Ks, ldh, kb, HD, k0, a.Lk, t.bn, a.Dh, t.dp);
    load_rows_bf16(Vs, ldh, vb, HD, k0, a.Lk, t.bn, a.Dh, t.dp);
    __syncthreads();
    mma_tiles<wm::row_major, wm::col_major>(S, lds, Qs, ldh, Ks, ldh, t.bm, t.bn, t.dp, false);  // S = Q K^T
    __syncthreads();
    for (int r = warp; r < t.bm; r += nwarps) {  // a warp per row
      const int i = q0 + r;
      int visible = min(t.bn, a.Lk - k0);  // columns c < visible are keys this row sees
      if (a.causal) visible = min(visible, i - k0 + 1);
      if (i >= a.Lq) visible = 0;
      const float* srow = S + r * lds;
      float mx = -INFINITY;
      for (int c = lane; c < visible; c += 32) mx = fmaxf(mx, srow[c] * a.scale);
      mx = warp_max(mx);
      const float m_old = row_max[r], m_new = fmaxf(m_old, mx);
      // m_new is -inf only while the row has seen no key: nothing to add or rescale. exp(-inf) = 0 starts l.
      const float alpha = m_new == -INFINITY ? 1.f : __expf(m_old - m_new);
      float sum = 0.f;
      for (int c = lane; c < t.bn; c += 32) {
        const float p = c < visible ? __expf(srow[c] * a.scale - m_new) : 0.f;
        P[r * ldp + c] = __float2bfloat16_rn(p);
        sum += p;
      }
      sum = warp_sum(sum);  // also orders every lane's read of row_max[r] before lane 0's write
      if (lane == 0) row_max[r] = m_new, row_sum[r] = row_sum[r] * alpha + sum;
      if (alpha != 1.f)
        for (int d = lane; d < t.dp; d += 32) O[r * ldo + d] *= alpha;
    }
    __syncthreads();
    mma_tiles<wm::row_major, wm::row_major>(O, ldo, P, ldp, Vs, ldh, t.bm, t.dp, t.bn, true);  // O += P V
  }
  __syncthreads();
  float* ob = a.out + int64_t(b) * a.Lq * HD + int64_t(h) * a.Dh;
  for (int idx = threadIdx.x; idx < t.bm * a.Dh; idx += blockDim.x) {
    const int r = idx / a.Dh, d = idx % a.Dh;
    if (q0 + r < a.Lq) ob[int64_t(q0 + r) * HD + d] = O[r * ldo + d] / row_sum[r];
  }
  if (a.lse)
    for (int r = threadIdx.x; r < t.bm && q0 + r < a.Lq; r += blockDim.x)
      a.lse[int64_t(bh) * a.Lq + q0 + r] = row_max[r] + logf(row_sum[r]);
}

// delta[(b H + h) Lq + i] = sum_d dout[b, i, h, d] out[b, i, h, d]: the row term of the softmax backward
// (sum_j P_ij dP_ij, since dP = dout v^T and out = P v). A warp per row.
__global__ void flash_delta_kernel(float* __restrict__ delta, const float* __restrict__ dout,
                                   const float* __restrict__ out, int64_t rows, int Lq, int H, int Dh) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // whole warps leave together: rows are warp-aligned
  const int64_t bh = row / Lq, i = row % Lq, b = bh / H, h = bh % H;
  const int64_t offset = (b * Lq + i) * H * Dh + h * Dh;
  float sum = 0.f;
  // dout rounded as the dP product reads it, so that delta and sum_j P dP cancel where they should.
  for (int d = lane; d < Dh; d += 32) sum += __bfloat162float(__float2bfloat16_rn(dout[offset + d])) * out[offset + d];
  sum = warp_sum(sum);
  if (lane == 0) delta[row] = sum;
}

// grid (key tiles, B*H). For its key tile the block walks the query tiles: S = Q K^T, P = exp(scale S - lse),
// dP = dout V^T, dS = P (dP - delta); dV += P^T dout and dK += dS^T Q stay in shared memory until the end,
// dQ = dS K goes to global memory with atomicAdd (other key tiles add to the same rows).
__global__ void __launch_bounds__(kFlashThreads) flash_backward_kernel(FlashArgs a) {
  NCP_DYNAMIC_SHARED(smem);
  const Tile t = a.tile;
  const BackwardSmem L(t);
  bf16* Ks = reinterpret_cast<bf16*>(smem + L.k);
  bf16* Vs = reinterpret_cast<bf16*>(smem + L.v);
  bf16* Qs = reinterpret_cast<bf16*>(smem + L.q);
  bf16* dOs = reinterpret_cast<bf16*>(smem + L.dout);
  float* S = reinterpret_cast<float*>(smem + L.s);
  float* dP = reinterpret_cast<float*>(smem + L.dp);
  float* dQ = reinterpret_cast<float*>(smem + L.dq);  // aliases S and dP
  bf16* P = reinterpret_cast<bf16*>(smem + L.p);
  bf16* dS = reinterpret_cast<bf16*>(smem + L.ds);
  float* dK = reinterpret_cast<float*>(smem + L.dk);
  float* dV = reinterpret_cast<float*>(smem + L.dv);
  float* lse = reinterpret_cast<float*>(smem + L.lse);
  float* delta = reinterpret_cast<float*>(smem + L.delta);
  const int ldh = t.ld_bf16(), lds = t.ld_score(), ldp = t.ld_prob(), lda = t.ld_acc();
  const int bh = blockIdx.y, b = bh / a.H, h = bh % a.H, k0 = blockIdx.x * t.bn;
  const int64_t HD = int64_t(a.H) * a.Dh, qoff = int64_t(b) * a.Lq * HD + int64_t(h) * a.Dh,
                koff = int64_t(b) * a.Lk * HD + int64_t(h) * a.Dh;

  load_rows_bf16(Ks, ldh, a.k + koff, HD, k0, a.Lk, t.bn, a.Dh, t.dp);
  load_rows_bf16(Vs, ldh, a.v + koff, HD, k0, a.Lk, t.bn, a.Dh, t.dp);
  for (int i = threadIdx.x; i < t.bn * lda; i += blockDim.x) dK[i] = 0.f, dV[i] = 0.f;
  // Causal: query rows before k0 see none of these keys.
  const int q_start = a.causal ? (k0 / t.bm) * t.bm : 0;
  for (int q0 = q_start; q0 < a.Lq; q0 += t.bm) {
    __syncthreads();  // the previous query tile's readers (and the dq writer) are done
    load_rows_bf16(Qs, ldh, a.q + qoff, HD, q0, a.Lq, t.bm, a.Dh, t.dp);
    load_rows_bf16(dOs, ldh, a.dout + qoff, HD, q0, a.Lq, t.bm, a.Dh, t.dp);
    for (int r = threadIdx.x; r < t.bm; r += blockDim.x) {
      const bool row = q0 + r < a.Lq;
      lse[r] = row ? a.lse_in[int64_t(bh) * a.Lq + q0 + r] : 0.f;
      delta[r] = row ? a.delta[int64_t(bh) * a.Lq + q0 + r] : 0.f;
    }
    __syncthreads();
    mma_tiles<wm::row_major, wm::col_major>(S, lds, Qs, ldh, Ks, ldh, t.bm, t.bn, t.dp, false);    // Q K^T
    mma_tiles<wm::row_major, wm::col_major>(dP, lds, dOs, ldh, Vs, ldh, t.bm, t.bn, t.dp, false);  // dout V^T
    __syncthreads();
    for (int idx = threadIdx.x; idx < t.bm * t.bn; idx += blockDim.x) {
      const int r = idx / t.bn, c = idx % t.bn, i = q0 + r, j = k0 + c;
      const bool visible = i < a.Lq && j < a.Lk && (!a.causal || j <= i);
      const float p = visible ? __expf(S[r * lds + c] * a.scale - lse[r]) : 0.f;
      P[r * ldp + c] = __float2bfloat16_rn(p);
      dS[r * ldp + c] = __float2bfloat16_rn(p * (dP[r * lds + c] - delta[r]));
    }
    __syncthreads();
    if (a.dv) mma_tiles<wm::col_major, wm::row_major>(dV, lda, P, ldp, dOs, ldh, t.bn, t.dp, t.bm, true);
    if (a.dk) mma_tiles<wm::col_major, wm::row_major>(dK, lda, dS, ldp, Qs, ldh, t.bn, t.dp, t.bm, true);
    if (a.dq) {
      mma_tiles<wm::row_major, wm::row_major>(dQ, lda, dS, ldp, Ks, ldh, t.bm, t.dp, t.bn, false);  // dS K
      __syncthreads();
      float* dqb = a.dq + qoff;
      for (int idx = threadIdx.x; idx < t.bm * a.Dh; idx += blockDim.x) {
        const int r = idx / a.Dh, d = idx % a.Dh;
        if (q0 + r < a.Lq) atomicAdd(dqb + int64_t(q0 + r) * HD + d, a.scale * dQ[r * lda + d]);
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < t.bn * a.Dh; idx += blockDim.x) {
    const int c = idx / a.Dh, d = idx % a.Dh;
    if (k0 + c >= a.Lk) continue;
    const int64_t at = koff + int64_t(k0 + c) * HD + d;
    if (a.dk) a.dk[at] += a.scale * dK[c * lda + d];
    if (a.dv) a.dv[at] += dV[c * lda + d];
  }
}

}  // namespace ncp::cuda::flash
