// One training run's native state: the base U-Net (one copy of its weights), the LoRA adapters, the objective,
// AdamW and the generator that draws timesteps and noise (METHOD.md section 2). The data layer hands over latent
// pairs already encoded (VAE latents times scaling_factor, text conditioning); everything random about a step is
// drawn here from one seeded generator, so a run is deterministic on the CPU and resumes exactly from a
// checkpoint of (LoRA, optimiser moments, step, generator state).
#pragma once
#include <array>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/lora.h"
#include "model/rng.h"
#include "model/unet_io.h"
#include "train/loss_scaler.h"
#include "train/objective.h"
#include "train/optimizer.h"

namespace ncp::train {

struct TrainerConfig {
  std::string model_dir, variant;
  std::vector<std::string> lora_targets = model::default_lora_targets();
  int64_t lora_rank = 4;
  double lora_alpha = NAN;  // NaN: alpha = rank
  model::LoraInit lora_init = model::LoraInit::Gaussian;
  ObjectiveConfig objective;
  OptimizerConfig optimizer;
  uint64_t seed = 0;
  bool gradient_checkpointing = false;  // recompute block internals in backward: less memory, ~1/3 more time
  model::SelectiveRecompute recompute;  // transformer projections recomputed in backward (UNetTape::set_recompute)
  int device = -1;  // -1: the CPU; N: CUDA device N (the U-Net's weights and activations live there)
  // Mixed precision on a CUDA device: the frozen weight matrices in BF16 or F16 (GEMMs on half tensor cores with
  // float accumulation); activations, LoRA, gradients and AdamW stay float32 (BF16 also keeps a bf16 tape). F16
  // turns on loss scaling.
  DType weight_matrices = DType::F32;
  // Dynamic loss scaling (loss_scaler.h). F16 weight matrices turn it on; it can run on its own too (tests).
  LossScalingConfig loss_scaling;
};

// P pairs of encoded training data: latents [P, C, H, W], text conditioning [P, text_len, D], SDXL pooled text
// embeds [P, pooled] and time ids [P, 6].
struct PairData {
  int64_t pairs = 0, channels = 0, height = 0, width = 0, text_len = 0;
  std::vector<float> x0_w, x0_l, encoder_hidden_states, text_embeds, time_ids;
};

struct StepMetrics {
  int64_t step = 0;  // optimiser steps done after this one
  ObjectiveResult objective;  // means over the micro-batches (per-row errors of the last one)
  double grad_norm = 0, lr = 0, seconds = 0;
  double loss_scale = 1;  // the scale this step's backward ran with (1: loss scaling off)
  bool skipped = false;   // loss scaling found non-finite gradients: no update, the scale halved
};

class Trainer {
 public:
  explicit Trainer(const TrainerConfig& config);
  // Builds on an already loaded U-Net (tests, benchmarks); `model` must outlive the trainer.
  Trainer(const TrainerConfig& config, std::shared_ptr<model::LoadedUNet> model);

  // One optimiser step over the micro-batches (gradient accumulation): draw t, eps, z and the uniform NCP
  // timestep per pair, accumulate d loss / d LoRA scaled by 1 / micro-batches, clip, AdamW.
  StepMetrics step(const std::vector<PairData>& micro_batches);
  // The objective on one batch without any update (validation); draws from its own generator seeded by `seed`
  // so it does not disturb the training stream.
  ObjectiveResult evaluate(const PairData& batch, uint64_t seed);

  model::LoraSet& lora() { return lora_; }
  LoraAdamW& optimizer() { return *optimizer_; }
  LossScaler& loss_scaler() { return scaler_; }
  model::Rng& rng() { return rng_; }
  const TrainerConfig& config() const { return config_; }
  const model::LoadedUNet& model() const { return *model_; }

 private:
  PairBatch draw(const PairData& d, model::Rng& rng);
  TrainerConfig config_;
  std::shared_ptr<model::LoadedUNet> model_;
  model::LoraSet lora_;
  std::unique_ptr<ObjectiveRunner> runner_;
  std::unique_ptr<LoraAdamW> optimizer_;
  LossScaler scaler_;
  model::Rng rng_;
  std::vector<float> noise_, z_;
};

}  // namespace ncp::train
