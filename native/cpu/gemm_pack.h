// Packing strided operands into the panel layout of the blocked GEMM (gemm_driver.h). The transposing case
// (the panel side runs across rows of the source: non-transposed A, transposed B, the im2col rows of the
// conv2d weight gradient) moves float 8 x 8 blocks through AVX2 registers instead of scattering single values.
// A float panel may be packed from F16/BF16 source values (half_load.h): they are widened on the way.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/half_load.h"

namespace ncp::cpu::gemm_detail {

// d[q * ld + i] = alpha * s[i * rs + q] for q < 8 and i < width (<= 8), where rows i >= live read as zero.
template <class S>
void transpose_8x8(float* d, int64_t ld, const S* s, int64_t rs, int live, float alpha, int width) {
  const __m256 va = _mm256_set1_ps(alpha);
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = i < live ? _mm256_mul_ps(va, load8_f32(s + i * rs)) : _mm256_setzero_ps();
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  const __m256 o[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                       _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                       _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                       _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
  if (width == 8) {
    for (int q = 0; q < 8; ++q) _mm256_storeu_ps(d + q * ld, o[q]);
    return;
  }
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(width), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int q = 0; q < 8; ++q) _mm256_maskstore_ps(d + q * ld, mask, o[q]);
}

// Packs `rows` rows (the MR or NR side) by kc columns of a strided matrix, element (r, p) at
// src[r * rs + p * ps], into panels of width R: dst[panel * panel_stride + p * R + r], scaled by alpha,
// zero-padded to R. panel_stride is R * kc for a whole block; larger when a caller packs it in k slices.
// S is T, or F16/BF16 for a float panel.
template <int R, class T, class S>
void pack_panels(T* dst, int64_t panel_stride, const S* src, int64_t rs, int64_t ps, int64_t rows, int64_t kc,
                 T alpha) {
  static_assert(std::is_same_v<S, T> || (kIsHalf<S> && std::is_same_v<T, float>), "source type");
  auto value = [](const S* p) -> T {
    if constexpr (kIsHalf<S>)
      return load_f32(p);
    else
      return *p;
  };
  for (int64_t r0 = 0; r0 < rows; r0 += R, dst += panel_stride, src += R * rs) {
    const int64_t nr = std::min<int64_t>(R, rows - r0);
    if (rs == 1 && nr == R) {
      if constexpr (kIsHalf<S>) {
        const __m256 va = _mm256_set1_ps(alpha);
        for (int64_t p = 0; p < kc; ++p) {
          int r = 0;
          for (; r + 8 <= R; r += 8) _mm256_storeu_ps(dst + p * R + r, _mm256_mul_ps(va, load8_f32(src + p * ps + r)));
          for (; r < R; ++r) dst[p * R + r] = alpha * load_f32(src + p * ps + r);
        }
      } else {
        for (int64_t p = 0; p < kc; ++p)
          for (int r = 0; r < R; ++r) dst[p * R + r] = alpha * src[p * ps + r];
      }
      continue;
    }
    int64_t p_done = 0;
    if constexpr (std::is_same_v<T, float>) {
      if (ps == 1) {
        // 8 x 8 blocks over every group of 8 panel rows (the last group zero-filling past nr up to R).
        p_done = kc / 8 * 8;
        for (int r = 0; r < R; r += 8) {
          const int live = int(std::clamp<int64_t>(nr - r, 0, 8)), width = std::min(8, R - r);
          for (int64_t p = 0; p < p_done; p += 8)
            transpose_8x8(dst + p * R + r, R, src + r * rs + p, rs, live, alpha, width);
        }
      }
    }
    // Scalar rest: read along p a few steps at a time so the strided writes stay within a few cache lines.
    constexpr int64_t kStep = 16;
    for (int64_t p0 = p_done; p0 < kc; p0 += kStep) {
      const int64_t p1 = std::min(kc, p0 + kStep);
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t p = p0; p < p1; ++p) dst[p * R + r] = alpha * value(src + r * rs + p * ps);
      for (int64_t r = nr; r < R; ++r)
        for (int64_t p = p0; p < p1; ++p) dst[p * R + r] = T(0);
    }
  }
}

}  // namespace ncp::cpu::gemm_detail
