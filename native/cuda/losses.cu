// Mean squared error. The sum is reduced in double over a grid whose size depends only on n (per-block
// partials, then one block in fixed order), so the loss is the same on every run.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/entries.h"

namespace ncp::cuda {
namespace {

constexpr int kPartials = 1024;

__global__ void squared_error_partials(double* __restrict__ partial, const float* __restrict__ a,
                                       const float* __restrict__ b, int64_t n) {
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double d = double(a[i]) - double(b[i]);
    acc += d * d;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void mean_of_partials(double* __restrict__ out, const double* __restrict__ partial, int count, int64_t n) {
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = acc / double(n);
}

}  // namespace

int mse_forward(const float* a, const float* b, int64_t n, double* loss) {
  NCP_REQUIRE(loss && n >= 0, "mse_forward: negative size %lld or NULL loss", (long long)n);
  *loss = 0.0;
  if (n == 0) return NCP_CUDA_OK;
  const int blocks = int(std::min<int64_t>(kPartials, (n + kThreads - 1) / kThreads));
  double* partial = nullptr;
  NCP_TRY(scratch(0, (kPartials + 1) * sizeof(double), reinterpret_cast<void**>(&partial)));
  NCP_LAUNCH(squared_error_partials, blocks, kThreads, 0)(partial, a, b, n);
  NCP_TRY(check_launch("mse_forward"));
  NCP_LAUNCH(mean_of_partials, 1, kThreads, 0)(partial + kPartials, partial, blocks, n);
  NCP_TRY(check_launch("mse_forward"));
  const cudaError_t e = cudaMemcpy(loss, partial + kPartials, sizeof(double), cudaMemcpyDeviceToHost);
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "mse_forward");
}

int mse_backward(float* da, float* db, const float* a, const float* b, int64_t n, double scale) {
  NCP_REQUIRE(n >= 0, "mse_backward: negative size %lld", (long long)n);
  if (n == 0) return NCP_CUDA_OK;
  const float g = float(2.0 * scale / double(n));
  if (da) NCP_TRY(launch_each("mse_backward", n, [=] __device__(int64_t i) { da[i] += g * (a[i] - b[i]); }));
  if (db) NCP_TRY(launch_each("mse_backward", n, [=] __device__(int64_t i) { db[i] -= g * (a[i] - b[i]); }));
  return NCP_CUDA_OK;
}

}  // namespace ncp::cuda
