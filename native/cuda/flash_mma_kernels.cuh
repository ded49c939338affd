// The register-level fused attention kernels (flash_attention.cu launches them), in FlashAttention-2's design.
// Forward: each warp owns 16 query rows and keeps their scores, probabilities and output accumulators in registers
// across the key tiles, so the only shared-memory traffic is the q, k and v tiles themselves (bf16), read into
// tensor-core fragments by ldmatrix. The products are mma.sync m16n8k16 (bf16 operands, float accumulation); the
// score fragment of Q K^T is laid out exactly as the probability operand of P V needs, so P never leaves the
// registers. The row statistics of the online softmax (max and sum) are per lane, reduced over the 4 lanes of a
// quad that share a row. Backward: one block per key tile walks the query tiles with the transposed scores in
// registers (see flash_mma_backward_kernel).
//
// Why beside the WMMA kernels (flash_attention_kernels.cuh): WMMA's fragment layout is opaque, so those kernels
// stage every score and output tile through shared memory (float), which bounds them by shared-memory bandwidth
// and barriers. These are the layout-aware versions; the WMMA kernels stay selectable
// (NCP_CUDA_ATTENTION=fused-wmma) until both have been measured on a GPU.
//
// Like flash_attention_kernels.cuh this compiles as C++ for the CPU emulators: mma.sync and ldmatrix are then
// emulated over ncp_emu::warp_gather (the other lanes' registers or row addresses), with the PTX fragment layouts,
// so a wrong fragment index shows up there as a wrong result, not only on a GPU.
//
// Shapes as in flash_attention_kernels.cuh: q, out [B, Lq, H*Dh]; k, v [B, Lk, H*Dh]; lse [B, H, Lq]. The head dim
// is zero-padded to DP (a template parameter: the accumulators are register arrays) inside shared memory only.
#pragma once
#ifdef __CUDACC__
#include <cuda_bf16.h>
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

// The block's dynamic shared memory; the CPU emulations define their own.
#ifndef NCP_DYNAMIC_SHARED
#define NCP_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif
// Loops over the register arrays must unroll on the GPU, or the arrays go to local memory.
#if defined(__CUDACC__)
#define NCP_UNROLL _Pragma("unroll")
#else
#define NCP_UNROLL
#endif

namespace ncp::cuda::flash {

constexpr int kMmaThreads = 128;    // 4 warps
constexpr int kMmaBlockRows = 64;   // query rows per block, 16 per warp
constexpr int kMmaBlockKeys = 64;   // key rows per shared-memory tile
constexpr int kMmaPad = 8;          // bf16 elements of row padding: ldmatrix's 8 row reads hit different banks

// Byte offsets of the q, k and v tiles in shared memory (bf16, row-major, rows DP + kMmaPad apart): q_rows query
// rows, then `stages` buffers of kMmaBlockKeys key rows for k, then as many for v (stage s at k + s * stage).
struct MmaSmem {
  size_t q, k, v, stage, total;
  int ld;
  __host__ __device__ explicit MmaSmem(int dp, int q_rows = kMmaBlockRows, int stages = 1) : ld(dp + kMmaPad) {
    const size_t rows_bytes = size_t(ld) * 2;
    stage = size_t(kMmaBlockKeys) * rows_bytes;
    q = 0;
    k = q + size_t(q_rows) * rows_bytes;
    v = k + size_t(stages) * stage;
    total = v + size_t(stages) * stage;
  }
};
// The forward's layout for kWarps warps (16 query rows each) and kStages k/v buffers (2: loads of the next tile
// overlap the products of this one).
template <int kWarps, int kStages>
struct MmaForwardSmem : MmaSmem {
  __host__ __device__ explicit MmaForwardSmem(int dp) : MmaSmem(dp, 16 * kWarps, kStages) {}
};

__device__ inline uint16_t bf16_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
__device__ inline uint32_t pack_bf16x2(float lo, float hi) {
  return uint32_t(bf16_bits(lo)) | (uint32_t(bf16_bits(hi)) << 16);
}

// Two bf16 values at a 4-byte aligned address (as one store on the GPU; without type punning on the CPU).
__device__ inline void store_u32(uint16_t* p, uint32_t v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint32_t*>(p) = v;
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

// ---- the two warp-wide instructions, on the GPU and emulated

// d += a b for one 16x8 tile: a the 16x16 bf16 A fragment, b the 16x8 B fragment (PTX ISA, "Matrix fragments for
// mma.m16n8k16"): lane = 4 g + t; a0 (row g, cols 2t, 2t+1), a1 (row g+8), a2 (row g, cols 2t+8, 2t+9), a3 (row
// g+8, cols 2t+8, 2t+9); b0 (rows 2t, 2t+1, col g), b1 (rows 2t+8, 2t+9); d0, d1 (row g, cols 2t, 2t+1), d2, d3
// (row g+8). Lower 16 bits hold the lower column (A) or row (B).
__device__ inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif !defined(__CUDACC__)
  struct Regs {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}}, all[32];
  ncp_emu::warp_gather(&mine, all, sizeof mine);
  const auto half = [](uint32_t reg, int high) { return ncp::bf16_to_f32(uint16_t(high ? reg >> 16 : reg & 0xffffu)); };
  const auto A = [&](int r, int k) { return half(all[(r & 7) * 4 + (k & 7) / 2].a[(r >> 3) + 2 * (k >> 3)], k & 1); };
  const auto B = [&](int k, int n) { return half(all[n * 4 + (k & 7) / 2].b[k >> 3], k & 1); };
  const int lane = int(threadIdx.x) & 31, g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int r = g + (i >> 1) * 8, n = 2 * t + (i & 1);
    float s = d[i];
    for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, n);
    d[i] = s;
  }
