// The CLIP text encoder of a diffusers folder (text_encoder/, and text_encoder_2/ for SDXL): transformers'
// CLIPTextModel and CLIPTextModelWithProjection, forward pass in float32 on the CPU ops, built from config.json.
//
//   h = token_embedding[ids] + position_embedding[0..L)
//   per layer: h += out_proj(causal_attention(q/k/v_proj(layer_norm1 h)));  h += fc2(act(fc1(layer_norm2 h)))
//   last_hidden_state = final_layer_norm(h after the last layer)
//   penultimate_hidden_state = h after the second-to-last layer (no final LayerNorm; the embeddings when there is
//                              a single layer) -- what SDXL feeds its U-Net
//   pooled = last_hidden_state at the position of the largest id of each row (the eos token, the highest id of
//            CLIP's vocabulary; transformers' "first eos" rule picks the same position whenever eos is the
//            largest id, as in every Stable Diffusion tokenizer)
//   text_embeds = pooled @ text_projection^T (CLIPTextModelWithProjection only)
//
// Stable Diffusion conditioning: SD1.x uses last_hidden_state; SDXL uses concat(penultimate of text_encoder,
// penultimate of text_encoder_2) on the feature dim and text_embeds of text_encoder_2 (sd15_conditioning,
// sdxl_conditioning below).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "model/blocks.h"
#include "model/weights.h"

namespace ncp::model {

// transformers' CLIPTextConfig fields this encoder reads (defaults are transformers' own). A config holding a
// nested "text_config" (a whole CLIPModel) is read from that object.
struct ClipTextConfig {
  int64_t vocab_size = 49408, hidden_size = 512, intermediate_size = 2048, num_hidden_layers = 12;
  int64_t num_attention_heads = 8, max_position_embeddings = 77, projection_dim = 512;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";  // quick_gelu | gelu (erf) | gelu_new | gelu_pytorch_tanh
  cpu::Activation activation = cpu::Activation::QuickGelu;
  int64_t eos_token_id = 2, bos_token_id = 1;  // informational: pooling takes the row's largest id
  // CLIPTextModelWithProjection: text_projection.weight [projection_dim, hidden_size]. Set by the loader from
  // config "architectures" or the weight file itself.
  bool has_projection = false;
  // The file also stores text_model.embeddings.position_ids (older transformers saved that buffer); loaded and
  // ignored, so the file does not count as having an extra tensor.
  bool has_position_ids_buffer = false;
  std::vector<int64_t> position_ids_shape;

  int64_t head_dim() const { return num_attention_heads > 0 ? hidden_size / num_attention_heads : 0; }
};

// Parses text_encoder/config.json. Throws NCP_ECONFIG naming `source`, the field and the value for anything
// missing, malformed or unsupported (an unknown hidden_act lists the supported ones; heads must divide the width).
ClipTextConfig parse_clip_text_config(const std::string& json_text, const std::string& source);

// Outputs of one encode() call; text_embeds is empty (shape {}) without a projection.
struct TextEncoderOutput {
  Tensor32 last_hidden_state;         // [batch, len, hidden]
  Tensor32 penultimate_hidden_state;  // [batch, len, hidden]
  Tensor32 pooled;                    // [batch, hidden]
  Tensor32 text_embeds;               // [batch, projection_dim] or empty
};

class TextEncoder {
 public:
  // Every parameter the config implies, under transformers' state-dict names ("text_model.*", "text_projection").
  static Manifest manifest(const ClipTextConfig& config);
  // Binds pointers into `weights`, which must outlive the encoder.
  TextEncoder(const ClipTextConfig& config, const WeightMap& weights);

  const ClipTextConfig& config() const { return config_; }

  // ids [batch, len] row-major token ids, len <= max_position_embeddings, each in [0, vocab_size). Throws
  // NCP_ESHAPE (sizes) or NCP_EINVAL (an id out of range, naming row, position and value). Thread-safe: all
  // activations live in the call.
  TextEncoderOutput encode(const int64_t* ids, int64_t batch, int64_t len) const;

  struct Layer {
    LayerNorm layer_norm1, layer_norm2;
    Linear q_proj, k_proj, v_proj, out_proj, fc1, fc2;
  };

 private:
  TextEncoder(const ClipTextConfig& config, ParamSource params);

  ClipTextConfig config_;
  const float* token_embedding_ = nullptr;     // [vocab, hidden]
  const float* position_embedding_ = nullptr;  // [max_positions, hidden]
  std::vector<Layer> layers_;
  LayerNorm final_layer_norm_;
  Linear text_projection_;  // no bias; only with has_projection
};

struct LoadedTextEncoder {
  std::string model_dir, component;  // component: "text_encoder" or "text_encoder_2"
  std::vector<std::string> weight_files;
  ClipTextConfig config;
  WeightMap weights;
  std::unique_ptr<TextEncoder> encoder;  // points into weights
};

// Reads <model_dir>/<component>/config.json and model[.<variant>].safetensors (or its shard index); the matrices
// stay in the mapped file (model_load_mode()), the rest is converted to float32.
// Missing or mis-shaped tensors are one NCP_EWEIGHTS error naming each tensor and the file.
std::unique_ptr<LoadedTextEncoder> load_text_encoder(const std::string& model_dir,
                                                     const std::string& component = "text_encoder",
                                                     const std::string& variant = "");

// What a Stable Diffusion U-Net takes as text conditioning.
struct TextConditioning {
  Tensor32 encoder_hidden_states;  // [batch, len, D]
  Tensor32 text_embeds;            // SDXL: [batch, projection_dim of text_encoder_2]; SD1.x: empty
};
// SD1.x: last_hidden_state of the one text encoder.
TextConditioning sd15_conditioning(const TextEncoderOutput& te);
// SDXL: concat(penultimate of te1, penultimate of te2) on the feature dim; text_embeds of te2 (which needs a
// projection). Throws NCP_ESHAPE when batch or length differ, NCP_EINVAL when te2 has no text_embeds.
TextConditioning sdxl_conditioning(const TextEncoderOutput& te1, const TextEncoderOutput& te2);

}  // namespace ncp::model
