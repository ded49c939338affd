// LoRA adapters beside a Linear: y[rows, out] += s (x A^T) B^T, A [r, in], B [out, r], and its backward, in
// kernels shaped for the adapter: rank r of 1 to 32 against in and out of hundreds to thousands and rows in the
// thousands (SDXL 1024²: 8192 rows of 640 at the first transformer level).
//
// As GEMMs (the CPU's way, and ours past rank 32) every product has one side of r: two launches forward, five
// backward, each on a shape tensor-core GEMMs tile badly (N = 4), and the two weight gradients (dA = du^T x,
// dB = s dy^T u) reduce over all rows into an [r, in] / [out, r] result that a tiled GEMM covers with a handful
// of blocks. Run 3's profile had the adapters' GEMMs at about 0.29 s over two SDXL steps (7560 calls), against
// about 11 ms per step that their memory traffic takes at the H200's bandwidth. Here:
//  - forward, one kernel: a warp takes a few rows, reduces x A^T over its lanes (every lane ends with u) and adds
//    s u B^T into y in the same pass;
//  - backward, three: lora_rows_kernel reduces each row (u = s x A^T when the weight gradients are wanted,
//    du = s dy B; both kept [rows, r] in scratch) and adds du A into dx; lora_columns_kernel cuts the rows into
//    chunks and sums, per chunk and column, du^T x (for dA) or u^T dy (for dB), a thread per column with the
//    chunk's coefficients in shared memory; a last pass (a thread per entry) adds the chunks in a fixed order into
//    dA and dB. No atomics: every run sums in the same order.
// Opt-in (NCP_CUDA_LORA=fused): on an H200 the GEMM chain ran the SDXL step faster (takes_fused_kernels).
// The arithmetic is float32 on CUDA cores (more exact than the TF32 the GEMMs use under mixed precision): at these
// ranks the traffic, not the multiply-adds, sets the time.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cuda/common.cuh"
#include "cuda/entries.h"

