// Native micro-benchmarks behind `npm run bench`: median GFLOP/s of the float kernels over `reps` timed runs
// after one warm-up, on deterministic random data.
#pragma once
#include <cstdint>

#include "cpu/ops.h"

namespace ncp::cpu {

// C[M, N] = A[M, K] B[K, N] through gemm<float> (whatever gemm_provider() names); 2 M N K FLOPs per run.
double bench_gemm_gflops(int64_t M, int64_t N, int64_t K, int reps);
// conv2d_forward<float> with bias, or (backward) conv2d_backward<float> computing dx, dW and db; FLOPs counted
// as 2 N Cout Ho Wo Cin k k for the forward and twice that (data + weights) for the backward.
double bench_conv2d_gflops(const Conv2dShape& s, bool backward, int reps);

}  // namespace ncp::cpu
