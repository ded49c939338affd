// Sinusoidal timestep embedding. diffusers computes the frequencies and t * freq in float32 and feeds that
// rounded argument to sin/cos; we round the same way (for T = double too) so embeddings match the reference
// to the last bit of the argument, which matters at t ~ 1000 where one float ulp of t * freq is ~6e-5.
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/threads.h"
#include "cpu/ops.h"

namespace ncp::cpu {

template <class T>
void timestep_embedding(T* y, const T* t, int64_t N, int64_t dim, bool flip_sin_to_cos, double freq_shift,
                        double max_period) {
  check(dim >= 1, "NCP_EINVAL", "timestep_embedding: dim must be >= 1, got " + std::to_string(dim));
  const int64_t half = dim / 2;
  check(half == 0 || double(half) != freq_shift, "NCP_EINVAL",
        "timestep_embedding: freq_shift equals half the dim (" + std::to_string(half) + ")");
  const float neg_log_period = float(-std::log(max_period));
  const float denom = float(double(half) - freq_shift);
  parallel_for(N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      T* row = y + n * dim;
      const float tn = float(t[n]);
      for (int64_t i = 0; i < half; ++i) {
        const float freq = float(std::exp(double(neg_log_period * float(i) / denom)));
        const double arg = double(tn * freq);
        const T s = T(std::sin(arg)), c = T(std::cos(arg));
        row[i] = flip_sin_to_cos ? c : s;
        row[half + i] = flip_sin_to_cos ? s : c;
      }
      if (dim % 2) row[dim - 1] = T(0);
    }
  });
}

template void timestep_embedding<float>(float*, const float*, int64_t, int64_t, bool, double, double);
template void timestep_embedding<double>(double*, const double*, int64_t, int64_t, bool, double, double);

}  // namespace ncp::cpu