namespace ncp::cuda {
namespace {

constexpr int kMaxFusedRank = 32;
constexpr int kRowWarps = 4;            // warps per block of the row kernels
constexpr int kColumnThreads = 128;     // columns per block of lora_columns_kernel
constexpr int kMaxChunkRows = 256;      // rows per chunk: the chunk's coefficients fit in 32 KB at rank 32
constexpr int kMinChunkRows = 32;
constexpr int64_t kColumnBlocksWanted = 1024;  // about 8 blocks per SM of an H100/H200

// Rows a warp carries at once for ranks up to RB: RB x rows accumulators stay at 32 registers, and each value of
// A or B a lane loads serves that many rows.
template <int RB>
__host__ __device__ constexpr int rows_per_warp() {
  return RB >= 32 ? 1 : 32 / RB;
}

// Column positions a lane loads per step of the row kernels. A row kernel has only rows / R warps (SDXL's 8192 rows:
// about 8 warps per SM), so one load per row in flight per lane would keep about 8 KB in flight per SM, well under
// what HBM needs to run at full rate; four per row quadruple it.
constexpr int kColumnsInFlight = 4;

// M(j, c) = M[j * cols + c] (A: [rank, cols]) or, kTransposed, M[c * rank + j] (B: [cols, rank]).
template <bool kTransposed>
__device__ inline float factor(const float* __restrict__ M, int j, int c, int cols, int rank) {
  return kTransposed ? M[int64_t(c) * rank + j] : M[int64_t(j) * cols + c];
}

// v[k][i] = X[i * cols + c0 + 32 k] for rows i < n and columns inside cols, else 0: one lane's loads of a step,
// all issued before any is used.
template <int R>
__device__ inline void load_columns(float (&v)[kColumnsInFlight][R], const float* __restrict__ X, int cols, int n,
                                    int c0) {
#pragma unroll
  for (int k = 0; k < kColumnsInFlight; ++k) {
    const int c = c0 + 32 * k;
#pragma unroll
    for (int i = 0; i < R; ++i) v[k][i] = i < n && c < cols ? X[int64_t(i) * cols + c] : 0.f;
  }
}

// acc[i][j] = sum over c < cols of X[i * cols + c] M(j, c), for rows i < n (others 0) and j < rank. Lanes stride
// over c; the butterfly leaves every lane with every sum. The whole warp calls it.
template <int R, int RB, bool kTransposed>
__device__ void warp_row_products(float (&acc)[R][RB], const float* __restrict__ X, int cols, int n,
                                  const float* __restrict__ M, int rank, int lane) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < RB; ++j) acc[i][j] = 0.f;
  for (int c0 = lane; c0 < cols; c0 += 32 * kColumnsInFlight) {
    float xv[kColumnsInFlight][R];
    load_columns<R>(xv, X, cols, n, c0);
#pragma unroll
    for (int k = 0; k < kColumnsInFlight; ++k) {
      const int c = c0 + 32 * k;
      if (c >= cols) break;
#pragma unroll
      for (int j = 0; j < RB; ++j) {
        if (j < rank) {
          const float m = factor<kTransposed>(M, j, c, cols, rank);
#pragma unroll
          for (int i = 0; i < R; ++i) acc[i][j] += xv[k][i] * m;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < RB; ++j)
      for (int o = 16; o > 0; o >>= 1) acc[i][j] += __shfl_xor_sync(0xffffffffu, acc[i][j], o);
}

// Y[i * cols + c] += sum_j coef[i][j] M(j, c) for rows i < n: the rank-r update of a row block, lanes over c (each
// lane's reads of Y for kColumnsInFlight columns issued before its writes).
template <int R, int RB, bool kTransposed>
__device__ void warp_rank_update(float* __restrict__ Y, int cols, int n, const float (&coef)[R][RB],
                                 const float* __restrict__ M, int rank, int lane) {
  for (int c0 = lane; c0 < cols; c0 += 32 * kColumnsInFlight) {
    float yv[kColumnsInFlight][R];
    load_columns<R>(yv, Y, cols, n, c0);
#pragma unroll
    for (int k = 0; k < kColumnsInFlight; ++k) {
      const int c = c0 + 32 * k;
      if (c >= cols) break;
      float m[RB];
#pragma unroll
      for (int j = 0; j < RB; ++j) m[j] = j < rank ? factor<kTransposed>(M, j, c, cols, rank) : 0.f;
#pragma unroll
      for (int i = 0; i < R; ++i) {
        if (i < n) {
          float acc = 0.f;
#pragma unroll
          for (int j = 0; j < RB; ++j) acc += coef[i][j] * m[j];
          Y[int64_t(i) * cols + c] = yv[k][i] + acc;
        }
      }
    }
  }
}

// The row blocks of warp w of the grid: rows [r0, r0 + R) for r0 = (w + k * warps) * R.
struct RowWalk {
  int64_t first, step;
  __device__ RowWalk(int R)
      : first((int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R),
        step(int64_t(gridDim.x) * (blockDim.x >> 5) * R) {}
};

template <int RB>
__global__ void lora_forward_kernel(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ A,
                                    const float* __restrict__ B, float scale, int64_t rows, int in, int out,
                                    int rank) {
  constexpr int R = rows_per_warp<RB>();
  const int lane = threadIdx.x & 31;
  const RowWalk walk(R);
  for (int64_t r0 = walk.first; r0 < rows; r0 += walk.step) {  // the same trip count for the whole warp
    const int n = int(min(int64_t(R), rows - r0));
    float u[R][RB];
    warp_row_products<R, RB, false>(u, x + r0 * in, in, n, A, rank, lane);
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < RB; ++j) u[i][j] *= scale;
    warp_rank_update<R, RB, true>(y + r0 * out, out, n, u, B, rank, lane);
  }
}

// Stores a warp's R x rank block of coefficients (every lane holds all of them) as rows of `rank` floats.
template <int R, int RB>
__device__ void store_coefficients(float* __restrict__ dst, const float (&v)[R][RB], int n, int rank, int lane) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < RB; ++j)
      if (i < n && j < rank && lane == (i * RB + j) % 32) dst[int64_t(i) * rank + j] = v[i][j];
}

// U = s x A^T (when U is not null), DU = s dy B, and dx += DU A (when dx is not null), per row.
template <int RB>
__global__ void lora_rows_kernel(float* __restrict__ U, float* __restrict__ DU, float* __restrict__ dx,
                                 const float* __restrict__ dy, const float* __restrict__ x,
                                 const float* __restrict__ A, const float* __restrict__ B, float scale, int64_t rows,
                                 int in, int out, int rank) {
  constexpr int R = rows_per_warp<RB>();
  const int lane = threadIdx.x & 31;
  const RowWalk walk(R);
  for (int64_t r0 = walk.first; r0 < rows; r0 += walk.step) {
    const int n = int(min(int64_t(R), rows - r0));
    float v[R][RB];
    if (U) {
      warp_row_products<R, RB, false>(v, x + r0 * in, in, n, A, rank, lane);
#pragma unroll
      for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < RB; ++j) v[i][j] *= scale;
      store_coefficients<R, RB>(U + r0 * rank, v, n, rank, lane);
    }
    warp_row_products<R, RB, true>(v, dy + r0 * out, out, n, B, rank, lane);
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < RB; ++j) v[i][j] *= scale;
    if (DU) store_coefficients<R, RB>(DU + r0 * rank, v, n, rank, lane);
    if (dx) warp_rank_update<R, RB, false>(dx + r0 * in, in, n, v, A, rank, lane);
  }
}