#endif
}

// Four 8x8 bf16 matrices from shared memory: lanes 8j .. 8j+7 give the addresses of matrix j's rows (16 bytes each,
// 16-byte aligned); register j gets matrix j's (row g, cols 2t, 2t+1), or with transpose its (rows 2t, 2t+1, col g).
// The "memory" clobber keeps the compiler from moving shared-memory stores across the read it cannot see.
template <bool kTranspose>
__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row) {
#if defined(__CUDA_ARCH__)
  const unsigned address = unsigned(__cvta_generic_to_shared(row));
  if constexpr (kTranspose)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
#elif !defined(__CUDACC__)
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) ncp_emu::fatal("ldmatrix: a row address that is not 16-byte aligned");
  const uint16_t* rows[32];
  ncp_emu::warp_gather(&row, rows, sizeof row);
  const int lane = int(threadIdx.x) & 31, g = lane >> 2, t = lane & 3;
  for (int j = 0; j < 4; ++j) {
    const uint16_t* const* m = rows + 8 * j;
    r[j] = kTranspose ? uint32_t(m[2 * t][g]) | uint32_t(m[2 * t + 1][g]) << 16
                      : uint32_t(m[g][2 * t]) | uint32_t(m[g][2 * t + 1]) << 16;
  }
#endif
}

// dst[r, d] = bf16 bits of (src row (row0 + r), column d) for r < rows, d < dp; zero past `valid` rows and past dh
// columns. src points at this head's column 0 of row 0; rows are `stride` floats apart. Four columns per thread
// (one 16-byte load, one 8-byte store) when dh and the row stride are multiples of 4, as in every SD attention:
// src is then 16-byte aligned (device allocations are, and head h starts h*dh floats in), and a group of four is
// all inside dh or all past it.
__device__ inline void load_tile_bf16(uint16_t* dst, int ld, const float* src, int64_t stride, int row0, int valid,
                                      int rows, int dh, int dp) {
  if (dh % 4 == 0 && stride % 4 == 0) {
    const int groups = dp / 4;
    for (int idx = threadIdx.x; idx < rows * groups; idx += blockDim.x) {
      const int r = idx / groups, d = (idx % groups) * 4;
      float4 x = {0.f, 0.f, 0.f, 0.f};
      if (row0 + r < valid && d < dh) x = *reinterpret_cast<const float4*>(src + int64_t(row0 + r) * stride + d);
      // 8-byte aligned: ld and d are multiples of 4
#if defined(__CUDA_ARCH__)
      *reinterpret_cast<uint2*>(dst + r * ld + d) = make_uint2(pack_bf16x2(x.x, x.y), pack_bf16x2(x.z, x.w));
#else
      store_u32(dst + r * ld + d, pack_bf16x2(x.x, x.y));
      store_u32(dst + r * ld + d + 2, pack_bf16x2(x.z, x.w));
#endif
    }
    return;
  }
  for (int idx = threadIdx.x; idx < rows * dp; idx += blockDim.x) {
    const int r = idx / dp, d = idx % dp;
    dst[r * ld + d] = bf16_bits(row0 + r < valid && d < dh ? src[int64_t(row0 + r) * stride + d] : 0.f);
  }
}

