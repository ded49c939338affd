// Launch code of the fused attention kernels (flash_attention.h; the kernels are in flash_mma_kernels.cuh and
// flash_attention_kernels.cuh): tile sizes from the device's shared memory, the scratch for the log-sum-exp and
// delta rows, and the order of the passes.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/entries.h"
#include "cuda/flash_attention.h"
#include "cuda/flash_attention_kernels.cuh"
#include "cuda/flash_mma_kernels.cuh"

namespace ncp::cuda {
namespace {

using namespace flash;

int g_mode = NCP_CUDA_ATTENTION_MATERIALIZED;

// The current device's shared memory per block with opt-in (cached per device).
int max_shared_bytes() {
  static int cached[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) return 0;
  if (device >= 64) device = 63;
  if (!cached[device] && cudaDeviceGetAttribute(&cached[device], cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
                             cudaSuccess)
    cached[device] = 0;
  return cached[device];
}

int padded_head_dim(int64_t Dh) { return int((Dh + 15) / 16 * 16); }

// The largest tiles whose shared memory fits; bm = 0 when none does. Key rows (bn) come first: the backward's dq
// atomics number (Lk / bn) Lq Dh per head.
Tile forward_tile(int64_t Dh) {
  const int dp = padded_head_dim(Dh), limit = max_shared_bytes();
  for (const Tile t : {Tile{64, 64, dp}, Tile{32, 64, dp}, Tile{32, 32, dp}})
    if (ForwardSmem(t).total <= size_t(limit)) return t;
  return Tile{0, 0, dp};
}
Tile backward_tile(int64_t Dh) {
  const int dp = padded_head_dim(Dh), limit = max_shared_bytes();
  for (const Tile t : {Tile{64, 64, dp}, Tile{32, 64, dp}, Tile{32, 32, dp}})
    if (BackwardSmem(t).total <= size_t(limit)) return t;
  return Tile{0, 0, dp};
}

// Launches kernel(args), first raising its dynamic shared-memory limit when the launch needs more than it was last
// given (the call is not free, and every attention op launches; limit_set is per kernel, as the attribute).
template <class Kernel, class Args>
int launch(const char* op, Kernel kernel, int& limit_set, dim3 grid, int threads, size_t smem, const Args& args) {
  if (int(smem) > limit_set) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return cuda_fail(e, op);
    limit_set = int(smem);
  }
  NCP_LAUNCH(kernel, grid, threads, smem)(args);
  return check_launch(op);
}
int g_forward_smem_set = 0, g_backward_smem_set = 0;

// The padded head dims a register-level kernel is compiled for, smallest first. pick() is the one a head dim takes:
// the smallest that holds it (the zero columns cost arithmetic, not accuracy), 0 when none does or its shared
// memory (Smem) does not fit the device. dispatch() calls f(std::integral_constant<int, DP>) for the picked DP. One
// list per pass keeps the choice and the instantiations in step.
template <class Smem, int... Dims>
struct HeadDims {
  static int pick(int64_t Dh) {
    for (const int dp : {Dims...})
      if (Dh <= dp) return Smem(dp).total <= size_t(max_shared_bytes()) ? dp : 0;
    return 0;
  }
  template <class F>
  static int dispatch(const char* op, int dp, F f) {
    int status = -1;
    (void)((dp == Dims && (status = f(std::integral_constant<int, Dims>{}), true)) || ...);
    return status >= 0 ? status : fail(NCP_CUDA_EINVAL, "%s: no kernel for padded head dim %d", op, dp);
  }
};
// The backward's accumulators spill past kMmaBackwardMaxHeadDim: larger head dims keep WMMA's backward.
using MmaForwardDims = HeadDims<MmaSmem, 32, 48, 64, 80, 96, 128, 160, 256>;
using MmaBackwardDims = HeadDims<MmaBackwardSmem, 32, 48, 64, 80, 96, 128>;
// The double-buffered forwards, for the head dims of SD (40 -> 48, 64, 80, 160) and 128 only: each instantiation
// costs compile time, and other head dims take the plain kernel.
using MmaAsync4Dims = HeadDims<MmaForwardSmem<4, 2>, 48, 64, 80, 128, 160>;
using MmaAsync8Dims = HeadDims<MmaForwardSmem<8, 2>, 48, 64, 80, 128, 160>;
using MmaAsyncBackwardDims = HeadDims<MmaBackwardAsyncSmem, 48, 64, 80, 128>;

bool async_mode(int mode) {
  return mode == NCP_CUDA_ATTENTION_FUSED_ASYNC || mode == NCP_CUDA_ATTENTION_FUSED_ASYNC8;
}
bool mma_mode(int mode) { return mode == NCP_CUDA_ATTENTION_FUSED || async_mode(mode); }

// The shape fields every kernel's arguments share.
template <class Args>
Args with_shape(const ncp_cuda_attention_shape* s) {
  Args a{};
  a.Lq = int(s->Lq), a.Lk = int(s->Lk), a.H = int(s->H), a.Dh = int(s->Dh);
  a.scale = float(1.0 / std::sqrt(double(s->Dh)));
  a.causal = s->causal != 0;
  return a;
}

// The double-buffered forward with kWarps warps (16 query rows each) for a head dim in Dims.
template <int kWarps, class Dims>
int mma_forward_async(const MmaForwardArgs& a, const ncp_cuda_attention_shape* s, int dp, const char* op) {
  constexpr int rows = 16 * kWarps;
  const dim3 grid(unsigned((a.Lq + rows - 1) / rows), unsigned(s->B * s->H));
  return Dims::dispatch(op, dp, [&](auto d) {
    constexpr int DP = decltype(d)::value;
    static int limit_set = 0;  // one per instantiation, as the attribute is per kernel
    return launch(op, flash_mma_forward_kernel<DP, kWarps, true>, limit_set, grid, 32 * kWarps,
                  MmaForwardSmem<kWarps, 2>(DP).total, a);
  });
}

int mma_forward(float* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                const ncp_cuda_attention_shape* s, int dp) {
  MmaForwardArgs a = with_shape<MmaForwardArgs>(s);
  a.q = q, a.k = k, a.v = v, a.out = out, a.lse = lse;
  // The double-buffered kernels copy 16-byte row segments: the head dim (and so H * Dh) a multiple of 8, and a
  // padded head dim they are compiled for that is the one the plain kernel would use.
  const bool aligned = s->Dh % 8 == 0;
  if (g_mode == NCP_CUDA_ATTENTION_FUSED_ASYNC && aligned && MmaAsync4Dims::pick(s->Dh) == dp)
    return mma_forward_async<4, MmaAsync4Dims>(a, s, dp, "fused attention forward (mma, cp.async, 4 warps)");
  if (g_mode == NCP_CUDA_ATTENTION_FUSED_ASYNC8 && aligned && MmaAsync8Dims::pick(s->Dh) == dp)
    return mma_forward_async<8, MmaAsync8Dims>(a, s, dp, "fused attention forward (mma, cp.async, 8 warps)");
  const dim3 grid(unsigned((a.Lq + kMmaBlockRows - 1) / kMmaBlockRows), unsigned(s->B * s->H));
  const char* op = "fused attention forward (mma)";
  return MmaForwardDims::dispatch(op, dp, [&](auto d) {
    constexpr int DP = decltype(d)::value;
    static int limit_set = 0;  // one per instantiation, as the attribute is per kernel
    return launch(op, flash_mma_forward_kernel<DP>, limit_set, grid, kMmaThreads, MmaSmem(DP).total, a);
  });
}

int mma_backward(float* dq, float* dk, float* dv, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                 const uint16_t* dout, const float* lse, const float* delta, const ncp_cuda_attention_shape* s,
                 int dp) {
  MmaBackwardArgs a = with_shape<MmaBackwardArgs>(s);
  a.q = q, a.k = k, a.v = v, a.dout = dout, a.lse = lse, a.delta = delta, a.dq = dq, a.dk = dk, a.dv = dv;
  const dim3 grid(unsigned((a.Lk + kMmaBlockKeys - 1) / kMmaBlockKeys), unsigned(s->B * s->H));
  if (async_mode(g_mode) && s->Dh % 8 == 0 && MmaAsyncBackwardDims::pick(s->Dh) == dp) {
    const char* op = "fused attention backward (mma, cp.async)";
    return MmaAsyncBackwardDims::dispatch(op, dp, [&](auto d) {
      constexpr int DP = decltype(d)::value;
      static int limit_set = 0;
      return launch(op, flash_mma_backward_kernel<DP, true>, limit_set, grid, kMmaThreads,
                    MmaBackwardAsyncSmem(DP).total, a);
    });
  }
  const char* op = "fused attention backward (mma)";
  return MmaBackwardDims::dispatch(op, dp, [&](auto d) {
    constexpr int DP = decltype(d)::value;
    static int limit_set = 0;
    return launch(op, flash_mma_backward_kernel<DP>, limit_set, grid, kMmaThreads, MmaBackwardSmem(DP).total, a);
  });
}

// Up to four float arrays rounded to bf16 bit patterns in one launch (blockIdx.y picks the array): one launch
// for q, k, v (and dout) instead of one each.
struct RoundJobs {
  const float* src[4];
  uint16_t* dst[4];
  int64_t n[4];
};
__global__ void round_to_bf16_many_kernel(RoundJobs j) {
  const float* src = j.src[blockIdx.y];
  uint16_t* dst = j.dst[blockIdx.y];
  const int64_t n = j.n[blockIdx.y];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = bf16_bits(src[i]);
}

// bf16 copies of the float inputs, made once per op in scratch slot 0 for the register-level kernels: they read
// every key tile once per query tile (and every query tile once per key tile), so converting inside them would
// redo the work and read twice the bytes, Lq / 64 times over.
struct Bf16Inputs {
  const uint16_t *q = nullptr, *k = nullptr, *v = nullptr, *dout = nullptr;
};
int bf16_inputs(Bf16Inputs* c, const float* q, const float* k, const float* v, const float* dout,
                const ncp_cuda_attention_shape* s) {
  const auto padded = [](int64_t n) { return (n + 7) / 8 * 8; };  // every copy starts 16-byte aligned
  const int64_t nq = s->B * s->Lq * s->H * s->Dh, nk = s->B * s->Lk * s->H * s->Dh;
  uint16_t* buf = nullptr;
  const int64_t total = padded(nq) * (dout ? 2 : 1) + 2 * padded(nk);
  NCP_TRY(scratch(0, size_t(total) * sizeof(uint16_t), reinterpret_cast<void**>(&buf)));
  uint16_t *bq = buf, *bk = bq + padded(nq), *bv = bk + padded(nk), *bdout = bv + padded(nk);
  const RoundJobs jobs{{q, k, v, dout}, {bq, bk, bv, bdout}, {nq, nk, nk, nq}};
  NCP_LAUNCH(round_to_bf16_many_kernel, dim3(blocks_for(std::max(nq, nk)), dout ? 4 : 3), kThreads, 0)(jobs);
  NCP_TRY(check_launch("fused attention (bf16 inputs)"));
  c->q = bq, c->k = bk, c->v = bv, c->dout = dout ? bdout : nullptr;
  return NCP_CUDA_OK;
}

// The shape is one the kernels take: enough keys, a head dim of at most 256, a grid and int indices in range,
// and tiles of the pass(es) asked for that fit the device's shared memory.
bool shape_supported(const ncp_cuda_attention_shape* s, bool backward) {
  if (!s || s->Dh > kMaxHeadDim || s->Lk < kFusedMinKeys) return false;
  if (s->Lq > INT32_MAX || s->Lk > INT32_MAX || s->B * s->H > 65535) return false;
  return forward_tile(s->Dh).bm > 0 && (!backward || backward_tile(s->Dh).bm > 0);
}


// The WMMA forward (fused-wmma, and head dims the register-level kernel does not take).
int wmma_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                 const ncp_cuda_attention_shape* s) {
  FlashArgs a = with_shape<FlashArgs>(s);
  a.q = q, a.k = k, a.v = v, a.out = out, a.lse = lse;
  a.tile = forward_tile(s->Dh);
  const dim3 grid(unsigned((s->Lq + a.tile.bm - 1) / a.tile.bm), unsigned(s->B * s->H));
  return launch("fused attention forward", flash_forward_kernel, g_forward_smem_set, grid, kFlashThreads,
                ForwardSmem(a.tile).total, a);
}

}  // namespace

