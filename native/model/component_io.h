// `ncp-native forward --component ...`: one network of a diffusers folder run between safetensors files, with the
// golden files' tensor names:
//   unet            in.sample, in.timestep, in.encoder_hidden_states (+ SDXL in.text_embeds, in.time_ids)
//                   -> out.sample (+ trace.*)                                              (unet_io.h)
//   vae-encoder     in.image [N, C, H, W] -> out.mean, out.logvar [N, latent, H/f, W/f]   (before scaling_factor)
//   vae-decoder     in.latent [N, latent, h, w] -> out.decoded [N, C, h*f, w*f]
//   text-encoder    in.input_ids [B, L] (int64, int32 or integer-valued floats) -> out.last_hidden_state,
//   text-encoder-2  out.penultimate_hidden_state, out.pooled and, with a projection, out.text_embeds
// text-encoder reads <model>/text_encoder, text-encoder-2 <model>/text_encoder_2 (SDXL's second encoder).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/clip_text.h"
#include "model/safetensors.h"
#include "model/vae.h"

namespace ncp::model {

enum class Component { UNet, VaeEncoder, VaeDecoder, TextEncoder, TextEncoder2 };

// "unet", "vae-encoder", "vae-decoder", "text-encoder", "text-encoder-2"; NCP_EINVAL listing them otherwise.
Component parse_component(const std::string& name);
const char* component_name(Component c);
// The folder a component's files live in: unet, vae, text_encoder, text_encoder_2.
const char* component_folder(Component c);

// Token ids `name` of f as int64, exactly (I64, I32, or a float tensor holding whole numbers). Throws
// NCP_EMISSING when absent, NCP_EINVAL naming the position of a value that is not a whole number.
std::vector<int64_t> read_token_ids(const SafetensorsFile& f, const std::string& name, std::vector<int64_t>* shape);

// Each reads its in.* tensors from `input`, runs the component and writes out.* to `output` atomically; returns
// the names written. Input errors name the file, the tensor, its shape and the shape expected.
std::vector<std::string> vae_encoder_forward_file(const LoadedVae& model, const std::string& input,
                                                  const std::string& output, int64_t slice = 1);
std::vector<std::string> vae_decoder_forward_file(const LoadedVae& model, const std::string& input,
                                                  const std::string& output, int64_t slice = 1);
std::vector<std::string> text_encoder_forward_file(const LoadedTextEncoder& model, const std::string& input,
                                                   const std::string& output);

struct ForwardJob {
  std::string model_dir, component = "unet", input, output, variant;
  bool trace = false;  // unet only (NCP_EINVAL for the other components)
  int64_t slice = 1;   // VAE: batch rows per pass (0: all at once)
};
// Loads the component named by job.component and runs its *_forward_file.
std::vector<std::string> forward_component_file(const ForwardJob& job);

}  // namespace ncp::model