// The same from a bf16 source (bit patterns, as the launch code's one conversion of q, k, v and dout writes them):
// eight columns per thread through one 16-byte load and store when dh and the row stride are multiples of 8 (src
// is then 16-byte aligned: the conversion's scratch is, and head h starts h*dh values in).
__device__ inline void load_tile_bf16(uint16_t* dst, int ld, const uint16_t* src, int64_t stride, int row0, int valid,
                                      int rows, int dh, int dp) {
  if (dh % 8 == 0 && stride % 8 == 0) {
    const int groups = dp / 8;
    for (int idx = threadIdx.x; idx < rows * groups; idx += blockDim.x) {
      const int r = idx / groups, d = (idx % groups) * 8;
      uint32_t x[4] = {0u, 0u, 0u, 0u};
#if defined(__CUDA_ARCH__)
      if (row0 + r < valid && d < dh) {
        const uint4 v = *reinterpret_cast<const uint4*>(src + int64_t(row0 + r) * stride + d);
        x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
      }
      *reinterpret_cast<uint4*>(dst + r * ld + d) = make_uint4(x[0], x[1], x[2], x[3]);  // ld, d: multiples of 8
#else
      if (row0 + r < valid && d < dh) std::memcpy(x, src + int64_t(row0 + r) * stride + d, sizeof x);
      std::memcpy(dst + r * ld + d, x, sizeof x);
#endif
    }
    return;
  }
  for (int idx = threadIdx.x; idx < rows * dp; idx += blockDim.x) {
    const int r = idx / dp, d = idx % dp;
    dst[r * ld + d] = row0 + r < valid && d < dh ? src[int64_t(row0 + r) * stride + d] : uint16_t(0);
  }
}

// ---- asynchronous copies (sm_80+): global -> shared without passing through registers, so a block can load
// the next tile while its warps multiply the current one. Emulated on the CPU by queueing each thread's copies
// and making them at its wait, so code that reads a tile before waiting for it reads stale data there too.

// 16 bytes from src to dst (both 16-byte aligned), or 16 zero bytes when !valid (src is then not read).
__device__ inline void cp_async_16(uint16_t* dst, const uint16_t* src, bool valid) {
#if defined(__CUDA_ARCH__)
  const unsigned address = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
#elif !defined(__CUDACC__)
  ncp_emu::cp_async(dst, src, valid ? 16 : 0, 16);
#endif
}
// Closes the calling thread's group of copies issued since the last commit.
__device__ inline void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ncp_emu::cp_async_commit();
#endif
}
// Waits until at most kPending of the calling thread's committed groups (the newest) are still in flight. Other
// threads' copies are visible after a barrier that every thread reaches after its own wait.
template <int kPending>
__device__ inline void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#elif !defined(__CUDACC__)
  ncp_emu::cp_async_wait(kPending);
#endif
}

// load_tile_bf16 (bf16 source) through cp.async: zero past `valid` rows and past dh columns. Needs dh and the row
// stride to be multiples of 8 (16-byte rows segments, all inside dh or all past it); the launch code checks.
__device__ inline void load_tile_async(uint16_t* dst, int ld, const uint16_t* src, int64_t stride, int row0,
                                       int valid, int rows, int dh, int dp) {
  const int groups = dp / 8;
  for (int idx = threadIdx.x; idx < rows * groups; idx += blockDim.x) {
    const int r = idx / groups, d = (idx % groups) * 8;
    const bool inside = row0 + r < valid && d < dh;
    cp_async_16(dst + r * ld + d, inside ? src + int64_t(row0 + r) * stride + d : src, inside);
  }
}

__device__ inline float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

struct MmaForwardArgs {
  const uint16_t *q, *k, *v;  // bf16 bit patterns (flash_attention.cu converts the float tensors once per op)
  float *out, *lse;
  int Lq, Lk, H, Dh;
  float scale;  // of the scores, 1/sqrt(Dh)
  bool causal;
};

