// Micro-kernels of the blocked GEMM (gemm_driver.h). Each computes one MR x NR tile of C from a packed A
// panel (kc steps of MR values) and a packed B panel (kc steps of NR values):
//   C[i, j] = sum_p a[p*MR + i] * b[p*NR + j] + beta * C[i, j]     (beta == 0: C is written, never read)
// The AVX-512 kernels are compiled for AVX-512 by function attribute while the rest of the library targets
// x86-64-v3, so they may only be called after cpu_has_avx512() said yes.
#pragma once
#include <cstdint>

// The micro-kernels read only the driver's packed panels and write full tiles of C (edge tiles go through the
// driver's own buffer), so AddressSanitizer is turned off inside them: instrumented, they were the sanitized test
// build's hottest code (37% of a training case's time; 20 steps of it went from 13.6 s to 11.2 s without).
// The driver and the packing, which index the caller's memory, stay instrumented; the gemm tests check every
// tile against a naive product on odd sizes.
#define NCP_MICROKERNEL_NO_ASAN __attribute__((no_sanitize("address")))

namespace ncp::cpu::gemm_detail {

template <class T>
using MicroKernel = void (*)(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T beta);

// Tile shapes: MR * NR / lanes accumulators plus the B vectors of one step must fit the register file
// (32 zmm with AVX-512, 16 ymm with AVX2).
constexpr int kAvx512MR = 14, kAvx512NRf = 32, kAvx512NRd = 16;
constexpr int kAvx2MR = 6, kAvx2NRf = 16, kAvx2NRd = 8;

bool cpu_has_avx512();

void ukr_avx512_f32(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float beta);
void ukr_avx512_f64(int64_t kc, const double* a, const double* b, double* c, int64_t ldc, double beta);
void ukr_avx2_f32(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float beta);
void ukr_avx2_f64(int64_t kc, const double* a, const double* b, double* c, int64_t ldc, double beta);

}  // namespace ncp::cpu::gemm_detail
