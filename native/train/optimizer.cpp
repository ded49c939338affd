#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ncp::train {

LrSchedule parse_lr_schedule(const std::string& s) {
  if (s == "constant") return LrSchedule::Constant;
  if (s == "constant_with_warmup") return LrSchedule::ConstantWithWarmup;
  if (s == "linear") return LrSchedule::Linear;
  if (s == "cosine") return LrSchedule::Cosine;
  throw Error("NCP_EINVAL", "lr schedule \"" + s + "\" is not one of constant, constant_with_warmup, linear, cosine");
}

double lr_at(const OptimizerConfig& c, int64_t step) {
  const double base = c.adamw.lr, w = double(c.warmup_steps), s = double(step);
  if (c.schedule == LrSchedule::Constant) return base;
  if (step < c.warmup_steps) return base * s / std::max(1.0, w);
  if (c.schedule == LrSchedule::ConstantWithWarmup) return base;
  const double span = std::max(1.0, double(c.total_steps) - w), progress = std::min(1.0, (s - w) / span);
  if (c.schedule == LrSchedule::Linear) return base * std::max(0.0, 1.0 - progress);
  return base * 0.5 * (1.0 + std::cos(M_PI * progress));  // cosine, half a period
}

LoraAdamW::LoraAdamW(model::LoraSet& params, OptimizerConfig config) : params_(params), config_(config) {
  for (const auto& a : params_.adapters()) {
    moments_.emplace_back(a->A.size(), 0.0f), moments_.emplace_back(a->A.size(), 0.0f);
    moments_.emplace_back(a->B.size(), 0.0f), moments_.emplace_back(a->B.size(), 0.0f);
  }
}

LoraAdamW::StepInfo LoraAdamW::step() {
  check(moments_.size() == 4 * params_.adapters().size(), "NCP_EINVAL",
        "optimizer: the LoRA set changed after the optimizer was made");
  StepInfo info;
  double sq = 0;
  for (const auto& a : params_.adapters()) {
    for (float g : a->dA) sq += double(g) * double(g);
    for (float g : a->dB) sq += double(g) * double(g);
  }
  info.grad_norm = std::sqrt(sq);
  check(std::isfinite(info.grad_norm), "NCP_ENONFINITE",
        "optimizer: the gradient is not finite (NaN or infinity); lower the learning rate or beta");
  float clip = 1.0f;
  if (config_.max_grad_norm > 0 && info.grad_norm > config_.max_grad_norm) {
    clip = float(config_.max_grad_norm / (info.grad_norm + 1e-6));  // torch.nn.utils.clip_grad_norm_
    info.clipped = true;
  }
  info.lr = lr_at(config_, steps_);
  cpu::AdamWConfig c = config_.adamw;
  c.lr = info.lr;
  ++steps_;
  size_t k = 0;
  for (const auto& a : params_.adapters()) {
    if (clip != 1.0f) {
      for (float& g : a->dA) g *= clip;
      for (float& g : a->dB) g *= clip;
    }
    cpu::adamw_step<float>(a->A.data(), a->dA.data(), moments_[k].data(), moments_[k + 1].data(),
                           int64_t(a->A.size()), steps_, c);
    cpu::adamw_step<float>(a->B.data(), a->dB.data(), moments_[k + 2].data(), moments_[k + 3].data(),
                           int64_t(a->B.size()), steps_, c);
    k += 4;
  }
  return info;
}

LoraAdamW::StepInfo LoraAdamW::skip() {
  StepInfo info;
  info.grad_norm = INFINITY;
  info.lr = lr_at(config_, steps_);
  ++steps_;
  return info;
}

}  // namespace ncp::train