// grid (query tiles of 16 kWarps rows, B*H), 32 kWarps threads, MmaForwardSmem<kWarps, kAsync ? 2 : 1>(DP).total
// bytes of dynamic shared memory. The online softmax runs in base 2 (scores times scale * log2 e, exp2): one
// multiply fewer per score.
// kAsync: k and v tiles come in by cp.async into two buffers, tile i+1's copies issued before tile i's products,
// so they overlap (one barrier per tile); needs Dh and H*Dh to be multiples of 8 (load_tile_async). Without it,
// each tile is loaded through registers between two barriers, and the overlap comes only from other blocks on the
// SM. kWarps 8 (128 query rows) halves the k and v tile loads per query row against 4, for twice the registers
// per block. Which is faster is for a GPU to say (ncp_bench attention, the fused-async modes).
template <int DP, int kWarps = 4, bool kAsync = false>
__global__ void __launch_bounds__(32 * kWarps) flash_mma_forward_kernel(MmaForwardArgs a) {
  static_assert(DP % 16 == 0 && DP <= 256, "the padded head dim is a multiple of 16, at most 256");
  constexpr int kScoreTiles = kMmaBlockKeys / 8, kOutTiles = DP / 8, kRows = 16 * kWarps;
  NCP_DYNAMIC_SHARED(smem);
  const MmaForwardSmem<kWarps, kAsync ? 2 : 1> L(DP);
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem + L.q);
  const int ld = L.ld;
  const int bh = blockIdx.y, b = bh / a.H, h = bh % a.H, q0 = blockIdx.x * kRows;
  const int64_t HD = int64_t(a.H) * a.Dh;
  const uint16_t* qb = a.q + int64_t(b) * a.Lq * HD + int64_t(h) * a.Dh;
  const uint16_t* kb = a.k + int64_t(b) * a.Lk * HD + int64_t(h) * a.Dh;
  const uint16_t* vb = a.v + int64_t(b) * a.Lk * HD + int64_t(h) * a.Dh;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16;
  const int row[2] = {q0 + r0 + g, q0 + r0 + g + 8};  // the query rows of this lane's accumulator halves
  const float scale_log2 = a.scale * 1.4426950408889634f;
  // ldmatrix row addresses: lane's matrix j = lane / 8 and its row lane % 8 in it (see the uses below).
  const int mj = lane >> 3, mr = lane & 7;

  const int k_end = a.causal ? min(a.Lk, q0 + kRows) : a.Lk;  // causal: later keys are masked for all rows
  const int n_tiles = (k_end + kMmaBlockKeys - 1) / kMmaBlockKeys;
  // Stage `st`'s k and v buffers, and the copies of key tile `i` into them.
  const auto k_tile = [&](int st) { return reinterpret_cast<uint16_t*>(smem + L.k + size_t(st) * L.stage); };
  const auto v_tile = [&](int st) { return reinterpret_cast<uint16_t*>(smem + L.v + size_t(st) * L.stage); };
  const auto issue_tile = [&](int i) {
    load_tile_async(k_tile(i & 1), ld, kb, HD, i * kMmaBlockKeys, a.Lk, kMmaBlockKeys, a.Dh, DP);
    load_tile_async(v_tile(i & 1), ld, vb, HD, i * kMmaBlockKeys, a.Lk, kMmaBlockKeys, a.Dh, DP);
    cp_async_commit();
  };
  if constexpr (kAsync) {
    load_tile_async(Qs, ld, qb, HD, q0, a.Lq, kRows, a.Dh, DP);
    if (n_tiles > 0) issue_tile(0);  // one group with q
    else cp_async_commit();
  } else {
    load_tile_bf16(Qs, ld, qb, HD, q0, a.Lq, kRows, a.Dh, DP);
  }
  float o[kOutTiles][4];
  NCP_UNROLL
  for (int nt = 0; nt < kOutTiles; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // running max (base 2) and this lane's partial sum
  for (int it = 0; it < n_tiles; ++it) {
    const int k0 = it * kMmaBlockKeys;
    const uint16_t* Ks = k_tile(kAsync ? it & 1 : 0);
    const uint16_t* Vs = v_tile(kAsync ? it & 1 : 0);
    if constexpr (kAsync) {
      cp_async_wait<0>();  // this thread's copies of tile it (the only group in flight)
      __syncthreads();     // everyone's copies have landed, and every warp is done with tile it - 1's buffers,
      if (it + 1 < n_tiles) issue_tile(it + 1);  // which tile it + 1 now overwrites while tile it is multiplied
    } else {
      __syncthreads();  // every warp is done with the previous k and v tiles
      load_tile_bf16(k_tile(0), ld, kb, HD, k0, a.Lk, kMmaBlockKeys, a.Dh, DP);
      load_tile_bf16(v_tile(0), ld, vb, HD, k0, a.Lk, kMmaBlockKeys, a.Dh, DP);
      __syncthreads();
    }

    // S = Q K^T for this warp's 16 rows and the tile's 64 keys: 8 n-tiles of 8 keys.
    float s[kScoreTiles][4];
    NCP_UNROLL
    for (int nt = 0; nt < kScoreTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    NCP_UNROLL
    for (int ks = 0; ks < DP / 16; ++ks) {
      uint32_t qa[4];  // matrices: rows 0-7 / 8-15 (j odd) by columns 0-7 / 8-15 (j >= 2) of the 16x16 q block
      ldmatrix_x4<false>(qa, Qs + (r0 + mr + (mj & 1) * 8) * ld + ks * 16 + (mj >> 1) * 8);
      NCP_UNROLL
      for (int nt = 0; nt < kScoreTiles; nt += 2) {
        uint32_t kf[4];  // matrices: keys of n-tile nt (j < 2) or nt+1, columns 0-7 (j even) or 8-15
        ldmatrix_x4<false>(kf, Ks + ((nt + (mj >> 1)) * 8 + mr) * ld + ks * 16 + (mj & 1) * 8);
        mma_16816(s[nt], qa, kf[0], kf[1]);
        mma_16816(s[nt + 1], qa, kf[2], kf[3]);
      }
    }

    // Online softmax: mask, the rows' new maxima, rescale what came before, exponentiate.
    float mx[2] = {-INFINITY, -INFINITY};
    NCP_UNROLL
    for (int nt = 0; nt < kScoreTiles; ++nt)
      NCP_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int j = k0 + nt * 8 + 2 * t + (i & 1);
        const bool visible = j < a.Lk && (!a.causal || j <= row[i >> 1]);
        s[nt][i] = visible ? s[nt][i] * scale_log2 : -INFINITY;
        mx[i >> 1] = fmaxf(mx[i >> 1], s[nt][i]);
      }
    float base[2], alpha[2];
    NCP_UNROLL
    for (int hh = 0; hh < 2; ++hh) {
      const float m_new = fmaxf(m[hh], quad_max(mx[hh]));
      base[hh] = m_new == -INFINITY ? 0.f : m_new;  // a row that has seen no key yet: every exp2 below is 0
      alpha[hh] = exp2f(m[hh] - base[hh]);          // 0 on the first visible tile (m = -inf)
      m[hh] = m_new;
      l[hh] *= alpha[hh];
    }
    NCP_UNROLL
    for (int nt = 0; nt < kScoreTiles; ++nt)
      NCP_UNROLL
      for (int i = 0; i < 4; ++i) {
        const float p = exp2f(s[nt][i] - base[i >> 1]);
        s[nt][i] = p;
        l[i >> 1] += p;
      }
    NCP_UNROLL
    for (int nt = 0; nt < kOutTiles; ++nt)
      o[nt][0] *= alpha[0], o[nt][1] *= alpha[0], o[nt][2] *= alpha[1], o[nt][3] *= alpha[1];

    // O += P V: n-tiles 2kk and 2kk+1 of the scores are k-step kk's A fragment; V's B fragments are ldmatrix
    // transposes of its row-major tile (rows: keys, columns: head dim).
    NCP_UNROLL
    for (int kk = 0; kk < kMmaBlockKeys / 16; ++kk) {
      const uint32_t pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      NCP_UNROLL
      for (int nt = 0; nt < kOutTiles; nt += 2) {
        uint32_t vf[4];  // matrices: keys 0-7 (j even) or 8-15 of the k-step, by head-dim n-tile nt (j < 2) or nt+1
        ldmatrix_x4<true>(vf, Vs + (kk * 16 + (mj & 1) * 8 + mr) * ld + (nt + (mj >> 1)) * 8);
        mma_16816(o[nt], pa, vf[0], vf[1]);
        mma_16816(o[nt + 1], pa, vf[2], vf[3]);  // DP is a multiple of 16: the n-tiles come in pairs
      }
    }
  }

  float* ob = a.out + int64_t(b) * a.Lq * HD + int64_t(h) * a.Dh;
  NCP_UNROLL
  for (int hh = 0; hh < 2; ++hh) {
    l[hh] = quad_sum(l[hh]);
    if (row[hh] >= a.Lq) continue;
    const float inv = l[hh] > 0.f ? 1.f / l[hh] : 0.f;
    NCP_UNROLL
    for (int nt = 0; nt < kOutTiles; ++nt)
      NCP_UNROLL
      for (int c = 0; c < 2; ++c) {
        const int d = nt * 8 + 2 * t + c;
        if (d < a.Dh) ob[int64_t(row[hh]) * HD + d] = o[nt][2 * hh + c] * inv;
      }
    if (a.lse && t == 0)  // natural-log log-sum-exp of the scaled scores: ln(2^m l) = (m + log2 l) ln 2
      a.lse[int64_t(bh) * a.Lq + row[hh]] = (m[hh] + log2f(l[hh])) * 0.6931471805599453f;
  }
}

