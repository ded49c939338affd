#include "core/dtype.h"

#include <cmath>

namespace ncp {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
  }
  return "?";
}

bool dtype_from_name(const std::string& name, DType* out) {
  static const struct { const char* name; DType t; } table[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
      {"F64", DType::F64}, {"I64", DType::I64}, {"I32", DType::I32}};
  for (const auto& e : table) {
    if (name == e.name) {
      *out = e.t;
      return true;
    }
  }
  return false;
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F16:
    case DType::BF16: return 2;
    case DType::F32:
    case DType::I32: return 4;
    case DType::F64:
    case DType::I64: return 8;
  }
  return 0;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65536: inf
  if (abs < 0x38800000u) {
    // Subnormal or zero in half: scale into the 10-bit mantissa with round-to-nearest-even.
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23, m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 113 = 127 - 14, plus 13 mantissa bits
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

void convert_to_f32(float* dst, const void* src, DType from, int64_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(src);
  switch (from) {
    case DType::F32: std::memcpy(dst, p, size_t(n) * 4); return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return;
    case DType::I64:
      for (int64_t i = 0; i < n; ++i) {
        int64_t v;
        std::memcpy(&v, p + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::I32:
      for (int64_t i = 0; i < n; ++i) {
        int32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        dst[i] = static_cast<float>(v);
      }
      return;
  }
}

void convert_from_f32(void* dst, const float* src, DType to, int64_t n) {
  unsigned char* p = static_cast<unsigned char*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    switch (to) {
      case DType::F32: std::memcpy(p + 4 * i, src + i, 4); break;
      case DType::F16: { uint16_t h = f32_to_f16(src[i]); std::memcpy(p + 2 * i, &h, 2); break; }
      case DType::BF16: { uint16_t h = f32_to_bf16(src[i]); std::memcpy(p + 2 * i, &h, 2); break; }
      case DType::F64: { double d = src[i]; std::memcpy(p + 8 * i, &d, 8); break; }
      case DType::I64: { int64_t v = static_cast<int64_t>(std::llround(src[i])); std::memcpy(p + 8 * i, &v, 8); break; }
      case DType::I32: { int32_t v = static_cast<int32_t>(std::lround(src[i])); std::memcpy(p + 4 * i, &v, 4); break; }
    }
  }
}

}  // namespace ncp
