// diffusers' UNet2DConditionModel (0.25) forward pass in float32 on the CPU ops, built from a UNetConfig:
// SD1.x (conv projections, one head count) and SDXL (linear projections, per-level heads and transformer depth,
// text_time added embedding) alike.
//
// The module holds raw pointers into the WeightMap it was built from, which must outlive it. Activations live in
// buffers allocated per call; the module itself holds no per-call state.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/blocks.h"
#include "model/unet_config.h"
#include "model/weights.h"

namespace ncp::model {

struct UNetInputs {
  int64_t batch = 0, height = 0, width = 0;      // latent size; height and width multiples of 2^(levels - 1)
  int64_t text_len = 0;                          // tokens per row of encoder_hidden_states
  const float* sample = nullptr;                 // [batch, in_channels, height, width]
  const float* timesteps = nullptr;              // [batch]
  const float* encoder_hidden_states = nullptr;  // [batch, text_len, cross_attention_dim]
  const float* text_embeds = nullptr;            // SDXL only: [batch, pooled]
  const float* time_ids = nullptr;               // SDXL only: [batch, 6]
};

// Which feature map encode() returns: the last down block's output, or the mid block's (METHOD.md section 3).
enum class EncoderLayer { Down, Mid };

// Intermediates by the golden files' names without their "trace." prefix: "time_embedding", "add_embedding"
// (SDXL), "conv_in", "down_blocks.{i}", "mid_block", "up_blocks.{i}".
using Trace = std::map<std::string, Tensor32>;

class UNet {
 public:
  // Every parameter the config implies, with its diffusers state-dict name and shape.
  static Manifest manifest(const UNetConfig& config);
  UNet(const UNetConfig& config, const WeightMap& weights);

  const UNetConfig& config() const { return config_; }
  // Width of text_embeds: projection_class_embeddings_input_dim less the 6 embedded time ids (SDXL; else 0).
  int64_t pooled_dim() const;
  std::vector<int64_t> output_shape(const UNetInputs& in) const;
  std::vector<int64_t> encode_shape(const UNetInputs& in, EncoderLayer layer) const;

  // out: output_shape(in). trace, when given, receives the intermediates listed above.
  void forward(const UNetInputs& in, float* out, Trace* trace = nullptr) const;
  // Time embedding -> conv_in -> down blocks (-> mid block): the NCP encoder. out: encode_shape(in, layer).
  void encode(const UNetInputs& in, EncoderLayer layer, float* out, Trace* trace = nullptr) const;

  struct DownBlock {
    std::vector<ResnetBlock2D> resnets;
    std::vector<Transformer2DModel> attentions;  // empty for DownBlock2D
    bool has_downsampler = false;
    Downsample2D downsampler;
  };
  struct UpBlock {
    std::vector<ResnetBlock2D> resnets;
    std::vector<Transformer2DModel> attentions;  // empty for UpBlock2D
    bool has_upsampler = false;
    Upsample2D upsampler;
  };
  struct MidBlock {
    ResnetBlock2D resnet0, resnet1;
    Transformer2DModel attention;
  };

 private:
  enum class Stop { Down, Mid, Full };
  UNet(const UNetConfig& config, ParamSource params);
  void check_inputs(const UNetInputs& in) const;
  void run(const UNetInputs& in, Stop stop, float* out, Trace* trace) const;

  UNetConfig config_;
  TimestepEmbedding time_embedding_, add_embedding_;
  Conv2d conv_in_, conv_out_;
  std::vector<DownBlock> down_;
  MidBlock mid_;
  std::vector<UpBlock> up_;
  GroupNorm conv_norm_out_;
};

}  // namespace ncp::model
