// AdamW with PyTorch's torch.optim.AdamW semantics (non-amsgrad, non-fused): decoupled weight decay first,
// then the moment updates and the bias-corrected step, with eps added after dividing sqrt(v) by its correction.
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/threads.h"
#include "cpu/ops.h"

namespace ncp::cpu {

namespace {

// The scalars arrive by value: read through the lambda's references they could alias the float stores, and
// the loop would not vectorise.
template <class T>
void adamw_range(T* param, const T* grad, T* m, T* v, int64_t i0, int64_t i1, T decay, T one_minus_b1, T b2,
                 T one_minus_b2, T step_size, T bc2_sqrt, T eps) {
  for (int64_t i = i0; i < i1; ++i) {
    const T g = grad[i];
    const T mi = m[i] + one_minus_b1 * (g - m[i]);  // torch's lerp_(grad, 1 - beta1)
    const T vi = b2 * v[i] + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * decay - step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
  }
}

}  // namespace

template <class T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, int64_t step, const AdamWConfig& c) {
  check(step >= 1, "NCP_EINVAL", "adamw_step: step counts from 1, got " + std::to_string(step));
  const T decay = T(1.0 - c.lr * c.weight_decay);
  const T step_size = T(c.lr / (1.0 - std::pow(c.beta1, double(step))));
  const T bc2_sqrt = T(std::sqrt(1.0 - std::pow(c.beta2, double(step))));
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    adamw_range(param, grad, m, v, i0, i1, decay, T(1.0 - c.beta1), T(c.beta2), T(1.0 - c.beta2), step_size,
                bc2_sqrt, T(c.eps));
  });
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, int64_t, const AdamWConfig&);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, int64_t, const AdamWConfig&);

}  // namespace ncp::cpu
