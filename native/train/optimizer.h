// AdamW over the LoRA parameters (decoupled weight decay, PyTorch semantics), global gradient-norm clipping and
// the learning-rate schedules of diffusers' get_scheduler (LambdaLR: the multiplier of optimiser step s, counted
// from 0, is lambda(s), so a warm-up's first step has lr 0 exactly as in diffusers' scripts).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "model/lora.h"

namespace ncp::train {

enum class LrSchedule { Constant, ConstantWithWarmup, Linear, Cosine };
LrSchedule parse_lr_schedule(const std::string& s);  // constant | constant_with_warmup | linear | cosine

struct OptimizerConfig {
  cpu::AdamWConfig adamw;   // lr, beta1, beta2, eps, weight_decay
  double max_grad_norm = 1.0;  // <= 0: no clipping
  LrSchedule schedule = LrSchedule::ConstantWithWarmup;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // linear and cosine decay to 0 at this step
};

// Learning rate of optimiser step `step` (0-based).
double lr_at(const OptimizerConfig& c, int64_t step);

class LoraAdamW {
 public:
  LoraAdamW(model::LoraSet& params, OptimizerConfig config);
  struct StepInfo {
    double grad_norm = 0;  // global L2 norm before clipping
    double lr = 0;
    bool clipped = false;
  };
  // Clips the accumulated gradients, applies one AdamW update with lr_at(steps_done()), counts the step. Does not
  // zero the gradients (the caller does, before the next accumulation).
  StepInfo step();
  // A step with no update (loss scaling found non-finite gradients): counted, so the run's step numbers and the
  // learning-rate schedule go on, but A, B and the moments stay as they are. grad_norm is +infinity.
  StepInfo skip();
  int64_t steps_done() const { return steps_; }
  const OptimizerConfig& config() const { return config_; }

  // Optimiser state for checkpoints: the step count and first/second moments per adapter, in LoraSet order.
  std::vector<std::vector<float>>& moments() { return moments_; }  // [2 * adapters]: m_A, v_A, m_B, v_B per adapter
  void set_steps_done(int64_t s) { steps_ = s; }

 private:
  model::LoraSet& params_;
  OptimizerConfig config_;
  int64_t steps_ = 0;
  std::vector<std::vector<float>> moments_;
};

}  // namespace ncp::train