int set_fused_attention(int32_t mode) {
  NCP_REQUIRE(mode == NCP_CUDA_ATTENTION_MATERIALIZED || mode == NCP_CUDA_ATTENTION_FUSED_WMMA || mma_mode(mode),
              "set_fused_attention: unknown mode %d", int(mode));
  g_mode = mode;
  return NCP_CUDA_OK;
}

bool fused_attention_applies(const ncp_cuda_attention_shape* s, bool backward) {
  return g_mode != NCP_CUDA_ATTENTION_MATERIALIZED && shape_supported(s, backward);
}

int fused_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                            const ncp_cuda_attention_shape* s) {
  NCP_REQUIRE(s, "fused attention: shape is NULL");
  NCP_REQUIRE(shape_supported(s, false), "fused attention: shape not supported (Lk %lld, Dh %lld)",
              (long long)s->Lk, (long long)s->Dh);
  if (s->B == 0 || s->Lq == 0) return NCP_CUDA_OK;
  if (mma_mode(g_mode))
    if (const int dp = MmaForwardDims::pick(s->Dh); dp > 0) {
      Bf16Inputs c;
      NCP_TRY(bf16_inputs(&c, q, k, v, nullptr, s));
      return mma_forward(out, lse, c.q, c.k, c.v, s, dp);
    }
  return wmma_forward(out, lse, q, k, v, s);
}