// partial[chunk][j][col] for col < in: sum over the chunk's rows of DU[row][j] x[row][col]; for in <= col < in + out:
// of U[row][j] dy[row][col - in]. Block (tile, chunk); tiles [0, tiles_x) cover x's columns, the rest dy's.
template <int RB>
__global__ void lora_columns_kernel(float* __restrict__ partial, const float* __restrict__ x,
                                    const float* __restrict__ dy, const float* __restrict__ U,
                                    const float* __restrict__ DU, int64_t rows, int in, int out, int rank,
                                    int chunk_rows, int tiles_x) {
  __shared__ float coef[kMaxChunkRows * RB];
  const bool of_x = int(blockIdx.x) < tiles_x;
  const int cols = of_x ? in : out;
  const int col = (of_x ? int(blockIdx.x) : int(blockIdx.x) - tiles_x) * kColumnThreads + int(threadIdx.x);
  const float* __restrict__ M = of_x ? x : dy;
  const float* __restrict__ C = of_x ? DU : U;
  const int64_t r0 = int64_t(blockIdx.y) * chunk_rows;
  const int n = int(min(int64_t(chunk_rows), rows - r0));
  for (int k = threadIdx.x; k < n * rank; k += blockDim.x) coef[k] = C[r0 * rank + k];
  __syncthreads();
  if (col >= cols) return;
  float acc[RB];
#pragma unroll
  for (int j = 0; j < RB; ++j) acc[j] = 0.f;
  const float* __restrict__ m = M + r0 * cols + col;
#pragma unroll 8
  for (int i = 0; i < n; ++i) {
    const float v = m[int64_t(i) * cols];
#pragma unroll
    for (int j = 0; j < RB; ++j)
      if (j < rank) acc[j] += coef[i * rank + j] * v;
  }
  float* __restrict__ p = partial + int64_t(blockIdx.y) * rank * (in + out) + (of_x ? 0 : in) + col;
#pragma unroll
  for (int j = 0; j < RB; ++j)
    if (j < rank) p[int64_t(j) * (in + out)] = acc[j];
}

// Blocks of a row kernel: a warp per row group of rows_per_warp rows (grid-stride past 65535 blocks).
template <int RB>
unsigned row_blocks(int64_t rows) {
  const int64_t groups = (rows + rows_per_warp<RB>() - 1) / rows_per_warp<RB>();
  return unsigned(std::clamp<int64_t>((groups + kRowWarps - 1) / kRowWarps, 1, 65535));
}

template <int RB>
int launch_forward(float* y, const float* x, const float* A, const float* B, float scale, int64_t rows, int in,
                   int out, int rank) {
  NCP_LAUNCH(lora_forward_kernel<RB>, row_blocks<RB>(rows), kRowWarps * 32, 0)(y, x, A, B, scale, rows, in, out, rank);
  return check_launch("lora_forward");
}

