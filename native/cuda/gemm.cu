// Float32 GEMM: cuBLAS when it could be opened, else a shared-memory tiled kernel of our own; and the linear
// layer on top of it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <string>

#include "cuda/common.cuh"
#include "cuda/cublas_loader.h"
#include "cuda/entries.h"
#include "cuda/half_types.cuh"

namespace ncp::cuda {
namespace {

// Each 256-thread block computes a 64x64 tile of C, staging 64x16 slices of op(A) and 16x64 of op(B) in
// shared memory; thread (ty, tx) owns the 4x4 outputs at rows ty + 16 i and columns tx + 16 j, so the
// shared-memory reads of a warp are broadcasts (A) or consecutive words (B).
constexpr int kTileM = 64, kTileN = 64, kTileK = 16, kSub = 4;

template <bool TA, bool TB>
__global__ void __launch_bounds__(256)
    sgemm_tiled(int64_t M, int64_t N, int64_t K, float alpha, const float* __restrict__ A, int64_t lda,
                int64_t stride_a, const float* __restrict__ B, int64_t ldb, int64_t stride_b, float beta,
                float* __restrict__ C, int64_t ldc, int64_t stride_c) {
  // +1 column: the loads that walk k write a column of the tile, which would otherwise hit one bank.
  __shared__ float As[kTileK][kTileM + 1];  // As[k][m] = op(A)[m0 + m][k0 + k]
  __shared__ float Bs[kTileK][kTileN + 1];  // Bs[k][n] = op(B)[k0 + k][n0 + n]
  A += blockIdx.z * stride_a;
  B += blockIdx.z * stride_b;
  C += blockIdx.z * stride_c;
  const int64_t m0 = int64_t(blockIdx.y) * kTileM, n0 = int64_t(blockIdx.x) * kTileN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[kSub][kSub] = {};

  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    // 1024 elements per tile, 4 per thread; the index that is contiguous in memory varies fastest.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int e = tid + r * 256;
      const int am = TA ? e % kTileM : e / kTileK, ak = TA ? e / kTileM : e % kTileK;
      const int64_t gm = m0 + am, gk = k0 + ak;
      As[ak][am] = (gm < M && gk < K) ? (TA ? A[gk * lda + gm] : A[gm * lda + gk]) : 0.f;
      const int bn = TB ? e / kTileK : e % kTileN, bk = TB ? e % kTileK : e / kTileN;
      const int64_t gn = n0 + bn, gkb = k0 + bk;
      Bs[bk][bn] = (gn < N && gkb < K) ? (TB ? B[gn * ldb + gkb] : B[gkb * ldb + gn]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTileK; ++k) {
      float a[kSub], b[kSub];
#pragma unroll
      for (int i = 0; i < kSub; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kSub; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kSub; ++i)
#pragma unroll
        for (int j = 0; j < kSub; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int64_t gn = n0 + tx + 16 * j;
      if (gn >= N) continue;
      float* c = C + gm * ldc + gn;
      *c = beta == 0.f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
    }
  }
}

int g_choice = NCP_CUDA_GEMM_AUTO;
std::string g_provider;

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

}  // namespace

int gemm_batched(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b, float beta, float* C, int64_t ldc,
                 int64_t stride_c, int64_t batch) {
  NCP_REQUIRE(M >= 0 && N >= 0 && K >= 0 && batch >= 0, "gemm: negative size (M %lld, N %lld, K %lld, batch %lld)",
              (long long)M, (long long)N, (long long)K, (long long)batch);
  if (M == 0 || N == 0 || batch == 0) return NCP_CUDA_OK;
  NCP_REQUIRE(C && (K == 0 || (A && B)), "gemm: NULL matrix pointer");
  NCP_REQUIRE(lda >= (ta ? M : K) && ldb >= (tb ? K : N) && ldc >= N,
              "gemm: leading dimension too small (lda %lld, ldb %lld, ldc %lld for M %lld, N %lld, K %lld, "
              "trans_a %d, trans_b %d)",
              (long long)lda, (long long)ldb, (long long)ldc, (long long)M, (long long)N, (long long)K, int(ta),
              int(tb));
  const bool use_cublas = g_choice == NCP_CUDA_GEMM_AUTO && K > 0 && cublas::available() && fits_int(M) &&
                          fits_int(N) && fits_int(K) && fits_int(lda) && fits_int(ldb) && fits_int(ldc) &&
                          fits_int(batch);
  if (use_cublas) {
    const int st = cublas::sgemm(ta, tb, int(M), int(N), int(K), alpha, A, int(lda), stride_a, B, int(ldb), stride_b,
                                 beta, C, int(ldc), stride_c, int(batch));
    if (st != 0)
      return fail(NCP_CUDA_ECUDA, "gemm: cuBLAS SGEMM failed with status %d (M %lld, N %lld, K %lld, batch %lld)", st,
                  (long long)M, (long long)N, (long long)K, (long long)batch);
    return check_launch("gemm (cuBLAS)");
  }
  const int64_t grid_m = (M + kTileM - 1) / kTileM;
  NCP_REQUIRE(grid_m <= 65535 && batch <= 65535, "gemm: M %lld or batch %lld too large for one launch",
              (long long)M, (long long)batch);
  const dim3 grid(unsigned((N + kTileN - 1) / kTileN), unsigned(grid_m), unsigned(batch));
  auto kernel = ta ? (tb ? sgemm_tiled<true, true> : sgemm_tiled<true, false>)
                   : (tb ? sgemm_tiled<false, true> : sgemm_tiled<false, false>);
  NCP_LAUNCH(kernel, grid, 256, 0)(M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c);
  return check_launch("gemm");
}

namespace {

// Elements a strided-batched operand spans: `rows` rows of `cols` used values at leading dimension ld, `batch`
// times `stride` apart (stride 0: one shared matrix).
int64_t operand_span(int64_t rows, int64_t cols, int64_t ld, int64_t stride, int64_t batch) {
  const int64_t one = (rows - 1) * ld + cols;
  return stride == 0 ? one : (batch - 1) * stride + one;
}

// dst = src widened from H when src_half, else the float src rounded to H's precision.
template <class H>
int to_precision_of(float* dst, const void* src, bool src_half, int64_t n) {
  if (src_half) {
    const H* p = static_cast<const H*>(src);
    return launch_each("gemm (half) widen", n, [=] __device__(int64_t i) { dst[i] = widen_half(p[i]); });
  }
  const float* p = static_cast<const float*>(src);
  return launch_each("gemm (half) round", n, [=] __device__(int64_t i) { dst[i] = widen_half(round_half<H>(p[i])); });
}

// The operand as H for cuBLAS: `src` itself when it already is, else a copy rounded to H in scratch `slot` (a float
// beyond fp16's 65504 becomes infinity there, which loss scaling catches).
template <class H>
int operand_of(int slot, const void* src, bool src_half, int64_t n, const void** out) {
  *out = src;
  if (src_half) return NCP_CUDA_OK;
  H* t = nullptr;
  NCP_TRY(scratch(slot, size_t(n) * sizeof(H), reinterpret_cast<void**>(&t)));
  const float* p = static_cast<const float*>(src);
  NCP_TRY(launch_each("gemm (half) operand", n, [=] __device__(int64_t i) { t[i] = round_half<H>(p[i]); }));
  *out = t;
  return NCP_CUDA_OK;
}

// The same for the half type `half` (NCP_CUDA_BF16 or NCP_CUDA_F16).
int to_half_precision(float* dst, const void* src, bool src_half, int32_t half, int64_t n) {
  return half == NCP_CUDA_F16 ? to_precision_of<__half>(dst, src, src_half, n)
                              : to_precision_of<__nv_bfloat16>(dst, src, src_half, n);
}
int half_operand(int slot, const void* src, bool src_half, int32_t half, int64_t n, const void** out) {
  return half == NCP_CUDA_F16 ? operand_of<__half>(slot, src, src_half, n, out)
                              : operand_of<__nv_bfloat16>(slot, src, src_half, n, out);
}

bool valid_dtype(int32_t d) { return d == NCP_CUDA_F32 || d == NCP_CUDA_BF16 || d == NCP_CUDA_F16; }

}  // namespace

int gemm_batched_mixed(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int32_t a_dtype,
                       int64_t lda, int64_t stride_a, const void* B, int32_t b_dtype, int64_t ldb, int64_t stride_b,
                       float beta, float* C, int64_t ldc, int64_t stride_c, int64_t batch) {
  NCP_REQUIRE(valid_dtype(a_dtype) && valid_dtype(b_dtype), "gemm (mixed): unknown dtype %d or %d", int(a_dtype),
              int(b_dtype));
  if (a_dtype == NCP_CUDA_F32 && b_dtype == NCP_CUDA_F32)
    return gemm_batched(ta, tb, M, N, K, alpha, static_cast<const float*>(A), lda, stride_a,
                        static_cast<const float*>(B), ldb, stride_b, beta, C, ldc, stride_c, batch);
  NCP_REQUIRE(a_dtype == NCP_CUDA_F32 || b_dtype == NCP_CUDA_F32 || a_dtype == b_dtype,
              "gemm (mixed): a bf16 operand times an fp16 one");
  const int32_t half = a_dtype != NCP_CUDA_F32 ? a_dtype : b_dtype;
  const bool a_half = a_dtype != NCP_CUDA_F32, b_half = b_dtype != NCP_CUDA_F32;
  const char* name = half == NCP_CUDA_F16 ? "fp16" : "bf16";
  NCP_REQUIRE(M >= 0 && N >= 0 && K >= 0 && batch >= 0, "gemm (%s): negative size", name);
  if (M == 0 || N == 0 || batch == 0) return NCP_CUDA_OK;
  const int64_t span_a = operand_span(ta ? K : M, ta ? M : K, lda, stride_a, batch);
  const int64_t span_b = operand_span(tb ? N : K, tb ? K : N, ldb, stride_b, batch);
  const bool ex = g_choice == NCP_CUDA_GEMM_AUTO && K > 0 && cublas::half_available() && fits_int(M) &&
                  fits_int(N) && fits_int(K) && fits_int(lda) && fits_int(ldb) && fits_int(ldc) && fits_int(batch);
  if (ex) {
    // Round the float operand(s) to the half type once, then one half x half -> float GEMM.
    const void *a = nullptr, *b = nullptr;
    NCP_TRY(half_operand(2, A, a_half, half, span_a, &a));
    NCP_TRY(half_operand(3, B, b_half, half, span_b, &b));
    const int st = cublas::gemm_half(half == NCP_CUDA_F16, ta, tb, int(M), int(N), int(K), alpha, a, int(lda),
                                     stride_a, b, int(ldb), stride_b, beta, C, int(ldc), stride_c, int(batch));
    if (st != 0)
      return fail(NCP_CUDA_ECUDA, "gemm (%s): cublasGemmStridedBatchedEx failed with status %d (M %lld, N %lld, "
                  "K %lld, batch %lld)", name, st, (long long)M, (long long)N, (long long)K, (long long)batch);
    return check_launch(half == NCP_CUDA_F16 ? "gemm (fp16, cuBLAS)" : "gemm (bf16, cuBLAS)");
  }
  // No half GEMM available: the same arithmetic in the float kernel, on operands widened from the half type or
  // rounded to its precision, so both providers multiply the same values.
  float *a = nullptr, *b = nullptr;
  NCP_TRY(scratch(2, size_t(span_a) * sizeof(float), reinterpret_cast<void**>(&a)));
  NCP_TRY(scratch(3, size_t(span_b) * sizeof(float), reinterpret_cast<void**>(&b)));
  NCP_TRY(to_half_precision(a, A, a_half, half, span_a));
  NCP_TRY(to_half_precision(b, B, b_half, half, span_b));
  return gemm_batched(ta, tb, M, N, K, alpha, a, lda, stride_a, b, ldb, stride_b, beta, C, ldc, stride_c, batch);
}

const char* gemm_provider() {
  const bool own = g_choice == NCP_CUDA_GEMM_OWN || !cublas::available();
  if (own) {
    g_provider = "ncp-tiled 64x64x16 fp32";
    g_provider += g_choice == NCP_CUDA_GEMM_OWN ? " (selected)" : std::string(" (") + cublas::description() + ")";
  } else {
    g_provider = std::string(cublas::description()) + (cublas::tf32() ? " tf32" : " fp32");
  }
  return g_provider.c_str();
}

int select_gemm(int32_t choice) {
  NCP_REQUIRE(choice == NCP_CUDA_GEMM_AUTO || choice == NCP_CUDA_GEMM_OWN, "select_gemm: unknown choice %d",
              int(choice));
  g_choice = choice;
  return NCP_CUDA_OK;
}

int set_tf32(int32_t allow) {
  cublas::set_tf32(allow != 0);
  return NCP_CUDA_OK;
}

int gemm(int32_t trans_a, int32_t trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
         const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  return gemm_batched(trans_a != 0, trans_b != 0, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

int linear_forward(float* y, const float* x, const float* W, const float* b, int64_t rows, int64_t in, int64_t out) {
  NCP_REQUIRE(rows >= 0 && in >= 0 && out >= 0, "linear_forward: negative size (rows %lld, in %lld, out %lld)",
              (long long)rows, (long long)in, (long long)out);
  NCP_TRY(gemm_batched(false, true, rows, out, in, 1.f, x, in, 0, W, in, 0, 0.f, y, out, 0, 1));
  return b ? add_channel_vector(y, b, rows, out, 1) : NCP_CUDA_OK;
}

int gemm_mixed(int32_t trans_a, int32_t trans_b, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
               int32_t a_dtype, int64_t lda, const void* B, int32_t b_dtype, int64_t ldb, float beta, float* C,
               int64_t ldc) {
  NCP_REQUIRE(valid_dtype(a_dtype) && valid_dtype(b_dtype),
              "gemm_mixed: dtypes must be NCP_CUDA_F32, NCP_CUDA_BF16 or NCP_CUDA_F16 (got %d, %d)", int(a_dtype),
              int(b_dtype));
  return gemm_batched_mixed(trans_a != 0, trans_b != 0, M, N, K, alpha, A, a_dtype, lda, 0, B, b_dtype, ldb, 0, beta,
                            C, ldc, 0, 1);
}

int linear_forward_w(float* y, const float* x, const void* W, int32_t w_dtype, const float* b, int64_t rows,
                     int64_t in, int64_t out) {
  NCP_REQUIRE(rows >= 0 && in >= 0 && out >= 0, "linear_forward: negative size (rows %lld, in %lld, out %lld)",
              (long long)rows, (long long)in, (long long)out);
  NCP_TRY(gemm_batched_mixed(false, true, rows, out, in, 1.f, x, NCP_CUDA_F32, in, 0, W, w_dtype, in, 0, 0.f, y, out,
                             0, 1));
  return b ? add_channel_vector(y, b, rows, out, 1) : NCP_CUDA_OK;
}

int linear_backward_input_w(float* dx, const float* dy, const void* W, int32_t w_dtype, int64_t rows, int64_t in,
                            int64_t out) {
  NCP_REQUIRE(rows >= 0 && in >= 0 && out >= 0, "linear_backward: negative size (rows %lld, in %lld, out %lld)",
              (long long)rows, (long long)in, (long long)out);
  return gemm_batched_mixed(false, false, rows, in, out, 1.f, dy, NCP_CUDA_F32, out, 0, W, w_dtype, in, 0, 1.f, dx,
                            in, 0, 1);
}

int linear_backward(float* dx, float* dW, float* db, const float* dy, const float* x, const float* W, int64_t rows,
                    int64_t in, int64_t out) {
  NCP_REQUIRE(rows >= 0 && in >= 0 && out >= 0, "linear_backward: negative size (rows %lld, in %lld, out %lld)",
              (long long)rows, (long long)in, (long long)out);
  if (dx) NCP_TRY(gemm_batched(false, false, rows, in, out, 1.f, dy, out, 0, W, in, 0, 1.f, dx, in, 0, 1));
  if (dW) NCP_TRY(gemm_batched(true, false, out, in, rows, 1.f, dy, out, 0, x, in, 0, 1.f, dW, in, 0, 1));
  return db ? col_sum_add(db, dy, rows, out) : NCP_CUDA_OK;
}

}  // namespace ncp::cuda