// Forward again (for out and the log-sum-exp), the per-row delta, then the key-tile backward. Scratch slot 1
// holds lse and delta ([B, H, Lq] each) and, when the caller wants no output, the output; slot 0 the bf16 copies
// of q, k, v (and dout) that the register-level kernels read, made once for both passes.
int fused_attention_backward_recompute(float* dq, float* dk, float* dv, float* out, const float* dout,
                                       const float* q, const float* k, const float* v,
                                       const ncp_cuda_attention_shape* s) {
  NCP_REQUIRE(s, "fused attention backward: shape is NULL");
  NCP_REQUIRE(shape_supported(s, true), "fused attention backward: shape not supported (Lk %lld, Dh %lld)",
              (long long)s->Lk, (long long)s->Dh);
  if (s->B == 0 || s->Lq == 0) return NCP_CUDA_OK;
  const int64_t rows = s->B * s->H * s->Lq, n_out = s->B * s->Lq * s->H * s->Dh;
  float* buf = nullptr;
  NCP_TRY(scratch(1, size_t(2 * rows + (out ? 0 : n_out)) * sizeof(float), reinterpret_cast<void**>(&buf)));
  float *lse = buf, *delta = buf + rows;
  if (!out) out = buf + 2 * rows;
  const bool grads = dq || dk || dv;
  const int fwd_dp = mma_mode(g_mode) ? MmaForwardDims::pick(s->Dh) : 0;
  const int bwd_dp = mma_mode(g_mode) && grads ? MmaBackwardDims::pick(s->Dh) : 0;
  Bf16Inputs c;
  if (fwd_dp > 0) NCP_TRY(bf16_inputs(&c, q, k, v, bwd_dp > 0 ? dout : nullptr, s));
  NCP_TRY(fwd_dp > 0 ? mma_forward(out, lse, c.q, c.k, c.v, s, fwd_dp) : wmma_forward(out, lse, q, k, v, s));
  if (!grads) return NCP_CUDA_OK;
  const int64_t warps_per_block = kThreads / 32;
  NCP_LAUNCH(flash_delta_kernel, unsigned((rows + warps_per_block - 1) / warps_per_block), kThreads, 0)(
      delta, dout, out, rows, int(s->Lq), int(s->H), int(s->Dh));
  NCP_TRY(check_launch("fused attention backward (delta)"));
  if (bwd_dp > 0) return mma_backward(dq, dk, dv, c.q, c.k, c.v, c.dout, lse, delta, s, bwd_dp);
  FlashArgs a = with_shape<FlashArgs>(s);
  a.q = q, a.k = k, a.v = v, a.dout = dout, a.lse_in = lse, a.delta = delta, a.dq = dq, a.dk = dk, a.dv = dv;
  a.tile = backward_tile(s->Dh);
  const dim3 grid(unsigned((s->Lk + a.tile.bn - 1) / a.tile.bn), unsigned(s->B * s->H));
  return launch("fused attention backward", flash_backward_kernel, g_backward_smem_set, grid, kFlashThreads,
                BackwardSmem(a.tile).total, a);
}

}  // namespace ncp::cuda
