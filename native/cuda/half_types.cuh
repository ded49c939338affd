// The two 16-bit float types' conversions on the device, under one name, so a template serves bf16 and fp16 alike:
// widen_half(h) to float, round_half<H>(f) to H (round to nearest even; fp16 overflows to infinity).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ncp::cuda {

__device__ inline float widen_half(__half h) { return __half2float(h); }
__device__ inline float widen_half(__nv_bfloat16 h) { return __bfloat162float(h); }
template <class H>
__device__ inline H round_half(float f);
template <>
__device__ inline __half round_half<__half>(float f) { return __float2half_rn(f); }
template <>
__device__ inline __nv_bfloat16 round_half<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }

}  // namespace ncp::cuda
