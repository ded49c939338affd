// Native micro-benchmarks behind `npm run bench`: median GFLOP/s of the float kernels over `reps` timed runs
// after one warm-up, on deterministic random data.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/ops.h"

namespace ncp::cpu {

// Median seconds of fn over reps runs, after one untimed warm-up (first-touch page faults, pool start-up, scratch
// sizing). fn must wait for its own work (a GPU caller synchronises inside it).
template <class Fn>
double median_seconds(int reps, const Fn& fn) {
  check(reps > 0, "NCP_EINVAL", "bench: reps must be positive, got " + std::to_string(reps));
  fn();
  std::vector<double> seconds;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const size_t mid = seconds.size() / 2;
  return seconds.size() % 2 ? seconds[mid] : 0.5 * (seconds[mid - 1] + seconds[mid]);
}

// C[M, N] = A[M, K] B[K, N] through gemm<float> (whatever gemm_provider() names); 2 M N K FLOPs per run.
double bench_gemm_gflops(int64_t M, int64_t N, int64_t K, int reps);
// conv2d_forward<float> with bias, or (backward) conv2d_backward<float> computing dx, dW and db; FLOPs counted
// as 2 N Cout Ho Wo Cin k k for the forward and twice that (data + weights) for the backward.
double bench_conv2d_gflops(const Conv2dShape& s, bool backward, int reps);

}  // namespace ncp::cpu