// ---- backward

// Byte offsets of the backward's shared memory: k, v (the block's key tile, loaded once), q and dout (one query tile
// at a time, in each of `stages` buffers), dS^T (bf16 [keys, queries]: the one operand that must change hands
// between warps), lse and delta (per stage). Stage s of q is at q + s * tile, and likewise for the others.
struct MmaBackwardSmem {
  size_t k, v, q, dout, ds, lse, delta, tile, rows, total;
  int ld, ld_ds;
  __host__ __device__ explicit MmaBackwardSmem(int dp, int stages = 1)
      : ld(dp + kMmaPad), ld_ds(kMmaBlockRows + kMmaPad) {
    tile = size_t(ld) * 2 * kMmaBlockKeys;  // kMmaBlockKeys == kMmaBlockRows
    rows = size_t(kMmaBlockRows) * 4;       // one float per query row
    k = 0, v = k + tile, q = v + tile, dout = q + size_t(stages) * tile, ds = dout + size_t(stages) * tile;
    lse = ds + size_t(kMmaBlockKeys) * ld_ds * 2;
    delta = lse + size_t(stages) * rows;
    total = delta + size_t(stages) * rows;
  }
};
// The double-buffered backward's layout (q, dout, lse and delta in two stages).
struct MmaBackwardAsyncSmem : MmaBackwardSmem {
  __host__ __device__ explicit MmaBackwardAsyncSmem(int dp) : MmaBackwardSmem(dp, 2) {}
};
// The backward keeps two score-sized and three head-dim-sized accumulators per lane; past 128 they would spill.
constexpr int kMmaBackwardMaxHeadDim = 128;

