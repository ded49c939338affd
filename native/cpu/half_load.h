// Reading F16 and BF16 values as float32 in the GEMM packers, so that a half-precision model file can stay
// mapped and be widened as its panels are packed: no float32 copy of the model is ever made, and the packed
// panels hold exactly the values a float32 copy would have held (widening is exact).
//
// The source types are tags over the stored 16 bits. Values are read through memcpy / unaligned loads: a
// tensor inside a safetensors mapping need not be 2-byte aligned, and the sanitizer builds check alignment.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "cpu/ops.h"

namespace ncp::cpu {

struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

// One value. F16 goes through F16C (x86-64-v3), the same instruction as the 8-wide load, so scalar edges and
// vector interiors agree bit for bit.
inline float load_f32(const float* p) { return *p; }
inline float load_f32(const f16_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return _cvtsh_ss(b);
}
inline float load_f32(const bf16_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Eight consecutive values.
inline __m256 load8_f32(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8_f32(const f16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load8_f32(const bf16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

template <class S>
constexpr bool kIsHalf = std::is_same_v<S, f16_t> || std::is_same_v<S, bf16_t>;

template <class S>
constexpr DType stored_dtype() {
  return std::is_same_v<S, f16_t> ? DType::F16 : std::is_same_v<S, bf16_t> ? DType::BF16 : DType::F32;
}

// Calls f with w's data as a typed pointer: const float*, const f16_t* or const bf16_t*. `op` names the caller
// in the NCP_EDTYPE error for any other dtype.
template <class F>
void with_stored_type(const WeightRef& w, const char* op, const F& f) {
  switch (w.dtype) {
    case DType::F32: return f(static_cast<const float*>(w.data));
    case DType::F16: return f(static_cast<const f16_t*>(w.data));
    case DType::BF16: return f(static_cast<const bf16_t*>(w.data));
    default:
      throw Error("NCP_EDTYPE",
                  std::string(op) + ": weights stored as " + dtype_name(w.dtype) + " (float32, F16 or BF16 only)");
  }
}

}  // namespace ncp::cpu
