// `ncp-native grad`: the loss and LoRA gradients of one objective on one case file, the layout of
// golden/*/objectives.safetensors: in.x0_w, in.x0_l, in.noise, in.variance_noise, in.encoder_hidden_states,
// in.timestep, in.timestep_uniform (int64 or float), optional in.alphas_cumprod (else the model's scheduler),
// SDXL in.text_embeds / in.time_ids (one per pair), and lora.<module>.lora_A.weight [r, in] /
// lora.<module>.lora_B.weight [out, r] (the rank is read from their shapes).
// Writes out.loss [1], out.policy_losses / out.ref_losses [2P], out.implicit_acc / out.reward_w / out.reward_l [1]
// and grad.<module>.lora_A.weight / grad.<module>.lora_B.weight for every LoRA tensor.
#pragma once
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "model/unet_io.h"
#include "train/objective.h"

namespace ncp::train {

struct GradOptions {
  ObjectiveConfig objective;
  double lora_alpha = NAN;  // NaN: alpha = rank (scale 1)
  bool gradient_checkpointing = false;
  model::SelectiveRecompute recompute;
};

// The tensors `grad` writes, by name, computed from an open case file. The model's U-Net gets the case's
// adapters attached for the call and detached after.
std::map<std::string, model::Tensor32> grad_case(model::LoadedUNet& model, const model::SafetensorsFile& input,
                                                 const GradOptions& options);
// grad_case from the file `input`, written atomically to `output`. Returns the names written.
std::vector<std::string> grad_file(model::LoadedUNet& model, const std::string& input, const std::string& output,
                                   const GradOptions& options);

}  // namespace ncp::train