struct MmaBackwardArgs {
  const uint16_t *q, *k, *v, *dout;  // bf16 bit patterns, as the forward's
  const float *lse, *delta;          // [B, H, Lq]: the forward's (natural log) and flash_delta_kernel's
  float *dq, *dk, *dv;                           // += the gradients; any may be NULL
  int Lq, Lk, H, Dh;
  float scale;
  bool causal;
};

// grid (key tiles of kMmaBlockKeys, B*H), kMmaThreads threads, MmaBackwardSmem(DP).total (kAsync:
// MmaBackwardAsyncSmem) bytes of shared memory.
// Each warp owns 16 of the tile's keys and works on transposed scores: S^T = K Q^T and dP^T = V dout^T, so that
// P^T and dS^T are A fragments of dV += P^T dout and dK += dS^T Q without leaving the registers. dQ = dS K needs
// dS by query rows, which other warps hold: dS^T goes through shared memory, and each warp then takes 16 query
// rows of dQ and adds them to global memory atomically (other key tiles add to the same rows).
// kAsync: q and dout tiles come in by cp.async into two buffers, tile j+1's copies issued after the barrier that
// opens tile j (the forward's scheme; lse and delta, loaded through registers, get two buffers too, since a warp
// writes tile j+1's before that barrier while others may still read tile j's). Same arithmetic, same order.
template <int DP, bool kAsync = false>
__global__ void __launch_bounds__(kMmaThreads) flash_mma_backward_kernel(MmaBackwardArgs a) {
  static_assert(DP % 16 == 0 && DP <= kMmaBackwardMaxHeadDim, "padded head dim: a multiple of 16, at most 128");
  static_assert(kMmaBlockKeys == kMmaBlockRows, "the tiles share one leading dimension and size");
  constexpr int kScoreTiles = kMmaBlockRows / 8, kOutTiles = DP / 8;
  NCP_DYNAMIC_SHARED(smem);
  const MmaBackwardSmem L(DP, kAsync ? 2 : 1);
  uint16_t* Ks = reinterpret_cast<uint16_t*>(smem + L.k);
  uint16_t* Vs = reinterpret_cast<uint16_t*>(smem + L.v);
  uint16_t* dSt = reinterpret_cast<uint16_t*>(smem + L.ds);
  const int ld = L.ld, ld_ds = L.ld_ds;
  const int bh = blockIdx.y, b = bh / a.H, h = bh % a.H, k0 = blockIdx.x * kMmaBlockKeys;
  const int64_t HD = int64_t(a.H) * a.Dh, qoff = int64_t(b) * a.Lq * HD + int64_t(h) * a.Dh,
                koff = int64_t(b) * a.Lk * HD + int64_t(h) * a.Dh;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, r0 = (threadIdx.x >> 5) * 16;
  const int mj = lane >> 3, mr = lane & 7;
  const int key[2] = {k0 + r0 + g, k0 + r0 + g + 8};  // the key rows of this lane's accumulator halves
  const float scale_log2 = a.scale * 1.4426950408889634f, log2e = 1.4426950408889634f;

  // Stage st's buffers, and tile q0's copies of q and dout into them (kAsync).
  const auto q_tile = [&](int st) { return reinterpret_cast<uint16_t*>(smem + L.q + size_t(st) * L.tile); };
  const auto dout_tile = [&](int st) { return reinterpret_cast<uint16_t*>(smem + L.dout + size_t(st) * L.tile); };
  const auto lse_rows = [&](int st) { return reinterpret_cast<float*>(smem + L.lse + size_t(st) * L.rows); };
  const auto delta_rows = [&](int st) { return reinterpret_cast<float*>(smem + L.delta + size_t(st) * L.rows); };
  const auto issue_tile = [&](int q0, int st) {
    load_tile_async(q_tile(st), ld, a.q + qoff, HD, q0, a.Lq, kMmaBlockRows, a.Dh, DP);
    load_tile_async(dout_tile(st), ld, a.dout + qoff, HD, q0, a.Lq, kMmaBlockRows, a.Dh, DP);
    cp_async_commit();
  };
  // Causal: query rows before k0 see none of these keys.
  const int q_start = a.causal ? (k0 / kMmaBlockRows) * kMmaBlockRows : 0;
  if constexpr (kAsync) {
    load_tile_async(Ks, ld, a.k + koff, HD, k0, a.Lk, kMmaBlockKeys, a.Dh, DP);
    load_tile_async(Vs, ld, a.v + koff, HD, k0, a.Lk, kMmaBlockKeys, a.Dh, DP);
    if (q_start < a.Lq) issue_tile(q_start, 0);  // one group with k and v
    else cp_async_commit();
  } else {
    load_tile_bf16(Ks, ld, a.k + koff, HD, k0, a.Lk, kMmaBlockKeys, a.Dh, DP);
    load_tile_bf16(Vs, ld, a.v + koff, HD, k0, a.Lk, kMmaBlockKeys, a.Dh, DP);
  }
  float dk[kOutTiles][4], dv[kOutTiles][4];
  NCP_UNROLL
  for (int nt = 0; nt < kOutTiles; ++nt)
    NCP_UNROLL
    for (int i = 0; i < 4; ++i) dk[nt][i] = 0.f, dv[nt][i] = 0.f;
  for (int q0 = q_start, j = 0; q0 < a.Lq; q0 += kMmaBlockRows, ++j) {
    const int st = kAsync ? j & 1 : 0;
    const uint16_t* Qs = q_tile(st);
    const uint16_t* dOs = dout_tile(st);
    float* lse_s = lse_rows(st);
    float* delta_s = delta_rows(st);
    if constexpr (!kAsync) {
      __syncthreads();  // every warp is done with the previous q, dout and dS^T tiles
      load_tile_bf16(q_tile(0), ld, a.q + qoff, HD, q0, a.Lq, kMmaBlockRows, a.Dh, DP);
      load_tile_bf16(dout_tile(0), ld, a.dout + qoff, HD, q0, a.Lq, kMmaBlockRows, a.Dh, DP);
    }
    for (int r = threadIdx.x; r < kMmaBlockRows; r += blockDim.x) {
      const bool row = q0 + r < a.Lq;
      lse_s[r] = row ? a.lse[int64_t(bh) * a.Lq + q0 + r] * log2e : 0.f;
      delta_s[r] = row ? a.delta[int64_t(bh) * a.Lq + q0 + r] : 0.f;
    }
    if constexpr (kAsync) cp_async_wait<0>();  // this thread's copies of tile j (the only group in flight)
    __syncthreads();  // tile j is in; every warp is done with tile j - 1's q, dout and dS^T
    if constexpr (kAsync)
      if (q0 + kMmaBlockRows < a.Lq) issue_tile(q0 + kMmaBlockRows, st ^ 1);  // overlaps tile j's products

    // S^T = K Q^T and dP^T = V dout^T for this warp's 16 keys and the tile's 64 queries.
    float s[kScoreTiles][4], dp[kScoreTiles][4];
    NCP_UNROLL
    for (int nt = 0; nt < kScoreTiles; ++nt)
      NCP_UNROLL
      for (int i = 0; i < 4; ++i) s[nt][i] = 0.f, dp[nt][i] = 0.f;
    NCP_UNROLL
    for (int ks = 0; ks < DP / 16; ++ks) {
      uint32_t ka[4], va[4];  // A fragments: rows 0-7 / 8-15 (j odd) by columns 0-7 / 8-15 (j >= 2)
      ldmatrix_x4<false>(ka, Ks + (r0 + mr + (mj & 1) * 8) * ld + ks * 16 + (mj >> 1) * 8);
      ldmatrix_x4<false>(va, Vs + (r0 + mr + (mj & 1) * 8) * ld + ks * 16 + (mj >> 1) * 8);
      NCP_UNROLL
      for (int nt = 0; nt < kScoreTiles; nt += 2) {
        uint32_t qf[4], df[4];  // B fragments: query rows of n-tile nt (j < 2) or nt+1, columns 0-7 (j even) or 8-15
        ldmatrix_x4<false>(qf, Qs + ((nt + (mj >> 1)) * 8 + mr) * ld + ks * 16 + (mj & 1) * 8);
        ldmatrix_x4<false>(df, dOs + ((nt + (mj >> 1)) * 8 + mr) * ld + ks * 16 + (mj & 1) * 8);
        mma_16816(s[nt], ka, qf[0], qf[1]);
        mma_16816(s[nt + 1], ka, qf[2], qf[3]);
        mma_16816(dp[nt], va, df[0], df[1]);
        mma_16816(dp[nt + 1], va, df[2], df[3]);
      }
    }
    // P^T = exp(scale S^T - lse) where visible, dS^T = P^T (dP^T - delta); both stay in s and dp. (Query rows
    // past Lq would contribute nothing anyway, their q and dout rows being zero; the bound keeps P^T exact there.)
    NCP_UNROLL
    for (int nt = 0; nt < kScoreTiles; ++nt)
      NCP_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int c = nt * 8 + 2 * t + (i & 1), query = q0 + c, kr = key[i >> 1];
        const bool visible = query < a.Lq && kr < a.Lk && (!a.causal || kr <= query);
        const float p = visible ? exp2f(s[nt][i] * scale_log2 - lse_s[c]) : 0.f;
        s[nt][i] = p;
        dp[nt][i] = p * (dp[nt][i] - delta_s[c]);
      }
    // dV += P^T dout and dK += dS^T Q: k-step kk is score n-tiles 2kk, 2kk+1; dout's and q's B fragments are
    // ldmatrix transposes of their row-major tiles (rows: queries, columns: head dim).
    NCP_UNROLL
    for (int kk = 0; kk < kMmaBlockRows / 16; ++kk) {
      const uint32_t pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const uint32_t da[4] = {pack_bf16x2(dp[2 * kk][0], dp[2 * kk][1]), pack_bf16x2(dp[2 * kk][2], dp[2 * kk][3]),
                              pack_bf16x2(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                              pack_bf16x2(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
      NCP_UNROLL
      for (int nt = 0; nt < kOutTiles; nt += 2) {
        uint32_t of[4], qf[4];  // matrices: query rows 0-7 (j even) or 8-15 of the k-step, head-dim n-tile nt or nt+1
        ldmatrix_x4<true>(of, dOs + (kk * 16 + (mj & 1) * 8 + mr) * ld + (nt + (mj >> 1)) * 8);
        ldmatrix_x4<true>(qf, Qs + (kk * 16 + (mj & 1) * 8 + mr) * ld + (nt + (mj >> 1)) * 8);
        mma_16816(dv[nt], pa, of[0], of[1]);
        mma_16816(dv[nt + 1], pa, of[2], of[3]);
        mma_16816(dk[nt], da, qf[0], qf[1]);
        mma_16816(dk[nt + 1], da, qf[2], qf[3]);
      }
    }
    if (!a.dq) continue;
    // dS^T to shared memory (bf16, [keys, queries]), then dQ = dS K for query rows r0 .. r0+15 of the tile.
    NCP_UNROLL
    for (int nt = 0; nt < kScoreTiles; ++nt)
      NCP_UNROLL
      for (int hh = 0; hh < 2; ++hh) {
        store_u32(dSt + (r0 + g + 8 * hh) * ld_ds + nt * 8 + 2 * t, pack_bf16x2(dp[nt][2 * hh], dp[nt][2 * hh + 1]));
      }
    __syncthreads();
    float dq[kOutTiles][4];
    NCP_UNROLL
    for (int nt = 0; nt < kOutTiles; ++nt) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.f;
    NCP_UNROLL
    for (int kk = 0; kk < kMmaBlockKeys / 16; ++kk) {
      // A = dS (queries x keys) as transposes of dS^T's 8x8 blocks: a_j at keys 8 (j >= 2), queries 8 (j odd)
      uint32_t dsa[4];
      ldmatrix_x4<true>(dsa, dSt + (kk * 16 + (mj >> 1) * 8 + mr) * ld_ds + r0 + (mj & 1) * 8);
      NCP_UNROLL
      for (int nt = 0; nt < kOutTiles; nt += 2) {
        uint32_t kf[4];  // B = K (keys x head dim): transposes, keys 0-7 (j even) or 8-15, head-dim n-tile nt or nt+1
        ldmatrix_x4<true>(kf, Ks + (kk * 16 + (mj & 1) * 8 + mr) * ld + (nt + (mj >> 1)) * 8);
        mma_16816(dq[nt], dsa, kf[0], kf[1]);
        mma_16816(dq[nt + 1], dsa, kf[2], kf[3]);
      }
    }
    float* dqb = a.dq + qoff;
    NCP_UNROLL
    for (int nt = 0; nt < kOutTiles; ++nt)
      NCP_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int query = q0 + r0 + g + (i >> 1) * 8, d = nt * 8 + 2 * t + (i & 1);
        if (query < a.Lq && d < a.Dh) atomicAdd(dqb + int64_t(query) * HD + d, a.scale * dq[nt][i]);
      }
  }
  // This block alone owns these key rows: plain read-modify-writes.
  NCP_UNROLL
  for (int nt = 0; nt < kOutTiles; ++nt)
    NCP_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int kr = key[i >> 1], d = nt * 8 + 2 * t + (i & 1);
      if (kr >= a.Lk || d >= a.Dh) continue;
      const int64_t at = koff + int64_t(kr) * HD + d;
      if (a.dk) a.dk[at] += a.scale * dk[nt][i];
      if (a.dv) a.dv[at] += dv[nt][i];
    }
}

}  // namespace ncp::cuda::flash
