// Scalar building blocks written so that g++ -O3 vectorises the loops that call them: float exp/erf/tanh
// without libm calls (libm's are scalar and dominate softmax and GELU), ordered double-precision sums in eight
// lanes (the compiler may not reassociate one floating-point accumulator) and a float max on integer compares.
// The double overloads use libm and plain loops: they serve the float64 gradient checks, where accuracy is
// all that matters.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace ncp::cpu::vec {

// e^x for float, within ~1e-7 relative; flushed to 0 below x ~ -87.7 and to inf above ~88.4, where e^x is
// within a factor of 2 of leaving the normal float range; NaN stays NaN. Cephes' expf scheme: x = n ln2 + r
// with |r| <= ln2 / 2, a degree-6 polynomial for e^r, 2^n assembled in the exponent bits. Written for the
// vectoriser: under g++'s default -ftrapping-math it will not if-convert ordered float compares, nor a branch
// that guards float arithmetic (clamping x first leads it to split the loop body into such branches), so the
// range is handled by integer compares on n, selecting between values that are all computed unconditionally.
inline float exp(float x) {
  // Adding 1.5 * 2^23 rounds x log2(e) to an integer n held in the low mantissa bits of t. Outside
  // |x log2(e)| < 2^22 the bits of t are no longer n, but they still land beyond the limits tested below.
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  uint32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  const int32_t k = int32_t(t_bits - 0x4B400000u);  // 0x4B400000: the bits of the shifter
  float r = x - n * 0.693359375f;  // ln 2 in two parts, so n * ln2_hi is exact
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t scale_bits = (uint32_t(k) + 127u) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  const float v = p * scale;
  uint32_t v_bits, x_bits;
  std::memcpy(&v_bits, &v, sizeof v_bits);
  std::memcpy(&x_bits, &x, sizeof x_bits);
  const uint32_t under = 0u - uint32_t(k < -126), over = 0u - uint32_t(k > 127), nan = 0u - uint32_t(x != x);
  v_bits = (v_bits & ~(under | over)) | (over & 0x7F800000u);  // 0 or +inf out of range
  v_bits = (v_bits & ~nan) | (x_bits & nan);
  float out;
  std::memcpy(&out, &v_bits, sizeof out);
  return out;
}
inline double exp(double x) { return std::exp(x); }

// erf(x) for float to ~1.3e-7 absolute (~1e-7 relative below |x| = 0.5): the Maclaurin series there, and
// 1 - erfc above. Both are computed and the result picked by an integer compare, for the reason given at exp.
inline float erf(float x) {
  const float ax = std::abs(x), x2 = x * x;
  float s = -1.0f / 1320.0f;  // 2/sqrt(pi) * sum_k (-1)^k x^(2k+1) / (k! (2k+1)), k <= 5
  s = s * x2 + 1.0f / 216.0f;
  s = s * x2 - 1.0f / 42.0f;
  s = s * x2 + 1.0f / 10.0f;
  s = s * x2 - 1.0f / 3.0f;
  s = s * x2 + 1.0f;
  const float small = 1.12837916709551257f * x * s;
  // erfc(|x|) = t exp(-x^2 + P(t)), t = 1 / (1 + |x| / 2), to 1.2e-7 relative (Numerical Recipes' erfcc).
  const float t = 1.0f / (1.0f + 0.5f * ax);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float large = std::copysign(1.0f - t * vec::exp(p - x2), x);
  uint32_t ax_bits, small_bits, large_bits;
  std::memcpy(&ax_bits, &ax, sizeof ax_bits);
  std::memcpy(&small_bits, &small, sizeof small_bits);
  std::memcpy(&large_bits, &large, sizeof large_bits);
  const uint32_t use_small = 0u - uint32_t(ax_bits < 0x3F000000u);  // |x| < 0.5
  const uint32_t bits = (small_bits & use_small) | (large_bits & ~use_small);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
inline double erf(double x) { return std::erf(x); }

// tanh(x) = 1 - 2 / (e^{2x} + 1), to ~2e-7 absolute (so only absolute accuracy near 0, enough for GELU).
inline float tanh(float x) { return 1.0f - 2.0f / (vec::exp(2.0f * x) + 1.0f); }
inline double tanh(double x) { return std::tanh(x); }

// SiLU x sigmoid(x) and its derivative s (1 + x (1 - s)), shared by the activation op and the fused
// GroupNorm+SiLU so that both round alike.
template <class T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + vec::exp(-x));
}
template <class T>
inline T silu(T x) {
  return x * sigmoid(x);
}
template <class T>
inline T silu_grad(T x) {
  const T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// sum_{i < n} term(i), accumulated in double in a fixed order (so also independent of the thread count).
template <class F>
double sum(int64_t n, F term) {
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += term(i + k);
  double tail = 0;
  for (; i < n; ++i) tail += term(i);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

// max_{i < n} x[i] for n >= 1. For float the compares run on integers: flipping the magnitude bits of
// negative floats makes the signed order of bit patterns the float order (NaNs land beyond the infinities).
inline int32_t ordered_bits(float x) {
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i ^ ((i >> 31) & 0x7FFFFFFF);
}
inline float max(const float* x, int64_t n) {
  int32_t best = ordered_bits(x[0]);
  for (int64_t i = 1; i < n; ++i) best = std::max(best, ordered_bits(x[i]));
  best ^= (best >> 31) & 0x7FFFFFFF;  // the mapping is its own inverse
  float out;
  std::memcpy(&out, &best, sizeof out);
  return out;
}
inline double max(const double* x, int64_t n) { return *std::max_element(x, x + n); }

}  // namespace ncp::cpu::vec
