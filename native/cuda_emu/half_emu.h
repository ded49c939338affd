// The device's 16-bit float types for code compiled as C++ on the CPU (the CUDA emulator, and the flash-kernel
// emulation test): storage structs with the conversion intrinsics the kernels call, rounding as the hardware
// does (to nearest even; fp16 overflows to infinity), through the same functions the CPU reference uses.
#pragma once
#include <cstdint>

#include "core/dtype.h"

struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {ncp::f32_to_bf16(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return ncp::bf16_to_f32(b.bits); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
inline __half __float2half_rn(float f) { return {ncp::f32_to_f16(f)}; }
inline float __half2float(__half h) { return ncp::f16_to_f32(h.bits); }
