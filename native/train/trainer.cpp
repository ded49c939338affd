#include "train/trainer.h"

#include "core/error.h"

namespace ncp::train {
namespace {

void check_pairs(const PairData& d, const model::UNet& unet) {
  const int64_t P = d.pairs, n = d.channels * d.height * d.width;
  auto need = [&](const std::vector<float>& v, int64_t size, const char* name) {
    check(int64_t(v.size()) == size, "NCP_ESHAPE",
          std::string("training batch: ") + name + " has " + std::to_string(v.size()) + " values, expected " +
              std::to_string(size) + " for " + std::to_string(P) + " pairs");
  };
  check(P >= 1 && n >= 1 && d.text_len >= 1, "NCP_ESHAPE", "training batch: empty pairs, latents or text");
  need(d.x0_w, P * n, "x0_w");
  need(d.x0_l, P * n, "x0_l");
  need(d.encoder_hidden_states, P * d.text_len * unet.config().cross_attention_dim, "encoder_hidden_states");
  if (unet.config().text_time_embedding) {
    need(d.text_embeds, P * unet.pooled_dim(), "text_embeds");
    need(d.time_ids, P * 6, "time_ids");
  }
}

// fp16 mixed precision rounds backward's incoming gradients to fp16 in every weight GEMM: loss scaling keeps the
// small ones from flushing to zero.
LossScalingConfig scaling_for(const TrainerConfig& c) {
  LossScalingConfig s = c.loss_scaling;
  if (c.weight_matrices == DType::F16) s.enabled = true;
  return s;
}

}  // namespace

Trainer::Trainer(const TrainerConfig& config)
    : Trainer(config, std::shared_ptr<model::LoadedUNet>(model::load_unet(config.model_dir, config.variant))) {}

Trainer::Trainer(const TrainerConfig& config, std::shared_ptr<model::LoadedUNet> m)
    : config_(config), model_(std::move(m)), scaler_(scaling_for(config)), rng_(config.seed) {
  check(config.lora_rank >= 1, "NCP_EINVAL", "lora rank " + std::to_string(config.lora_rank) + " must be >= 1");
  const float alpha = std::isnan(config.lora_alpha) ? float(config.lora_rank) : float(config.lora_alpha);
  model_->to_device(config.device, config.weight_matrices);
  model_->unet->create_lora(lora_, config.lora_targets, config.lora_rank, alpha);
  lora_.init(config.lora_init, rng_.next());
  runner_ = std::make_unique<ObjectiveRunner>(*model_->unet, NoiseSchedule::from_model_folder(model_->model_dir));
  runner_->set_checkpointing(config.gradient_checkpointing);
  runner_->set_recompute(config.recompute);
  optimizer_ = std::make_unique<LoraAdamW>(lora_, config.optimizer);
}

PairBatch Trainer::draw(const PairData& d, model::Rng& rng) {
  check_pairs(d, *model_->unet);
  const int64_t P = d.pairs, n = d.channels * d.height * d.width, T = runner_->schedule().steps();
  PairBatch b;
  b.pairs = P, b.channels = d.channels, b.height = d.height, b.width = d.width, b.text_len = d.text_len;
  b.x0_w = d.x0_w.data(), b.x0_l = d.x0_l.data(), b.encoder_hidden_states = d.encoder_hidden_states.data();
  if (!d.text_embeds.empty()) b.text_embeds = d.text_embeds.data(), b.time_ids = d.time_ids.data();
  noise_.resize(size_t(P * n)), z_.resize(size_t(P * n));
  // Fixed draw order per pair (t, t_uniform, eps, z) whatever the objective, so configs share one stream.
  for (int64_t i = 0; i < P; ++i) {
    b.timestep.push_back(rng.below(T));
    b.timestep_uniform.push_back(rng.below(T));
    for (int64_t j = 0; j < n; ++j) noise_[size_t(i * n + j)] = float(rng.normal());
    for (int64_t j = 0; j < n; ++j) z_[size_t(i * n + j)] = float(rng.normal());
  }
  b.noise = noise_.data(), b.variance_noise = z_.data();
  return b;
}

StepMetrics Trainer::step(const std::vector<PairData>& micro) {
  check(!micro.empty(), "NCP_EINVAL", "training step: no micro-batches");
  const auto start = std::chrono::steady_clock::now();
  lora_.zero_grad();
  StepMetrics m;
  ObjectiveResult& sum = m.objective;
  const double k = 1.0 / double(micro.size());
  m.loss_scale = scaler_.scale();
  for (const PairData& d : micro) {
    const PairBatch b = draw(d, rng_);
    const ObjectiveResult r = runner_->run(b, config_.objective, true, k * m.loss_scale);
    sum.loss += k * r.loss, sum.implicit_acc += k * r.implicit_acc;
    sum.reward_w += k * r.reward_w, sum.reward_l += k * r.reward_l;
    sum.policy_w += k * r.policy_w, sum.policy_l += k * r.policy_l, sum.ref_w += k * r.ref_w, sum.ref_l += k * r.ref_l;
    sum.policy_losses = r.policy_losses, sum.ref_losses = r.ref_losses;
  }
  check(std::isfinite(sum.loss), "NCP_ENONFINITE", "training step: the loss is not finite");
  m.skipped = !scaler_.unscale(lora_);
  const LoraAdamW::StepInfo info = m.skipped ? optimizer_->skip() : optimizer_->step();
  m.step = optimizer_->steps_done(), m.grad_norm = info.grad_norm, m.lr = info.lr;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return m;
}

ObjectiveResult Trainer::evaluate(const PairData& d, uint64_t seed) {
  model::Rng rng(seed);
  const PairBatch b = draw(d, rng);
  return runner_->run(b, config_.objective, false);
}

}  // namespace ncp::train
