// Launch code of the fused attention kernels (flash_attention.h; the kernels are in flash_attention_kernels.cuh):
// tile sizes from the device's shared memory, the scratch for the log-sum-exp and delta rows, and the order of
// the passes.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/entries.h"
#include "cuda/flash_attention.h"
#include "cuda/flash_attention_kernels.cuh"

namespace ncp::cuda {
namespace {

using namespace flash;

bool g_fused = false;

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

// Raises the kernel's dynamic shared-memory limit when a launch needs more than it was last given (the call is
// not free, and every attention op launches).
template <class Kernel>
int launch(const char* op, Kernel kernel, int& limit_set, dim3 grid, size_t smem, const FlashArgs& args) {
  if (int(smem) > limit_set) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return cuda_fail(e, op);
    limit_set = int(smem);
  }
  NCP_LAUNCH(kernel, grid, kFlashThreads, smem)(args);
  return check_launch(op);
}
int g_forward_smem_set = 0, g_backward_smem_set = 0;

// The shape is one the kernels take: enough keys, a head dim of at most 256, a grid and int indices in range,
// and tiles of the pass(es) asked for that fit the device's shared memory.
bool shape_supported(const ncp_cuda_attention_shape* s, bool backward) {
  if (!s || s->Dh > kMaxHeadDim || s->Lk < kFusedMinKeys) return false;
  if (s->Lq > INT32_MAX || s->Lk > INT32_MAX || s->B * s->H > 65535) return false;
  return forward_tile(s->Dh).bm > 0 && (!backward || backward_tile(s->Dh).bm > 0);
}

FlashArgs make_args(const ncp_cuda_attention_shape* s) {
  FlashArgs a{};
  a.Lq = int(s->Lq), a.Lk = int(s->Lk), a.H = int(s->H), a.Dh = int(s->Dh);
  a.scale = float(1.0 / std::sqrt(double(s->Dh)));
  a.causal = s->causal != 0;
  return a;
}

}  // namespace

int set_fused_attention(int32_t on) {
  g_fused = on != 0;
  return NCP_CUDA_OK;
}

bool fused_attention_applies(const ncp_cuda_attention_shape* s, bool backward) {
  return g_fused && shape_supported(s, backward);
}

int fused_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                            const ncp_cuda_attention_shape* s) {
  NCP_REQUIRE(s, "fused attention: shape is NULL");
  NCP_REQUIRE(shape_supported(s, false), "fused attention: shape not supported (Lk %lld, Dh %lld)",
              (long long)s->Lk, (long long)s->Dh);
  if (s->B == 0 || s->Lq == 0) return NCP_CUDA_OK;
  FlashArgs a = make_args(s);
  a.q = q, a.k = k, a.v = v, a.out = out, a.lse = lse;
  a.tile = forward_tile(s->Dh);
  const dim3 grid(unsigned((s->Lq + a.tile.bm - 1) / a.tile.bm), unsigned(s->B * s->H));
  return launch("fused attention forward", flash_forward_kernel, g_forward_smem_set, grid, ForwardSmem(a.tile).total,
                a);
}

// Forward again (for out and the log-sum-exp), the per-row delta, then the key-tile backward. Scratch slot 1
// holds lse and delta ([B, H, Lq] each) and, when the caller wants no output, the output.
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
  NCP_TRY(fused_attention_forward(out, lse, q, k, v, s));
  if (!dq && !dk && !dv) return NCP_CUDA_OK;
  const int64_t warps_per_block = kThreads / 32;
  NCP_LAUNCH(flash_delta_kernel, unsigned((rows + warps_per_block - 1) / warps_per_block), kThreads, 0)(
      delta, dout, out, rows, int(s->Lq), int(s->H), int(s->Dh));
  NCP_TRY(check_launch("fused attention backward (delta)"));
  FlashArgs a = make_args(s);
  a.q = q, a.k = k, a.v = v, a.dout = dout, a.lse_in = lse, a.delta = delta, a.dq = dq, a.dk = dk, a.dv = dv;
  a.tile = backward_tile(s->Dh);
  const dim3 grid(unsigned((s->Lk + a.tile.bn - 1) / a.tile.bn), unsigned(s->B * s->H));
  return launch("fused attention backward", flash_backward_kernel, g_backward_smem_set, grid,
                BackwardSmem(a.tile).total, a);
}

}  // namespace ncp::cuda
