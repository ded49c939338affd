// AVX2/FMA GEMM micro-kernels (see gemm_kernels.h): the library's x86-64-v3 baseline, used when the CPU
// lacks AVX-512. 6 x 2 ymm accumulators + 2 B vectors + 1 broadcast fill 15 of the 16 ymm registers.
#include <immintrin.h>

#include "cpu/gemm_kernels.h"

namespace ncp::cpu::gemm_detail {

NCP_MICROKERNEL_NO_ASAN
void ukr_avx2_f32(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float beta) {
  constexpr int MR = kAvx2MR, NV = kAvx2NRf / 8;
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m256 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm256_load_ps(b + j * 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
    }
    a += MR;
    b += NV * 8;
  }
  const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      float* ci = c + i * ldc + j * 8;
      _mm256_storeu_ps(ci, beta == 0.0f ? acc[i][j] : _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), acc[i][j]));
    }
}

NCP_MICROKERNEL_NO_ASAN
void ukr_avx2_f64(int64_t kc, const double* a, const double* b, double* c, int64_t ldc, double beta) {
  constexpr int MR = kAvx2MR, NV = kAvx2NRd / 4;
  __m256d acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_setzero_pd();
  for (int64_t p = 0; p < kc; ++p) {
    __m256d bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm256_load_pd(b + j * 4);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256d av = _mm256_broadcast_sd(a + i);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_pd(av, bv[j], acc[i][j]);
    }
    a += MR;
    b += NV * 4;
  }
  const __m256d vb = _mm256_set1_pd(beta);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      double* ci = c + i * ldc + j * 4;
      _mm256_storeu_pd(ci, beta == 0.0 ? acc[i][j] : _mm256_fmadd_pd(vb, _mm256_loadu_pd(ci), acc[i][j]));
    }
}

}  // namespace ncp::cpu::gemm_detail
