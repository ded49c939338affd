// The U-Net architecture as diffusers' UNet2DConditionModel config.json describes it. Parsed and validated by
// parse_unet_config (unet_config.cpp); the U-Net module is built from it, never from hard-coded sizes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ncp::model {

enum class DownBlockType { CrossAttnDown, Down };  // CrossAttnDownBlock2D, DownBlock2D
enum class UpBlockType { CrossAttnUp, Up };        // CrossAttnUpBlock2D, UpBlock2D

struct UNetConfig {
  int64_t in_channels = 4, out_channels = 4, sample_size = 64;
  std::vector<int64_t> block_out_channels;         // one per level
  std::vector<DownBlockType> down_block_types;     // one per level
  std::vector<UpBlockType> up_block_types;         // one per level, deepest first
  bool has_mid_block = true;                       // mid_block_type UNetMidBlock2DCrossAttn (null -> false)
  int64_t layers_per_block = 2;                    // resnets per down block (up blocks have one more)
  // Heads per level, resolved from num_attention_heads (wins when set) or the SD1.x quirk attention_head_dim
  // (which diffusers reads as a head count). A scalar in the file is broadcast to every level.
  std::vector<int64_t> num_attention_heads;
  std::vector<int64_t> transformer_layers_per_block;  // per level, down path order; up path uses it reversed
  int64_t cross_attention_dim = 768;
  bool use_linear_projection = false;
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  bool center_input_sample = false;
  // SDXL: addition_embed_type "text_time"; time ids are embedded with addition_time_embed_dim sinusoids each and
  // concatenated after the pooled text embeds: projection_class_embeddings_input_dim = pooled + 6 * that.
  bool text_time_embedding = false;
  int64_t addition_time_embed_dim = 0;
  int64_t projection_class_embeddings_input_dim = 0;
  std::string prediction_type_hint;  // informational, from scheduler config when known

  int64_t levels() const { return int64_t(block_out_channels.size()); }
  int64_t time_embed_dim() const { return block_out_channels.empty() ? 0 : block_out_channels[0] * 4; }
};

// Parses diffusers' unet/config.json text. Throws ncp::Error("NCP_ECONFIG", ...) naming `source` (the file), the
// field and the value for anything missing, malformed or unsupported (e.g. an unknown block type).
UNetConfig parse_unet_config(const std::string& json_text, const std::string& source);

}  // namespace ncp::model