template <int RB>
int launch_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* A, const float* B,
                    float scale, int64_t rows, int in, int out, int rank) {
  const bool grads = dA || dB;
  // Chunks: enough column blocks to fill the device, at most kMaxChunkRows rows each (the shared coefficients).
  const int tiles_x = dA ? (in + kColumnThreads - 1) / kColumnThreads : 0;
  const int tiles = tiles_x + (dB ? (out + kColumnThreads - 1) / kColumnThreads : 0);
  const int64_t chunks_wanted = std::max<int64_t>(1, kColumnBlocksWanted / std::max(tiles, 1));
  const int chunk_rows =
      int(std::clamp<int64_t>((rows + chunks_wanted - 1) / chunks_wanted, kMinChunkRows, kMaxChunkRows));
  const int64_t chunks = grads ? (rows + chunk_rows - 1) / chunk_rows : 0;
  const int64_t width = int64_t(in) + out;
  float *U = nullptr, *DU = nullptr, *partial = nullptr;
  if (grads) {
    float* buf = nullptr;
    const size_t floats = size_t(2 * rows * rank + chunks * rank * width);
    NCP_TRY(scratch(0, floats * sizeof(float), reinterpret_cast<void**>(&buf)));
    DU = buf;
    if (dB) U = buf + rows * rank;
    partial = buf + 2 * rows * rank;
  }
  NCP_LAUNCH(lora_rows_kernel<RB>, row_blocks<RB>(rows), kRowWarps * 32, 0)(U, DU, dx, dy, x, A, B, scale, rows, in,
                                                                           out, rank);
  NCP_TRY(check_launch("lora_backward"));
  if (!grads) return NCP_CUDA_OK;
  NCP_LAUNCH(lora_columns_kernel<RB>, dim3(unsigned(tiles), unsigned(chunks)), kColumnThreads, 0)(
      partial, x, dy, U, DU, rows, in, out, rank, chunk_rows, tiles_x);
  NCP_TRY(check_launch("lora_backward"));
  const int64_t n = rank * width;
  return launch_each("lora_backward", n, [=] __device__(int64_t k) {
    const int64_t j = k / width, col = k - j * width;
    if (col < in ? !dA : !dB) return;
    double sum = 0;  // the chunks in order: the same sum on every run
    for (int64_t c = 0; c < chunks; ++c) sum += double(partial[c * rank * width + k]);
    if (col < in)
      dA[j * in + col] += float(sum);
    else
      dB[(col - in) * rank + j] += float(sum);
  });
}

// Ranks past kMaxFusedRank: the GEMM chain of cpu/linear.cpp (u and du in scratch).
int forward_by_gemms(float* y, const float* x, const float* A, const float* B, float scale, int64_t rows,
                     int64_t in, int64_t out, int64_t rank) {
  float* u = nullptr;
  NCP_TRY(scratch(0, size_t(rows * rank) * sizeof(float), reinterpret_cast<void**>(&u)));
  NCP_TRY(gemm_batched(false, true, rows, rank, in, 1.f, x, in, 0, A, in, 0, 0.f, u, rank, 0, 1));
  return gemm_batched(false, true, rows, out, rank, scale, u, rank, 0, B, rank, 0, 1.f, y, out, 0, 1);
}

int backward_by_gemms(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* A,
                      const float* B, float scale, int64_t rows, int64_t in, int64_t out, int64_t rank) {
  float* buf = nullptr;
  NCP_TRY(scratch(0, size_t(2 * rows * rank) * sizeof(float), reinterpret_cast<void**>(&buf)));
  float *du = buf, *u = buf + rows * rank;
  NCP_TRY(gemm_batched(false, false, rows, rank, out, scale, dy, out, 0, B, rank, 0, 0.f, du, rank, 0, 1));
  if (dA) NCP_TRY(gemm_batched(true, false, rank, in, rows, 1.f, du, rank, 0, x, in, 0, 1.f, dA, in, 0, 1));
  if (dB) {
    NCP_TRY(gemm_batched(false, true, rows, rank, in, 1.f, x, in, 0, A, in, 0, 0.f, u, rank, 0, 1));
    NCP_TRY(gemm_batched(true, false, out, rank, rows, scale, dy, out, 0, u, rank, 0, 1.f, dB, rank, 0, 1));
  }
  if (dx) NCP_TRY(gemm_batched(false, false, rows, in, rank, 1.f, du, rank, 0, A, in, 0, 1.f, dx, in, 0, 1));
  return NCP_CUDA_OK;
}

