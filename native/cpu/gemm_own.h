// ncp's own GEMM kernels as a template-level interface, for callers that pack their own operands (gemm.cpp
// from strided matrices, conv2d.cpp straight from images). The ISA follows the GEMM backend: AVX-512 when it
// is OwnAvx512, or OpenBLAS on a CPU with AVX-512; AVX2 otherwise.
#pragma once
#include <type_traits>

#include "cpu/gemm_driver.h"
#include "cpu/gemm_kernels.h"

namespace ncp::cpu::gemm_detail {

// mc x kc of A fills about half of a 1 MiB L2. AVX-512 float, tuned on Zen 5 (48 KiB L1): a long kc (the
// B micro-panel then streams from L2) amortises the C tile traffic and the team's barriers, worth ~10% over
// an L1-sized kc of 192. The others keep the classic choice: kc x NR of B and two A micro-panels fit L1.
constexpr Blocking kBlockAvx512F32{252, 512, 4096}, kBlockAvx512F64{168, 160, 2048};
constexpr Blocking kBlockAvx2F32{288, 256, 4096}, kBlockAvx2F64{192, 256, 2048};

bool own_kernels_avx512();  // defined in gemm.cpp

// Calls run(MR, NR, micro_kernel, blocking) with MR and NR as std::integral_constant.
template <class T, class Run>
void with_own_kernel(const Run& run) {
  using MRa = std::integral_constant<int, kAvx512MR>;
  using MR2 = std::integral_constant<int, kAvx2MR>;
  if constexpr (std::is_same_v<T, float>) {
    if (own_kernels_avx512())
      run(MRa(), std::integral_constant<int, kAvx512NRf>(), &ukr_avx512_f32, kBlockAvx512F32);
    else
      run(MR2(), std::integral_constant<int, kAvx2NRf>(), &ukr_avx2_f32, kBlockAvx2F32);
  } else {
    static_assert(std::is_same_v<T, double>, "float or double");
    if (own_kernels_avx512())
      run(MRa(), std::integral_constant<int, kAvx512NRd>(), &ukr_avx512_f64, kBlockAvx512F64);
    else
      run(MR2(), std::integral_constant<int, kAvx2NRd>(), &ukr_avx2_f64, kBlockAvx2F64);
  }
}

}  // namespace ncp::cpu::gemm_detail
