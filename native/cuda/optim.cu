// AdamW with PyTorch's semantics, the same float arithmetic as native/cpu/optim.cpp.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/entries.h"

namespace ncp::cuda {

int adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step,
               const ncp_cuda_adamw_config* c) {
  NCP_REQUIRE(c && n >= 0 && step >= 1, "adamw_step: bad arguments (n %lld, step %lld; step counts from 1)",
              (long long)n, (long long)step);
  const float decay = float(1.0 - c->lr * c->weight_decay);
  const float b1 = float(c->beta1), one_minus_b1 = float(1.0 - c->beta1);
  const float b2 = float(c->beta2), one_minus_b2 = float(1.0 - c->beta2);
  const float step_size = float(c->lr / (1.0 - std::pow(c->beta1, double(step))));
  const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(c->beta2, double(step))));
  const float eps = float(c->eps);
  return launch_each("adamw_step", n, [=] __device__(int64_t i) {
    const float g = grad[i];
    const float mi = b1 * m[i] + one_minus_b1 * g;
    const float vi = b2 * v[i] + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
  });
}

}  // namespace ncp::cuda
