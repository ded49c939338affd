// Elementwise activations and GEGLU; the float formulas are the CPU ones (native/cpu/activations.cpp).
#include "cuda/common.cuh"
#include "cuda/entries.h"

namespace ncp::cuda {
namespace {

constexpr float kSqrt1_2 = 0.70710678118654752440f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1 / sqrt(2 pi)
constexpr float kSqrt2_Pi = 0.79788456080286535588f;    // sqrt(2 / pi)
constexpr float kTanhCubic = 0.044715f;
constexpr float kQuickGelu = 1.702f;

__device__ inline float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * kSqrt1_2)); }
__device__ inline float gelu_erf_grad(float x) {
  return 0.5f * (1.f + erff(x * kSqrt1_2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
}

template <int A>
__device__ float apply(float x) {
  if constexpr (A == NCP_CUDA_ACT_SILU) {
    return silu(x);
  } else if constexpr (A == NCP_CUDA_ACT_GELU_ERF) {
    return gelu_erf(x);
  } else if constexpr (A == NCP_CUDA_ACT_GELU_TANH) {
    return 0.5f * x * (1.f + tanhf(kSqrt2_Pi * (x + kTanhCubic * x * x * x)));
  } else {
    return x * sigmoid(kQuickGelu * x);
  }
}

template <int A>
__device__ float derivative(float x) {
  if constexpr (A == NCP_CUDA_ACT_SILU) {
    return silu_grad(x);
  } else if constexpr (A == NCP_CUDA_ACT_GELU_ERF) {
    return gelu_erf_grad(x);
  } else if constexpr (A == NCP_CUDA_ACT_GELU_TANH) {
    const float th = tanhf(kSqrt2_Pi * (x + kTanhCubic * x * x * x));
    return 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * kSqrt2_Pi * (1.f + 3.f * kTanhCubic * x * x);
  } else {
    const float s = sigmoid(kQuickGelu * x);
    return s + kQuickGelu * x * s * (1.f - s);
  }
}

template <int A>
int forward(float* y, const float* x, int64_t n) {
  return launch_each("activation_forward", n, [=] __device__(int64_t i) { y[i] = apply<A>(x[i]); });
}

template <int A>
int backward(float* dx, const float* dy, const float* x, int64_t n) {
  return launch_each("activation_backward", n, [=] __device__(int64_t i) { dx[i] += dy[i] * derivative<A>(x[i]); });
}

}  // namespace

int activation_forward(int32_t activation, float* y, const float* x, int64_t n) {
  NCP_REQUIRE(n >= 0, "activation_forward: negative size %lld", (long long)n);
  switch (activation) {
    case NCP_CUDA_ACT_SILU: return forward<NCP_CUDA_ACT_SILU>(y, x, n);
    case NCP_CUDA_ACT_GELU_ERF: return forward<NCP_CUDA_ACT_GELU_ERF>(y, x, n);
    case NCP_CUDA_ACT_GELU_TANH: return forward<NCP_CUDA_ACT_GELU_TANH>(y, x, n);
    case NCP_CUDA_ACT_QUICK_GELU: return forward<NCP_CUDA_ACT_QUICK_GELU>(y, x, n);
  }
  return fail(NCP_CUDA_EINVAL, "activation_forward: unknown activation %d", int(activation));
}

int activation_backward(int32_t activation, float* dx, const float* dy, const float* x, int64_t n) {
  NCP_REQUIRE(n >= 0, "activation_backward: negative size %lld", (long long)n);
  if (!dx) return NCP_CUDA_OK;
  switch (activation) {
    case NCP_CUDA_ACT_SILU: return backward<NCP_CUDA_ACT_SILU>(dx, dy, x, n);
    case NCP_CUDA_ACT_GELU_ERF: return backward<NCP_CUDA_ACT_GELU_ERF>(dx, dy, x, n);
    case NCP_CUDA_ACT_GELU_TANH: return backward<NCP_CUDA_ACT_GELU_TANH>(dx, dy, x, n);
    case NCP_CUDA_ACT_QUICK_GELU: return backward<NCP_CUDA_ACT_QUICK_GELU>(dx, dy, x, n);
  }
  return fail(NCP_CUDA_EINVAL, "activation_backward: unknown activation %d", int(activation));
}

int geglu_forward(float* y, const float* x, int64_t rows, int64_t D) {
  NCP_REQUIRE(rows >= 0 && D >= 0, "geglu_forward: negative size (rows %lld, D %lld)", (long long)rows, (long long)D);
  return launch_each("geglu_forward", rows * D, [=] __device__(int64_t i) {
    const float* hidden = x + (i / D) * 2 * D + i % D;
    y[i] = hidden[0] * gelu_erf(hidden[D]);
  });
}

int geglu_backward(float* dx, const float* dy, const float* x, int64_t rows, int64_t D) {
  NCP_REQUIRE(rows >= 0 && D >= 0, "geglu_backward: negative size (rows %lld, D %lld)", (long long)rows, (long long)D);
  if (!dx) return NCP_CUDA_OK;
  return launch_each("geglu_backward", rows * D, [=] __device__(int64_t i) {
    const int64_t at = (i / D) * 2 * D + i % D;  // hidden at x[at], its gate at x[at + D]
    dx[at] += dy[i] * gelu_erf(x[at + D]);
    dx[at + D] += dy[i] * x[at] * gelu_erf_grad(x[at + D]);
  });
}

}  // namespace ncp::cuda
