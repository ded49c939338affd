// Residual adds, channel concat, nearest 2x upsampling, per-channel biases, and the column / channel sums
// their backward passes (and the linear and conv bias gradients) need. Every output element has one writer,
// so results do not depend on scheduling.
#include <cuda_bf16.h>

#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/entries.h"

namespace ncp::cuda {
namespace {

// Block (32, 8): 32 adjacent columns, 8 row phases; each thread sums its column over rows in double.
__global__ void col_sum_kernel(float* __restrict__ out, const float* __restrict__ in, int64_t rows, int64_t cols) {
  __shared__ double part[8][32];
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
  double acc = 0;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += 8) acc += in[r * cols + c];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double s = 0;
    for (int i = 0; i < 8; ++i) s += part[i][threadIdx.x];
    out[c] += float(s);
  }
}

// One block per channel.
__global__ void channel_sum_kernel(float* __restrict__ out, const float* __restrict__ in, int64_t N, int64_t C,
                                   int64_t HW) {
  const int64_t c = blockIdx.x;
  double acc = 0;
  for (int64_t i = threadIdx.x; i < N * HW; i += blockDim.x) acc += in[((i / HW) * C + c) * HW + i % HW];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[c] += float(acc);
}

// y[(n C + c) HW + i] += v[c] without per-value division (see add_channel_vector). Planes: grid (blocks along HW,
// C, N), each block inside one plane. Rows: grid (blocks along C HW, rows strided past 65535), for small HW (a
// linear layer's bias: HW = 1), the value's channel j / HW (no division when HW = 1) fetched once per thread.
__global__ void add_plane_vector_kernel(float* __restrict__ y, const float* __restrict__ v, int C, int HW) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < HW) y[(int64_t(blockIdx.z) * C + blockIdx.y) * HW + i] += v[blockIdx.y];
}
__global__ void add_row_vector_kernel(float* __restrict__ y, const float* __restrict__ v, int64_t N, int C, int HW) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= C * HW) return;
  const float add = v[HW == 1 ? j : j / HW];
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) y[n * C * HW + j] += add;
}

}  // namespace

int col_sum_add(float* out, const float* in, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return NCP_CUDA_OK;
  NCP_REQUIRE((cols + 31) / 32 <= INT32_MAX, "col_sum: too many columns (%lld)", (long long)cols);
  NCP_LAUNCH(col_sum_kernel, unsigned((cols + 31) / 32), dim3(32, 8), 0)(out, in, rows, cols);
  return check_launch("column sum");
}

int channel_sum_add(float* out, const float* in, int64_t N, int64_t C, int64_t HW) {
  if (C <= 0) return NCP_CUDA_OK;
  NCP_REQUIRE(C <= INT32_MAX, "channel_sum: too many channels (%lld)", (long long)C);
  NCP_LAUNCH(channel_sum_kernel, unsigned(C), kThreads, 0)(out, in, N, C, HW);
  return check_launch("channel sum");
}

// Every conv and every linear layer with a bias ends here, on outputs of up to 84 million values (SDXL's GEGLU
// projection at 1024²). The generic kernel made two 64-bit divisions per value, a software sequence of some 30-70
// instructions each on the GPU: by that count (not measured) more time than the value's memory traffic.
int add_channel_vector(float* y, const float* v, int64_t N, int64_t C, int64_t HW) {
  NCP_REQUIRE(N >= 0 && C >= 0 && HW >= 0, "bias add: negative size (N %lld, C %lld, HW %lld)", (long long)N,
              (long long)C, (long long)HW);
  if (N == 0 || C == 0 || HW == 0) return NCP_CUDA_OK;
  NCP_REQUIRE(C * HW <= INT32_MAX, "bias add: %lld values per item (more than 2^31)", (long long)(C * HW));
  if (HW >= 64 && C <= 65535 && N <= 65535) {
    NCP_LAUNCH(add_plane_vector_kernel, dim3(blocks_for(HW), unsigned(C), unsigned(N)), kThreads, 0)(y, v, int(C),
                                                                                                    int(HW));
  } else {
    NCP_LAUNCH(add_row_vector_kernel, dim3(blocks_for(C * HW), unsigned(std::min<int64_t>(N, 65535))), kThreads, 0)(
        y, v, N, int(C), int(HW));
  }
  return check_launch("bias add");
}

int upsample_nearest2x_forward(float* y, const float* x, int64_t N, int64_t C, int64_t H, int64_t W) {
  NCP_REQUIRE(N >= 0 && C >= 0 && H >= 0 && W >= 0, "upsample_nearest2x_forward: negative size");
  const int64_t W2 = 2 * W, H2 = 2 * H;
  return launch_each("upsample_nearest2x_forward", N * C * H2 * W2, [=] __device__(int64_t i) {
    const int64_t ow = i % W2, oh = i / W2 % H2, nc = i / (W2 * H2);
    y[i] = x[(nc * H + oh / 2) * W + ow / 2];
  });
}

int upsample_nearest2x_backward(float* dx, const float* dy, int64_t N, int64_t C, int64_t H, int64_t W) {
  NCP_REQUIRE(N >= 0 && C >= 0 && H >= 0 && W >= 0, "upsample_nearest2x_backward: negative size");
  if (!dx) return NCP_CUDA_OK;
  const int64_t W2 = 2 * W;
  return launch_each("upsample_nearest2x_backward", N * C * H * W, [=] __device__(int64_t i) {
    const int64_t w = i % W, r = i / W;  // r indexes input rows over (n, c, h)
    const float* top = dy + r * 2 * W2 + 2 * w;
    const float* bottom = top + W2;
    dx[i] += (top[0] + top[1]) + (bottom[0] + bottom[1]);
  });
}

