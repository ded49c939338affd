// Residual adds, skip-connection concat and the per-channel time-embedding bias of the resnet blocks.
#include <algorithm>

#include "core/dtype.h"
#include "core/threads.h"
#include "cpu/ops.h"
#include "cpu/vec.h"

namespace ncp::cpu {
namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per task: below this, threading costs more than it saves
}

void round_to_bf16(uint16_t* dst, const float* src, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dst[i] = f32_to_bf16(src[i]);
  });
}

void widen_bf16(float* dst, const uint16_t* src, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dst[i] = bf16_to_f32(src[i]);
  });
}

template <class T>
void add_forward(T* y, const T* a, const T* b, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = a[i] + b[i];
  });
}

template <class T>
void add_backward(T* da, T* db, const T* dy, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    if (da)
      for (int64_t i = i0; i < i1; ++i) da[i] += dy[i];
    if (db)
      for (int64_t i = i0; i < i1; ++i) db[i] += dy[i];
  });
}

template <class T>
void concat_channels_forward(T* y, const T* a, const T* b, int64_t N, int64_t Ca, int64_t Cb, int64_t HW) {
  const int64_t na = Ca * HW, nb = Cb * HW;
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      std::copy(a + n * na, a + (n + 1) * na, y + n * (na + nb));
      std::copy(b + n * nb, b + (n + 1) * nb, y + n * (na + nb) + na);
    }
  });
}

template <class T>
void concat_channels_backward(T* da, T* db, const T* dy, int64_t N, int64_t Ca, int64_t Cb, int64_t HW) {
  const int64_t na = Ca * HW, nb = Cb * HW;
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* src = dy + n * (na + nb);
      if (da)
        for (int64_t i = 0; i < na; ++i) da[n * na + i] += src[i];
      if (db)
        for (int64_t i = 0; i < nb; ++i) db[n * nb + i] += src[na + i];
    }
  });
}

template <class T>
void add_channel_bias_forward(T* y, const T* bias, int64_t N, int64_t C, int64_t HW) {
  parallel_for(N * C, std::max<int64_t>(1, kGrain / std::max<int64_t>(HW, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T bv = bias[p];
      T* row = y + p * HW;
      for (int64_t i = 0; i < HW; ++i) row[i] += bv;
    }
  });
}

template <class T>
void add_channel_bias_backward(T* dbias, const T* dy, int64_t N, int64_t C, int64_t HW) {
  if (!dbias) return;
  parallel_for(N * C, std::max<int64_t>(1, kGrain / std::max<int64_t>(HW, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* row = dy + p * HW;
      dbias[p] += T(vec::sum(HW, [&](int64_t i) { return double(row[i]); }));  // HW is 4096 at 64x64 latents
    }
  });
}

#define NCP_INSTANTIATE(T)                                                                              \
  template void add_forward<T>(T*, const T*, const T*, int64_t);                                        \
  template void add_backward<T>(T*, T*, const T*, int64_t);                                             \
  template void concat_channels_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t); \
  template void concat_channels_backward<T>(T*, T*, const T*, int64_t, int64_t, int64_t, int64_t);      \
  template void add_channel_bias_forward<T>(T*, const T*, int64_t, int64_t, int64_t);                   \
  template void add_channel_bias_backward<T>(T*, const T*, int64_t, int64_t, int64_t);
NCP_INSTANTIATE(float)
NCP_INSTANTIATE(double)
#undef NCP_INSTANTIATE

}  // namespace ncp::cpu
