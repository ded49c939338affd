#include "train/loss_scaler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace ncp::train {
namespace {

bool power_of_two(double x) {
  int e = 0;
  return std::isfinite(x) && x > 0 && std::frexp(x, &e) == 0.5;
}

void check_scale(double scale, const char* what) {
  check(power_of_two(scale) && scale >= 0x1p-126 && scale <= 0x1p127, "NCP_EINVAL",
        std::string(what) + " must be a power of two between 2^-126 and 2^127, got " + std::to_string(scale));
}

}  // namespace

LossScaler::LossScaler(const LossScalingConfig& config) : config_(config), scale_(config.init_scale) {
  if (!config.enabled) return;
  check_scale(config.init_scale, "loss scaling: the initial scale");
  check(config.growth_interval >= 1, "NCP_EINVAL",
        "loss scaling: growth interval must be >= 1, got " + std::to_string(config.growth_interval));
}

bool LossScaler::unscale(model::LoraSet& lora) {
  if (!config_.enabled) return true;
  bool finite = true;
  for (const auto& a : lora.adapters()) {
    for (float g : a->dA) finite = finite && std::isfinite(g);
    for (float g : a->dB) finite = finite && std::isfinite(g);
  }
  if (!finite) {
    lora.zero_grad();
    // Halving is exact and the floor keeps a run that overflows on every step from reaching zero.
    scale_ = std::max(scale_ / 2, 0x1p-126);
    good_steps_ = 0;
    return false;
  }
  const float inv = float(1.0 / scale_);  // a power of two: exact
  for (const auto& a : lora.adapters()) {
    for (float& g : a->dA) g *= inv;
    for (float& g : a->dB) g *= inv;
  }
  if (++good_steps_ >= config_.growth_interval) {
    scale_ = std::min(scale_ * 2, 0x1p127);
    good_steps_ = 0;
  }
  return true;
}

void LossScaler::set_state(double scale, int64_t good_steps) {
  check_scale(scale, "loss scaling: the saved scale");
  check(good_steps >= 0, "NCP_EINVAL", "loss scaling: the saved count of finite steps must be >= 0");
  scale_ = scale, good_steps_ = good_steps;
}

}  // namespace ncp::train