int add_forward(float* y, const float* a, const float* b, int64_t n) {
  NCP_REQUIRE(n >= 0, "add_forward: negative size %lld", (long long)n);
  return launch_each("add_forward", n, [=] __device__(int64_t i) { y[i] = a[i] + b[i]; });
}

int add_backward(float* da, float* db, const float* dy, int64_t n) {
  NCP_REQUIRE(n >= 0, "add_backward: negative size %lld", (long long)n);
  if (da) NCP_TRY(launch_each("add_backward", n, [=] __device__(int64_t i) { da[i] += dy[i]; }));
  if (db) NCP_TRY(launch_each("add_backward", n, [=] __device__(int64_t i) { db[i] += dy[i]; }));
  return NCP_CUDA_OK;
}

int concat_channels_forward(float* y, const float* a, const float* b, int64_t N, int64_t Ca, int64_t Cb, int64_t HW) {
  NCP_REQUIRE(N >= 0 && Ca >= 0 && Cb >= 0 && HW >= 0, "concat_channels_forward: negative size");
  const int64_t na = Ca * HW, nb = Cb * HW;
  return launch_each("concat_channels_forward", N * (na + nb), [=] __device__(int64_t i) {
    const int64_t n = i / (na + nb), j = i % (na + nb);
    y[i] = j < na ? a[n * na + j] : b[n * nb + j - na];
  });
}

int concat_channels_backward(float* da, float* db, const float* dy, int64_t N, int64_t Ca, int64_t Cb, int64_t HW) {
  NCP_REQUIRE(N >= 0 && Ca >= 0 && Cb >= 0 && HW >= 0, "concat_channels_backward: negative size");
  const int64_t na = Ca * HW, nb = Cb * HW;
  if (da)
    NCP_TRY(launch_each("concat_channels_backward", N * na,
                        [=] __device__(int64_t i) { da[i] += dy[(i / na) * (na + nb) + i % na]; }));
  if (db)
    NCP_TRY(launch_each("concat_channels_backward", N * nb,
                        [=] __device__(int64_t i) { db[i] += dy[(i / nb) * (na + nb) + na + i % nb]; }));
  return NCP_CUDA_OK;
}

int add_channel_bias_forward(float* y, const float* bias, int64_t N, int64_t C, int64_t HW) {
  NCP_REQUIRE(N >= 0 && C >= 0 && HW >= 0, "add_channel_bias_forward: negative size");
  return launch_each("add_channel_bias_forward", N * C * HW, [=] __device__(int64_t i) { y[i] += bias[i / HW]; });
}

int add_channel_bias_backward(float* dbias, const float* dy, int64_t N, int64_t C, int64_t HW) {
  NCP_REQUIRE(N >= 0 && C >= 0 && HW >= 0, "add_channel_bias_backward: negative size");
  return dbias ? channel_sum_add(dbias, dy, 1, N * C, HW) : NCP_CUDA_OK;
}

// 32x32 tiles through shared memory, so that both the reads and the writes are coalesced. Grid: (column tiles,
// row tiles, batch); block (32, 8), each thread moving four elements of its tile column.
namespace {
__global__ void transpose_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t rows, int64_t cols) {
  __shared__ float tile[32][33];  // +1: no shared-memory bank conflicts on the transposed read
  const int64_t n = blockIdx.z, r0 = int64_t(blockIdx.y) * 32, c0 = int64_t(blockIdx.x) * 32;
  const float* xs = x + n * rows * cols;
  float* yd = y + n * rows * cols;
  for (int i = threadIdx.y; i < 32; i += 8) {
    const int64_t r = r0 + i, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = xs[r * cols + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += 8) {
    const int64_t c = c0 + i, r = r0 + threadIdx.x;
    if (r < rows && c < cols) yd[c * rows + r] = tile[threadIdx.x][i];
  }
}
}  // namespace

int transpose_batched(float* y, const float* x, int64_t N, int64_t rows, int64_t cols) {
  NCP_REQUIRE(N >= 0 && rows >= 0 && cols >= 0, "transpose_batched: negative size");
  if (N == 0 || rows == 0 || cols == 0) return NCP_CUDA_OK;
  NCP_REQUIRE(N <= 65535 && (rows + 31) / 32 <= 65535, "transpose_batched: %lld x %lld rows too many for the grid",
              (long long)N, (long long)rows);
  NCP_LAUNCH(transpose_kernel, dim3(unsigned((cols + 31) / 32), unsigned((rows + 31) / 32), unsigned(N)), dim3(32, 8), 0)(
       y, x, rows, cols);
  return check_launch("transpose_batched");
}

int round_to_bf16(void* dst, const float* src, int64_t n) {
  NCP_REQUIRE(n >= 0, "round_to_bf16: negative size %lld", (long long)n);
  __nv_bfloat16* d = static_cast<__nv_bfloat16*>(dst);
  return launch_each("round_to_bf16", n, [=] __device__(int64_t i) { d[i] = __float2bfloat16_rn(src[i]); });
}

int widen_bf16(float* dst, const void* src, int64_t n) {
  NCP_REQUIRE(n >= 0, "widen_bf16: negative size %lld", (long long)n);
  const __nv_bfloat16* s = static_cast<const __nv_bfloat16*>(src);
  return launch_each("widen_bf16", n, [=] __device__(int64_t i) { dst[i] = __bfloat162float(s[i]); });
}

int scale_shift(float* y, const float* x, float a, float c, int64_t n) {
  NCP_REQUIRE(n >= 0, "scale_shift: negative size %lld", (long long)n);
  return launch_each("scale_shift", n, [=] __device__(int64_t i) { y[i] = a * x[i] + c; });
}

}  // namespace ncp::cuda
