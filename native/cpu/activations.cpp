// Elementwise activations of the SD U-Net (SiLU in resnets, GELU/GEGLU in transformer feed-forwards) and of
// CLIP text encoders (quick GELU). Formulas follow torch.nn.functional; derivatives are the exact ones.
// Float runs on the vectorisable exp/erf/tanh of vec.h, double on libm.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/threads.h"
#include "cpu/ops.h"
#include "cpu/vec.h"

namespace ncp::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;
constexpr double kSqrt1_2 = 0.70710678118654752440;     // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr double kSqrt2_Pi = 0.79788456080286535588;    // sqrt(2 / pi)
constexpr double kTanhCubic = 0.044715;
constexpr double kQuickGelu = 1.702;

template <class T>
T gelu_erf(T x) {
  return T(0.5) * x * (T(1) + vec::erf(x * T(kSqrt1_2)));
}
template <class T>
T gelu_erf_grad(T x) {
  return T(0.5) * (T(1) + vec::erf(x * T(kSqrt1_2))) + x * T(kInvSqrt2Pi) * vec::exp(T(-0.5) * x * x);
}

template <Activation A, class T>
T apply(T x) {
  if constexpr (A == Activation::SiLU) {
    return vec::silu(x);
  } else if constexpr (A == Activation::GeluErf) {
    return gelu_erf(x);
  } else if constexpr (A == Activation::GeluTanh) {
    return T(0.5) * x * (T(1) + vec::tanh(T(kSqrt2_Pi) * (x + T(kTanhCubic) * x * x * x)));
  } else {
    return x * vec::sigmoid(T(kQuickGelu) * x);
  }
}

template <Activation A, class T>
T derivative(T x) {
  if constexpr (A == Activation::SiLU) {
    return vec::silu_grad(x);
  } else if constexpr (A == Activation::GeluErf) {
    return gelu_erf_grad(x);
  } else if constexpr (A == Activation::GeluTanh) {
    const T th = vec::tanh(T(kSqrt2_Pi) * (x + T(kTanhCubic) * x * x * x));
    return T(0.5) * (T(1) + th) +
           T(0.5) * x * (T(1) - th * th) * T(kSqrt2_Pi) * (T(1) + T(3 * kTanhCubic) * x * x);
  } else {
    const T s = vec::sigmoid(T(kQuickGelu) * x);
    return s + T(kQuickGelu) * x * s * (T(1) - s);
  }
}

// Calls body with the activation as a compile-time constant, so each gets its own element loop.
template <class F>
void dispatch(Activation a, F&& body) {
  switch (a) {
    case Activation::SiLU: return body(std::integral_constant<Activation, Activation::SiLU>{});
    case Activation::GeluErf: return body(std::integral_constant<Activation, Activation::GeluErf>{});
    case Activation::GeluTanh: return body(std::integral_constant<Activation, Activation::GeluTanh>{});
    case Activation::QuickGelu: return body(std::integral_constant<Activation, Activation::QuickGelu>{});
  }
}

}  // namespace

template <class T>
void activation_forward(Activation a, T* y, const T* x, int64_t n) {
  dispatch(a, [&](auto kind) {
    parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) y[i] = apply<decltype(kind)::value>(x[i]);
    });
  });
}

template <class T>
void activation_backward(Activation a, T* dx, const T* dy, const T* x, int64_t n) {
  if (!dx) return;
  dispatch(a, [&](auto kind) {
    parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dx[i] += dy[i] * derivative<decltype(kind)::value>(x[i]);
    });
  });
}

template <class T>
void geglu_forward(T* y, const T* x, int64_t rows, int64_t D) {
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* hidden = x + r * 2 * D;
      const T* gate = hidden + D;
      for (int64_t j = 0; j < D; ++j) y[r * D + j] = hidden[j] * gelu_erf(gate[j]);
    }
  });
}

template <class T>
void geglu_backward(T* dx, const T* dy, const T* x, int64_t rows, int64_t D) {
  if (!dx) return;
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* hidden = x + r * 2 * D;
      const T* gate = hidden + D;
      const T* g = dy + r * D;
      T* dhidden = dx + r * 2 * D;
      T* dgate = dhidden + D;
      for (int64_t j = 0; j < D; ++j) {  // gelu and its derivative share Phi(gate), one erf per element
        const T z = gate[j], phi_cdf = T(0.5) * (T(1) + vec::erf(z * T(kSqrt1_2)));
        dhidden[j] += g[j] * z * phi_cdf;
        dgate[j] += g[j] * hidden[j] * (phi_cdf + z * T(kInvSqrt2Pi) * vec::exp(T(-0.5) * z * z));
      }
    }
  });
}

#define NCP_INSTANTIATE(T)                                                           \
  template void activation_forward<T>(Activation, T*, const T*, int64_t);            \
  template void activation_backward<T>(Activation, T*, const T*, const T*, int64_t); \
  template void geglu_forward<T>(T*, const T*, int64_t, int64_t);                    \
  template void geglu_backward<T>(T*, const T*, const T*, int64_t, int64_t);
NCP_INSTANTIATE(float)
NCP_INSTANTIATE(double)
#undef NCP_INSTANTIATE

}  // namespace ncp::cpu
