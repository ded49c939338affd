#include "cpu/bench.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace ncp::cpu {
namespace {

std::vector<float> random_vector(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

}  // namespace

double bench_gemm_gflops(int64_t M, int64_t N, int64_t K, int reps) {
  check(M > 0 && N > 0 && K > 0, "NCP_EINVAL",
        "bench_gemm: sizes must be positive, got M=" + std::to_string(M) + " N=" + std::to_string(N) +
            " K=" + std::to_string(K));
  const auto A = random_vector(M * K, 1), B = random_vector(K * N, 2);
  std::vector<float> C(static_cast<size_t>(M * N));
  const double s = median_seconds(reps, [&] {
    gemm<float>(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  });
  return 2.0 * double(M) * double(N) * double(K) / s * 1e-9;
}

double bench_conv2d_gflops(const Conv2dShape& s, bool backward, int reps) {
  const int64_t Ho = s.Ho(), Wo = s.Wo();
  check(s.N > 0 && s.Cin > 0 && s.Cout > 0 && s.k > 0 && Ho > 0 && Wo > 0, "NCP_EINVAL",
        "bench_conv2d: invalid shape");
  const auto x = random_vector(s.N * s.Cin * s.H * s.W, 3), W = random_vector(s.Cout * s.Cin * s.k * s.k, 4),
             b = random_vector(s.Cout, 5), dy = random_vector(s.N * s.Cout * Ho * Wo, 6);
  std::vector<float> y(dy.size()), dx(x.size()), dW(W.size()), db(b.size());
  const double seconds = median_seconds(reps, [&] {
    if (backward)
      conv2d_backward<float>(dx.data(), dW.data(), db.data(), dy.data(), x.data(), W.data(), s);
    else
      conv2d_forward<float>(y.data(), x.data(), W.data(), b.data(), s);
  });
  const double flops = 2.0 * double(s.N * s.Cout * Ho * Wo) * double(s.Cin * s.k * s.k) * (backward ? 2 : 1);
  return flops / seconds * 1e-9;
}

}  // namespace ncp::cpu
