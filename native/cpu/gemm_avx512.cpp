// AVX-512 GEMM micro-kernels (see gemm_kernels.h). Only these functions carry the avx512 target attribute:
// nothing inline or templated that other translation units also instantiate is compiled for AVX-512 here,
// so the linker can never pick an AVX-512 copy of shared code for a CPU without it.
#include <immintrin.h>

#include "cpu/gemm_kernels.h"

#define NCP_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma,avx2")))

namespace ncp::cpu::gemm_detail {

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
}

namespace {

// Per step: NV vector loads of B, MR broadcasts of A, MR * NV FMAs into independent accumulators.
NCP_MICROKERNEL_NO_ASAN
NCP_AVX512 inline void tile_f32(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float beta) {
  constexpr int MR = kAvx512MR, NV = kAvx512NRf / 16;
  __m512 acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_load_ps(b + j * 16);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
    a += MR;
    b += NV * 16;
  }
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      float* ci = c + i * ldc + j * 16;
      _mm512_storeu_ps(ci, beta == 0.0f ? acc[i][j] : _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci), acc[i][j]));
    }
}

NCP_MICROKERNEL_NO_ASAN
NCP_AVX512 inline void tile_f64(int64_t kc, const double* a, const double* b, double* c, int64_t ldc,
                                double beta) {
  constexpr int MR = kAvx512MR, NV = kAvx512NRd / 8;
  __m512d acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_pd();
  for (int64_t p = 0; p < kc; ++p) {
    __m512d bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_load_pd(b + j * 8);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const __m512d av = _mm512_set1_pd(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_pd(av, bv[j], acc[i][j]);
    }
    a += MR;
    b += NV * 8;
  }
  const __m512d vb = _mm512_set1_pd(beta);
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      double* ci = c + i * ldc + j * 8;
      _mm512_storeu_pd(ci, beta == 0.0 ? acc[i][j] : _mm512_fmadd_pd(vb, _mm512_loadu_pd(ci), acc[i][j]));
    }
}

}  // namespace

NCP_MICROKERNEL_NO_ASAN
NCP_AVX512 void ukr_avx512_f32(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float beta) {
  tile_f32(kc, a, b, c, ldc, beta);
}
NCP_MICROKERNEL_NO_ASAN
NCP_AVX512 void ukr_avx512_f64(int64_t kc, const double* a, const double* b, double* c, int64_t ldc,
                               double beta) {
  tile_f64(kc, a, b, c, ldc, beta);
}

}  // namespace ncp::cpu::gemm_detail
