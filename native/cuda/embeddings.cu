// Sinusoidal timestep embedding with the CPU's (and diffusers') rounding: frequencies and t * freq in float32,
// sin and cos of that float argument in double.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/entries.h"

namespace ncp::cuda {

int timestep_embedding(float* y, const float* t, int64_t N, int64_t dim, int32_t flip_sin_to_cos, double freq_shift,
                       double max_period) {
  NCP_REQUIRE(N >= 0 && dim >= 1, "timestep_embedding: bad shape (N %lld, dim %lld)", (long long)N, (long long)dim);
  const int64_t half = dim / 2;
  NCP_REQUIRE(half == 0 || double(half) != freq_shift, "timestep_embedding: freq_shift equals half the dim (%lld)",
              (long long)half);
  const float neg_log_period = float(-std::log(max_period));
  const float denom = float(double(half) - freq_shift);
  const bool flip = flip_sin_to_cos != 0;
  return launch_each("timestep_embedding", N * dim, [=] __device__(int64_t e) {
    const int64_t n = e / dim, i = e % dim;
    if (i >= 2 * half) {  // odd dim: zero last column
      y[e] = 0.f;
      return;
    }
    const int64_t f = i < half ? i : i - half;
    const float freq = float(exp(double(__fdiv_rn(__fmul_rn(neg_log_period, float(f)), denom))));
    const double arg = double(__fmul_rn(t[n], freq));
    const bool use_sin = (i < half) != flip;
    y[e] = float(use_sin ? sin(arg) : cos(arg));
  });
}

}  // namespace ncp::cuda
