#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"

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

// The adapters are many and small (SDXL's r4 set: 2240 tensors of 2-10 thousand values), below the size at which
// adamw_step splits its own loop, so the work is split over adapters: each thread takes a contiguous run of them.
// The squared norm is summed per adapter, then over adapters in order, so it does not depend on the thread count.
LoraAdamW::StepInfo LoraAdamW::step() {
  check(moments_.size() == 4 * params_.adapters().size(), "NCP_EINVAL",
        "optimizer: the LoRA set changed after the optimizer was made");
  const auto& adapters = params_.adapters();
  const int64_t count = int64_t(adapters.size());
  StepInfo info;
  std::vector<double> squares(adapters.size(), 0.0);
  parallel_for(count, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      double sq = 0;
      for (float g : adapters[size_t(i)]->dA) sq += double(g) * double(g);
      for (float g : adapters[size_t(i)]->dB) sq += double(g) * double(g);
      squares[size_t(i)] = sq;
    }
  });
  double sq = 0;
  for (double x : squares) sq += x;
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
  const int64_t step = steps_;
  parallel_for(count, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      model::LoraAdapter& a = *adapters[size_t(i)];
      if (clip != 1.0f) {
        for (float& g : a.dA) g *= clip;
        for (float& g : a.dB) g *= clip;
      }
      const size_t k = 4 * size_t(i);
      cpu::adamw_step<float>(a.A.data(), a.dA.data(), moments_[k].data(), moments_[k + 1].data(),
                             int64_t(a.A.size()), step, c);
      cpu::adamw_step<float>(a.B.data(), a.dB.data(), moments_[k + 2].data(), moments_[k + 3].data(),
                             int64_t(a.B.size()), step, c);
    }
  });
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
