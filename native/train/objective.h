// The preference objectives of the paper (METHOD.md sections 2-4): SFT, Diffusion-DPO and CPO, each with the
// per-sample error measured in latent space or in the NCP embedding space of the frozen U-Net's encoder.
//
// One call computes the loss of a batch of P pairs and, when asked, adds d loss / d LoRA into the adapters'
// gradients. Passes run, in this order: the reference U-Net (LoRA off, no tape), for ncp the encoder E on the
// truth and the reference's prediction in one batch (no tape), then the policy U-Net (LoRA on, taped) and for ncp
// E on the policy's prediction (taped: gradients flow through its activations, never into its weights). The
// untaped passes come first so that their buffers are never held at the same time as the tapes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/unet.h"
#include "train/noise_schedule.h"

namespace ncp::train {

enum class Objective { SFT, DPO, CPO };
enum class Space { Latent, Ncp };
enum class NcpTimestep { Prev, Uniform };

Objective parse_objective(const std::string& s);  // "sft" | "dpo" | "cpo"; NCP_EINVAL naming the value otherwise
Space parse_space(const std::string& s);          // "latent" | "ncp"
NcpTimestep parse_ncp_timestep(const std::string& s);
model::EncoderLayer parse_ncp_layer(const std::string& s);

struct ObjectiveConfig {
  Objective objective = Objective::DPO;
  Space space = Space::Ncp;
  model::EncoderLayer ncp_layer = model::EncoderLayer::Mid;
  NcpTimestep ncp_timestep = NcpTimestep::Prev;
  // METHOD.md section 4's convention: DPO loss = -log sigmoid(beta * logits). Diffusion-DPO's beta_dpo is 2 beta.
  double beta = 2500;
  double cpo_lambda = 0;     // CPO's optional behaviour-cloning weight on mean(pw)
  double ncp_coeff = 1;      // d = coeff * mean (E(x_pred) - E(x_true))^2
  bool ncp_pool = false;     // spatial mean of E before the distance
  // Run the reference U-Net even where the loss does not need it (SFT, CPO), for the logged reference errors,
  // implicit accuracy and rewards. DPO always runs it.
  bool log_reference = true;
};

// P preference pairs; per-pair arrays are shared by the pair's w and l rows (METHOD.md section 2).
struct PairBatch {
  int64_t pairs = 0, channels = 0, height = 0, width = 0, text_len = 0;
  const float* x0_w = nullptr;            // [P, C, H, W] latents, already scaled by the VAE's scaling_factor
  const float* x0_l = nullptr;            // [P, C, H, W]
  const float* noise = nullptr;           // eps [P, C, H, W]
  const float* variance_noise = nullptr;  // z [P, C, H, W] (ncp-prev only)
  const float* encoder_hidden_states = nullptr;  // [P, text_len, cross_attention_dim]
  const float* text_embeds = nullptr;            // SDXL: [P, pooled]
  const float* time_ids = nullptr;               // SDXL: [P, 6]
  std::vector<int64_t> timestep;          // [P], in [0, T)
  std::vector<int64_t> timestep_uniform;  // [P] (ncp-uniform only)
};

struct ObjectiveResult {
  double loss = 0;
  double implicit_acc = 0, reward_w = 0, reward_l = 0;  // NaN when the reference was not run
  std::vector<double> policy_losses, ref_losses;        // d(e_pol), d(e_ref) per row [w_0..w_P-1, l_0..l_P-1]
  double policy_w = 0, policy_l = 0, ref_w = 0, ref_l = 0;  // their means over the pairs (raw errors)
};

class ObjectiveRunner {
 public:
  ObjectiveRunner(const model::UNet& unet, NoiseSchedule schedule);
  const NoiseSchedule& schedule() const { return schedule_; }
  // Gradient checkpointing for the policy and encoder tapes (see UNetTape::set_checkpointing).
  void set_checkpointing(bool on) {
    policy_tape_.set_checkpointing(on);
    encoder_tape_.set_checkpointing(on);
  }
  // Selective recompute for both tapes (UNetTape::set_recompute).
  void set_recompute(model::SelectiveRecompute r) {
    policy_tape_.set_recompute(r);
    encoder_tape_.set_recompute(r);
  }
  // Loss and logged values of the batch. With backward, adds grad_scale * d loss / d LoRA into the attached
  // adapters' dA/dB (grad_scale = 1 / accumulation steps when accumulating).
  ObjectiveResult run(const PairBatch& batch, const ObjectiveConfig& config, bool backward, double grad_scale = 1.0);

 private:
  void check_batch(const PairBatch& b, const ObjectiveConfig& c) const;
  const model::UNet& unet_;
  NoiseSchedule schedule_;
  model::UNetTape policy_tape_, encoder_tape_;
  // Row-stacked inputs and outputs, reused across calls.
  std::vector<float> x0_, eps_, xt_, t_rows_, p_rows_, context_, text_embeds_, time_ids_;
  std::vector<float> e_pol_, e_ref_, target_, x_pred_, x_other_, enc_pred_, enc_other_, d_enc_, d_x_, d_e_;
  std::vector<float> enc_context_, enc_text_embeds_, enc_time_ids_, enc_t_;
  std::vector<float> pred_context_, pred_text_embeds_, pred_time_ids_, pred_t_;
};

}  // namespace ncp::train
