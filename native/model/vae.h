// diffusers' AutoencoderKL (0.25) from a folder's vae/: encoder to the latent Gaussian (mean, logvar), seeded
// sampling, and decoder, in float32 on the CPU ops, built from vae/config.json.
//
//   encode: conv_in -> DownEncoderBlock2D x levels (layers_per_block resnets, then a stride-2 conv with diffusers'
//           asymmetric (0,1,0,1) zero padding on every level but the last) -> mid block (resnet, attention,
//           resnet) -> GroupNorm -> SiLU -> conv_out (2 * latent_channels) -> quant_conv (1x1)
//           -> mean, logvar = halves of the channels; logvar clamped to [-30, 20]
//   decode: post_quant_conv (1x1) -> conv_in -> mid block -> UpDecoderBlock2D x levels (layers_per_block + 1
//           resnets, then nearest 2x + conv on every level but the last) -> GroupNorm -> SiLU -> conv_out
// Resnet and norm eps are 1e-6, as diffusers builds them for the VAE. The mid-block attention is diffusers'
// Attention over the H*W tokens: GroupNorm, to_q/to_k/to_v with biases, one head of width C (heads = C /
// attention_head_dim, and diffusers sets attention_head_dim = C for the VAE), to_out.0 with bias, plus the input.
// Weights saved before diffusers 0.14 name those layers query/key/value/proj_attn; load_vae reads both.
//
// Neither encode nor decode applies scaling_factor: latents for the U-Net are scaling_factor * (z - shift_factor),
// and decode takes z = latents / scaling_factor + shift_factor (shift_factor 0 unless the config sets it).
//
// Memory: each call processes `slice` batch rows at a time (default 1) and reuses one set of activation buffers
// across slices, so the peak is that of a batch-1 pass however large the batch. There is no spatial tiling
// (diffusers' tiled decode blends overlapping tiles and so changes the numbers): the peak grows with the image,
// about 7 GiB of activations for a 1024x1024 decode with SDXL's VAE and 1.8 GiB at 512x512 (the resnets keep the
// intermediates a backward pass would need).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/blocks.h"
#include "model/weights.h"

namespace ncp::model {

struct VaeConfig {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4;
  std::vector<int64_t> block_out_channels;  // one per level
  int64_t layers_per_block = 1;             // resnets per encoder level (decoder levels have one more)
  int64_t norm_num_groups = 32;
  int64_t sample_size = 0;                  // informational
  double scaling_factor = 0.18215;          // 0.18215 SD1.x, 0.13025 SDXL
  double shift_factor = 0;                  // null/absent in SD configs
  bool use_quant_conv = true, use_post_quant_conv = true, mid_block_add_attention = true;

  int64_t levels() const { return int64_t(block_out_channels.size()); }
};

// Parses vae/config.json. Throws NCP_ECONFIG naming `source`, the field and the value for anything missing,
// malformed or unsupported (block types other than DownEncoderBlock2D/UpDecoderBlock2D, act_fn other than silu,
// norm_num_groups not dividing every width).
VaeConfig parse_vae_config(const std::string& json_text, const std::string& source);

// The latent Gaussian of encode(): both [N, latent_channels, h, w].
struct LatentDist {
  Tensor32 mean, logvar;
};

class Vae {
 public:
  // Every parameter the config implies, under diffusers 0.25 state-dict names.
  static Manifest manifest(const VaeConfig& config);
  // Binds pointers into `weights`, which must outlive the module.
  Vae(const VaeConfig& config, const WeightMap& weights);

  const VaeConfig& config() const { return config_; }
  // Latent size of an image side: each downsampling level maps n to floor(n / 2) (n >= 2 needed).
  int64_t latent_size(int64_t image_size) const;
  // Image size of a latent side: n * 2^(levels - 1).
  int64_t image_size(int64_t latent_size) const;

  // image [N, in_channels, H, W] (values in [-1, 1]) -> mean, logvar [N, latent_channels, latent_size(H),
  // latent_size(W)], logvar clamped to [-30, 20]. `slice` rows at a time (0: all at once). NCP_ESHAPE for sizes
  // that do not reach the latent (a side below 2 at some downsampling).
  LatentDist encode(const float* image, int64_t N, int64_t H, int64_t W, int64_t slice = 1) const;
  // latent [N, latent_channels, h, w] -> image [N, out_channels, image_size(h), image_size(w)].
  Tensor32 decode(const float* latent, int64_t N, int64_t h, int64_t w, int64_t slice = 1) const;
  Tensor32 decode(const Tensor32& latent, int64_t slice = 1) const;

  // z = mean + exp(logvar / 2) * eps with eps ~ N(0, 1) drawn from `seed` (mt19937_64 and Box-Muller: the same
  // seed gives the same z on every platform, though not PyTorch's numbers). NCP_ESHAPE when the shapes differ.
  static Tensor32 sample(const Tensor32& mean, const Tensor32& logvar, uint64_t seed);

  // The mid block's attention: GroupNorm, to_q/to_k/to_v/to_out.0 (all with biases) over the H*W tokens, one
  // head per attention_head_dim channels (= C in every diffusers VAE), plus the input.
  struct MidAttention {
    int64_t C = 0, heads = 1;
    GroupNorm group_norm;
    Linear to_q, to_k, to_v, to_out;
  };
  struct MidBlock {
    ResnetBlock2D resnet0, resnet1;
    bool has_attention = true;  // mid_block_add_attention
    MidAttention attention;
  };
  struct DownLevel {
    std::vector<ResnetBlock2D> resnets;
    bool has_downsampler = false;
    Conv2d downsampler;  // 3x3 stride 2 padding 0, run after zero padding (0, 1, 0, 1)
  };
  struct UpLevel {
    std::vector<ResnetBlock2D> resnets;
    bool has_upsampler = false;
    Upsample2D upsampler;
  };

 private:
  Vae(const VaeConfig& config, ParamSource params);

  VaeConfig config_;
  // Encoder
  Conv2d enc_conv_in_, enc_conv_out_, quant_conv_;
  std::vector<DownLevel> enc_levels_;
  MidBlock enc_mid_;
  GroupNorm enc_norm_out_;
  // Decoder
  Conv2d post_quant_conv_, dec_conv_in_, dec_conv_out_;
  MidBlock dec_mid_;
  std::vector<UpLevel> dec_levels_;
  GroupNorm dec_norm_out_;
};

struct LoadedVae {
  std::string model_dir;
  std::vector<std::string> weight_files;
  VaeConfig config;
  WeightMap weights;
  std::unique_ptr<Vae> vae;  // points into weights
};

// Reads <model_dir>/vae/config.json and diffusion_pytorch_model[.<variant>].safetensors (or its shards); the matrices
// stay in the mapped file (model_load_mode()), the rest is converted to float32. Attention weights under the
// pre-0.14 names are renamed on the way in (that file is copied into float32 whole). Missing or mis-shaped tensors
// are one NCP_EWEIGHTS error naming each tensor and the file.
std::unique_ptr<LoadedVae> load_vae(const std::string& model_dir, const std::string& variant = "");

}  // namespace ncp::model