// Whether an adapter takes the fused kernels: only with NCP_CUDA_LORA=fused (ranks up to kMaxFusedRank). On an H200
// (2026-11-29, bench/gpu/README.md, run 4) the SDXL 1024² bf16 step ran 2.8% faster with every adapter on the GEMM
// chain (0.661 s) than on these kernels (0.680 s). Alone, with their operands warm in the 50 MB L2, the kernels had
// beaten the chain at rank 4 and 8 on 2048 and 8192 rows (1.2-1.6x) but lost on the 154 rows of the cross-attention
// keys and values (0.8-0.9x: 20 warps on 132 SMs) and at rank 16 (0.4x) and 32 (0.05x: a warp then carries one
// row and rereads all of A and B for it). In the step, with x and dy coming from HBM, a warp's few loads in flight
// do not hide the latency that cuBLAS's pipelined tiles do. ncp_bench lora now times cold operands
// (model/lora_bench.cpp) and scripts/gpu-quick.sh times the step both ways, for the next GPU session.
bool takes_fused_kernels(int64_t rank) {
  const char* env = std::getenv("NCP_CUDA_LORA");
  return rank <= kMaxFusedRank && env && std::strcmp(env, "fused") == 0;
}

int check_shape(const char* op, int64_t rows, int64_t in, int64_t out, int64_t rank) {
  NCP_REQUIRE(rows >= 0 && in >= 1 && out >= 1 && rank >= 1 && in < (int64_t(1) << 30) && out < (int64_t(1) << 30),
              "%s: bad shape (rows %lld, in %lld, out %lld, rank %lld)", op, (long long)rows, (long long)in,
              (long long)out, (long long)rank);
  return NCP_CUDA_OK;
}

}  // namespace

int lora_forward(float* y, const float* x, const float* A, const float* B, float scale, int64_t rows, int64_t in,
                 int64_t out, int64_t rank) {
  NCP_TRY(check_shape("lora_forward", rows, in, out, rank));
  NCP_REQUIRE(y && x && A && B, "lora_forward: NULL y, x, A or B");
  if (rows == 0) return NCP_CUDA_OK;
  if (!takes_fused_kernels(rank)) return forward_by_gemms(y, x, A, B, scale, rows, in, out, rank);
  const int i = int(in), o = int(out), r = int(rank);
  if (rank <= 4) return launch_forward<4>(y, x, A, B, scale, rows, i, o, r);
  if (rank <= 8) return launch_forward<8>(y, x, A, B, scale, rows, i, o, r);
  if (rank <= 16) return launch_forward<16>(y, x, A, B, scale, rows, i, o, r);
  return launch_forward<32>(y, x, A, B, scale, rows, i, o, r);
}

int lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* A, const float* B,
                  float scale, int64_t rows, int64_t in, int64_t out, int64_t rank) {
  NCP_TRY(check_shape("lora_backward", rows, in, out, rank));
  NCP_REQUIRE(dy && A && B, "lora_backward: NULL dy, A or B");
  NCP_REQUIRE(x || (!dA && !dB), "lora_backward: the weight gradients need x");
  if (rows == 0 || (!dx && !dA && !dB)) return NCP_CUDA_OK;
  if (!takes_fused_kernels(rank)) return backward_by_gemms(dx, dA, dB, dy, x, A, B, scale, rows, in, out, rank);
  const int i = int(in), o = int(out), r = int(rank);
  if (rank <= 4) return launch_backward<4>(dx, dA, dB, dy, x, A, B, scale, rows, i, o, r);
  if (rank <= 8) return launch_backward<8>(dx, dA, dB, dy, x, A, B, scale, rows, i, o, r);
  if (rank <= 16) return launch_backward<16>(dx, dA, dB, dy, x, A, B, scale, rows, i, o, r);
  return launch_backward<32>(dx, dA, dB, dy, x, A, B, scale, rows, i, o, r);
}

}  // namespace ncp::cuda
