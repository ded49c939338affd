// Dynamic loss scaling, as PyTorch's GradScaler does it, for fp16 mixed precision: fp16 keeps 5 exponent bits, so
// a backward GEMM whose float operand (the incoming gradient) is rounded to fp16 flushes gradients below 6e-8 to
// zero. The trainer multiplies the loss gradient by scale() before backward, which lifts every gradient by the
// same factor, and unscale() divides the LoRA gradients by it again before clipping and AdamW. A step whose
// gradients are not all finite (the scale was too large) is skipped and the scale halved; after growth_interval
// finite steps in a row the scale doubles. The scale stays a power of two, so scaling and unscaling are exact in
// float32: on a float32 backward the trained LoRA is bit for bit the unscaled run's.
#pragma once
#include <cstdint>

#include "model/lora.h"

namespace ncp::train {

struct LossScalingConfig {
  bool enabled = false;
  double init_scale = 65536;     // 2^16, GradScaler's default; a power of two
  int64_t growth_interval = 2000;  // finite steps in a row before the scale doubles
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalingConfig& config);
  bool enabled() const { return config_.enabled; }
  // The factor backward's loss gradient is multiplied by: 1 when scaling is off.
  double scale() const { return config_.enabled ? scale_ : 1.0; }
  // After backward: divides every LoRA gradient by scale() and returns true when all of them are finite (the scale
  // doubles every growth_interval such steps); otherwise zeroes them, halves the scale and returns false (the
  // caller skips the update). Always true when scaling is off.
  bool unscale(model::LoraSet& lora);
  // For checkpoints: the scale and the finite steps since it last changed.
  int64_t good_steps() const { return good_steps_; }
  void set_state(double scale, int64_t good_steps);

 private:
  LossScalingConfig config_;
  double scale_;
  int64_t good_steps_ = 0;
};

}  // namespace ncp::train
