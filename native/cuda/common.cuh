// Internals shared by the kernel files of libncp_cuda: error recording, scratch memory, launch helpers, block
// reductions and the row-major GEMM every matrix op goes through.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/api.h"

// kernel<<<grid, block, smem>>>, spelled as a macro so that the emulator build (native/cuda_emu), which compiles
// these sources as C++, can run the same launches on the CPU.
#ifndef NCP_LAUNCH
#define NCP_LAUNCH(kernel, grid, block, smem) kernel<<<grid, block, smem>>>
#endif

namespace ncp::cuda {

// Records "message" as the calling thread's last_error() and returns status.
int fail(int status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// Records "what: cudaErrorName: description" and returns the matching status.
int cuda_fail(cudaError_t e, const char* what);
// OK, or the error of the launch just made (bad configuration, or an earlier asynchronous failure).
int check_launch(const char* op);
// Grow-only device arenas reused by every op (slots 0 and 1: the ops' own buffers; 2 and 3: bf16 copies of a
// mixed GEMM's float operands), so ops need no allocation after warm-up. A call may replace the arena, so a
// pointer is valid until the next scratch() call on the same slot.
int scratch(int slot, size_t bytes, void** out);

#define NCP_REQUIRE(cond, ...) \
  do {                         \
    if (!(cond)) return ::ncp::cuda::fail(NCP_CUDA_EINVAL, __VA_ARGS__); \
  } while (0)
#define NCP_TRY(expr)                 \
  do {                                \
    const int ncp_status_ = (expr);   \
    if (ncp_status_) return ncp_status_; \
  } while (0)

// C[b] = alpha op(A[b]) op(B[b]) + beta C[b] for b < batch, row-major like ncp::cpu::gemm, where X[b] starts at
// X + b * stride_x (stride 0 shares one matrix). beta == 0 never reads C. cuBLAS when loaded, else our kernel.
int gemm_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b, float beta, float* C,
                 int64_t ldc, int64_t stride_c, int64_t batch);
// As gemm_batched, with each of A and B float32, bf16 or fp16 (a_dtype / b_dtype, ncp_cuda_dtype; the pointers
// then point to half data; two half operands must share the type). When either is half, the float operand is
// rounded to that type in a scratch copy and cuBLAS multiplies half x half with float accumulation into float C
// (what autocast does, but C stays float); without cuBLAS' Ex entry point the half operand is widened instead, the
// float one rounded to half precision, and the float kernel runs on the same values.
int gemm_batched_mixed(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
                       int32_t a_dtype, int64_t lda, int64_t stride_a, const void* B, int32_t b_dtype, int64_t ldb,
                       int64_t stride_b, float beta, float* C, int64_t ldc, int64_t stride_c, int64_t batch);

// out[c] += sum_r in[r * cols + c] (bias gradients of row-major activations), summed in double.
int col_sum_add(float* out, const float* in, int64_t rows, int64_t cols);
// out[c] += sum over n and i of in[(n * C + c) * HW + i] (per-channel sums of NCHW tensors), in double.
int channel_sum_add(float* out, const float* in, int64_t N, int64_t C, int64_t HW);
// y[(n * C + c) * HW + i] += v[c]: a per-channel vector broadcast over N and HW (conv bias; linear with HW = 1).
int add_channel_vector(float* y, const float* v, int64_t N, int64_t C, int64_t HW);

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > (1 << 20) ? (1 << 20) : b));  // grid-stride loops cover the rest
}

template <class F>
__global__ void each_kernel(int64_t n, F f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    f(i);
}

// Runs f(i) for i in [0, n) on the device (f is a __device__ lambda).
template <class F>
int launch_each(const char* op, int64_t n, F f) {
  if (n <= 0) return NCP_CUDA_OK;
  NCP_LAUNCH(each_kernel, blocks_for(n), kThreads, 0)(n, f);
  return check_launch(op);
}

// SiLU and its derivative, in the CPU's float formulas (cpu/vec.h); shared by the activation op and the fused
// GroupNorm+SiLU.
__device__ inline float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
__device__ inline float silu(float x) { return x * sigmoid(x); }
__device__ inline float silu_grad(float x) {
  const float s = sigmoid(x);
  return s * (1.f + x * (1.f - s));
}

// Sum of v over the block, returned to every thread. blockDim.x must be a multiple of 32 (at most 1024) and
// every thread must call it.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // a previous call's readers are done with `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x >> 5) ? partial[lane] : T(0);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline float block_max(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x >> 5) ? partial[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace ncp::cuda
