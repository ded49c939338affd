// Nearest-neighbour 2x upsampling (diffusers Upsample2D with interpolate(scale_factor=2, mode="nearest")).
#include <algorithm>

#include "core/threads.h"
#include "cpu/ops.h"

namespace ncp::cpu {

template <class T>
void upsample_nearest2x_forward(T* y, const T* x, int64_t N, int64_t C, int64_t H, int64_t W) {
  const int64_t W2 = 2 * W;
  parallel_for(N * C * H, std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {  // r indexes input rows over (n, c, h)
      const T* src = x + r * W;
      T* dst = y + r * 2 * W2;
      for (int64_t j = 0; j < W; ++j) dst[2 * j] = dst[2 * j + 1] = src[j];
      std::copy(dst, dst + W2, dst + W2);
    }
  });
}

template <class T>
void upsample_nearest2x_backward(T* dx, const T* dy, int64_t N, int64_t C, int64_t H, int64_t W) {
  if (!dx) return;
  const int64_t W2 = 2 * W;
  parallel_for(N * C * H, std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* top = dy + r * 2 * W2;
      const T* bottom = top + W2;
      T* dst = dx + r * W;
      for (int64_t j = 0; j < W; ++j) dst[j] += (top[2 * j] + top[2 * j + 1]) + (bottom[2 * j] + bottom[2 * j + 1]);
    }
  });
}

template void upsample_nearest2x_forward<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t);
template void upsample_nearest2x_forward<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t);
template void upsample_nearest2x_backward<float>(float*, const float*, int64_t, int64_t, int64_t, int64_t);
template void upsample_nearest2x_backward<double>(double*, const double*, int64_t, int64_t, int64_t, int64_t);

}  // namespace ncp::cpu
