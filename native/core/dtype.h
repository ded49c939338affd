// Storage dtypes of model files and the conversions to the float32 the engine computes in.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace ncp {

enum class DType { F32, F16, BF16, F64, I64, I32 };

const char* dtype_name(DType t);  // safetensors spelling: "F32", "F16", "BF16", ...
bool dtype_from_name(const std::string& name, DType* out);
size_t dtype_size(DType t);

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = mant;
      do { ++e; m <<= 1; } while ((m & 0x400u) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((m & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even, with overflow to inf and NaN kept NaN.
uint16_t f32_to_f16(float f);

inline float bf16_to_f32(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even (what __float2bfloat16_rn does), NaN kept NaN. Inline: the bf16 tape rounds every value.
inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // keep NaN quiet
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// Converts n values stored as `from` into float32 (src may be unaligned, as in an mmap'd file).
void convert_to_f32(float* dst, const void* src, DType from, int64_t n);
void convert_from_f32(void* dst, const float* src, DType to, int64_t n);

}  // namespace ncp
