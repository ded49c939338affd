#include "model/unet.h"

#include <algorithm>

#include "core/error.h"
#include "cpu/ops.h"

namespace ncp::model {
namespace {

using cpu::Activation;

// The module is built from hand-made configs too (tests, tools), so the structural invariants the parser
// enforces are checked again here, before any size is derived from them.
void check_config(const UNetConfig& c) {
  const size_t n = c.block_out_channels.size();
  auto fail = [](const std::string& what) { throw Error("NCP_ECONFIG", "UNet config: " + what); };
  if (n == 0) fail("block_out_channels is empty");
  if (c.down_block_types.size() != n || c.up_block_types.size() != n || c.num_attention_heads.size() != n ||
      c.transformer_layers_per_block.size() != n)
    fail("down_block_types, up_block_types, num_attention_heads and transformer_layers_per_block need one entry "
         "per level (" + std::to_string(n) + ")");
  if (c.layers_per_block < 1) fail("layers_per_block must be >= 1");
  if (c.text_time_embedding &&
      (c.addition_time_embed_dim < 1 || c.projection_class_embeddings_input_dim <= 6 * c.addition_time_embed_dim))
    fail("text_time embedding needs projection_class_embeddings_input_dim (" +
         std::to_string(c.projection_class_embeddings_input_dim) + ") > 6 * addition_time_embed_dim (" +
         std::to_string(c.addition_time_embed_dim) + ")");
}

std::string name(const char* kind, size_t i) { return std::string(kind) + "." + std::to_string(i); }

struct Skip {
  Buffer x;
  int64_t C, H, W;
};

}  // namespace

Manifest UNet::manifest(const UNetConfig& config) {
  Manifest m;
  const UNet recorder(config, ParamSource(m));
  return m;
}

UNet::UNet(const UNetConfig& config, const WeightMap& weights) : UNet(config, ParamSource(weights)) {}

UNet::UNet(const UNetConfig& c, ParamSource p) : config_(c) {
  check_config(c);
  const int64_t n = c.levels(), T = c.time_embed_dim(), C0 = c.block_out_channels[0], G = c.norm_num_groups;
  const int64_t layers = c.layers_per_block, cross = c.cross_attention_dim;
  const double eps = c.norm_eps;
  const bool linear = c.use_linear_projection;

  time_embedding_ = TimestepEmbedding(p, "time_embedding", C0, T);
  if (c.text_time_embedding)
    add_embedding_ = TimestepEmbedding(p, "add_embedding", c.projection_class_embeddings_input_dim, T);
  conv_in_ = Conv2d(p, "conv_in", c.in_channels, C0, 3);

  int64_t out_ch = C0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = c.block_out_channels[i];
    const std::string prefix = name("down_blocks", i);
    DownBlock d;
    for (int64_t j = 0; j < layers; ++j) {
      d.resnets.emplace_back(p, prefix + name(".resnets", j), j == 0 ? in_ch : out_ch, out_ch, T, G, eps);
      if (c.down_block_types[i] == DownBlockType::CrossAttnDown)
        d.attentions.emplace_back(p, prefix + name(".attentions", j), out_ch, c.num_attention_heads[i],
                                  c.transformer_layers_per_block[i], cross, G, linear);
    }
    if (i < n - 1) {
      d.has_downsampler = true;
      d.downsampler = Downsample2D(p, prefix + ".downsamplers.0", out_ch);
    }
    down_.push_back(std::move(d));
  }

  if (c.has_mid_block) {
    const int64_t Cm = c.block_out_channels.back();
    mid_.resnet0 = ResnetBlock2D(p, "mid_block.resnets.0", Cm, Cm, T, G, eps);
    mid_.attention = Transformer2DModel(p, "mid_block.attentions.0", Cm, c.num_attention_heads.back(),
                                        c.transformer_layers_per_block.back(), cross, G, linear);
    mid_.resnet1 = ResnetBlock2D(p, "mid_block.resnets.1", Cm, Cm, T, G, eps);
  }

  // Up block i works at level n-1-i; its last resnet takes the skip of the level below (the down block's input).
  out_ch = c.block_out_channels.back();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t level = n - 1 - i, prev_ch = out_ch;
    out_ch = c.block_out_channels[level];
    const int64_t in_ch = c.block_out_channels[std::max<int64_t>(level - 1, 0)];
    const std::string prefix = name("up_blocks", i);
    UpBlock u;
    for (int64_t j = 0; j <= layers; ++j) {
      const int64_t skip_ch = j == layers ? in_ch : out_ch, res_in = j == 0 ? prev_ch : out_ch;
      u.resnets.emplace_back(p, prefix + name(".resnets", j), res_in + skip_ch, out_ch, T, G, eps);
      if (c.up_block_types[i] == UpBlockType::CrossAttnUp)
        u.attentions.emplace_back(p, prefix + name(".attentions", j), out_ch, c.num_attention_heads[level],
                                  c.transformer_layers_per_block[level], cross, G, linear);
    }
    if (i < n - 1) {
      u.has_upsampler = true;
      u.upsampler = Upsample2D(p, prefix + ".upsamplers.0", out_ch);
    }
    up_.push_back(std::move(u));
  }

  conv_norm_out_ = GroupNorm(p, "conv_norm_out", C0, G, eps);
  conv_out_ = Conv2d(p, "conv_out", C0, c.out_channels, 3);
}

int64_t UNet::pooled_dim() const {
  return config_.text_time_embedding
             ? config_.projection_class_embeddings_input_dim - 6 * config_.addition_time_embed_dim
             : 0;
}

std::vector<int64_t> UNet::output_shape(const UNetInputs& in) const {
  return {in.batch, config_.out_channels, in.height, in.width};
}

std::vector<int64_t> UNet::encode_shape(const UNetInputs& in, EncoderLayer) const {
  const int64_t f = int64_t(1) << (config_.levels() - 1);
  return {in.batch, config_.block_out_channels.back(), in.height / f, in.width / f};
}

void UNet::check_inputs(const UNetInputs& in) const {
  const int64_t f = int64_t(1) << (config_.levels() - 1);
  check(in.batch >= 1 && in.height >= 1 && in.width >= 1 && in.text_len >= 1, "NCP_ESHAPE",
        "UNet inputs: batch " + std::to_string(in.batch) + ", latent " + std::to_string(in.height) + "x" +
            std::to_string(in.width) + ", text_len " + std::to_string(in.text_len) + " must all be >= 1");
  check(in.height % f == 0 && in.width % f == 0, "NCP_ESHAPE",
        "UNet inputs: latent " + std::to_string(in.height) + "x" + std::to_string(in.width) +
            " must be a multiple of " + std::to_string(f) + " (2^(levels-1)) in both dimensions");
  check(in.sample && in.timesteps && in.encoder_hidden_states, "NCP_EINVAL",
        "UNet inputs: sample, timesteps and encoder_hidden_states are required");
  check(!config_.text_time_embedding || (in.text_embeds && in.time_ids), "NCP_EINVAL",
        "UNet inputs: this SDXL-style U-Net (addition_embed_type text_time) needs text_embeds [batch, " +
            std::to_string(pooled_dim()) + "] and time_ids [batch, 6]");
}

void UNet::forward(const UNetInputs& in, float* out, Trace* trace) const { run(in, Stop::Full, out, trace); }

void UNet::encode(const UNetInputs& in, EncoderLayer layer, float* out, Trace* trace) const {
  check(layer == EncoderLayer::Down || config_.has_mid_block, "NCP_EINVAL",
        "UNet encode: layer \"mid\" asked of a U-Net without a mid block");
  run(in, layer == EncoderLayer::Mid ? Stop::Mid : Stop::Down, out, trace);
}

void UNet::run(const UNetInputs& in, Stop stop, float* out, Trace* trace) const {
  check_inputs(in);
  const UNetConfig& c = config_;
  const int64_t B = in.batch, T = c.time_embed_dim(), C0 = c.block_out_channels[0], L = in.text_len;
  const float* context = in.encoder_hidden_states;
  auto record = [&](const std::string& key, const float* x, std::vector<int64_t> shape) {
    if (!trace) return;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    (*trace)[key] = Tensor32{std::move(shape), std::vector<float>(x, x + n)};
  };

  // Time embedding (+ SDXL's text_time embedding), SiLU'd once here for every resnet's time_emb_proj.
  Buffer sinusoid, emb, emb_act;
  TimestepEmbedding::Acts time_acts;
  cpu::timestep_embedding(sinusoid.ensure(B * C0), in.timesteps, B, C0, c.flip_sin_to_cos, c.freq_shift);
  time_embedding_.forward(emb.ensure(B * T), sinusoid.data(), B, time_acts);
  record("time_embedding", emb.data(), {B, T});
  if (c.text_time_embedding) {
    const int64_t P = pooled_dim(), A = c.addition_time_embed_dim, D = c.projection_class_embeddings_input_dim;
    Buffer ids, add_in, aug;
    cpu::timestep_embedding(ids.ensure(B * 6 * A), in.time_ids, B * 6, A, c.flip_sin_to_cos, c.freq_shift);
    float* row = add_in.ensure(B * D);
    for (int64_t b = 0; b < B; ++b, row += D) {  // [text_embeds | sinusoids of the 6 ids, flattened]
      std::copy(in.text_embeds + b * P, in.text_embeds + (b + 1) * P, row);
      std::copy(ids.data() + b * 6 * A, ids.data() + (b + 1) * 6 * A, row + P);
    }
    TimestepEmbedding::Acts add_acts;
    add_embedding_.forward(aug.ensure(B * T), add_in.data(), B, add_acts);
    record("add_embedding", aug.data(), {B, T});
    cpu::add_forward(emb.data(), emb.data(), aug.data(), B * T);
  }
  cpu::activation_forward(Activation::SiLU, emb_act.ensure(B * T), emb.data(), B * T);
  const float* temb = emb_act.data();

  // Every down-path output is kept as a skip; the latest one is the current hidden state.
  std::vector<Skip> skips;
  skips.reserve(size_t(c.levels() * (c.layers_per_block + 1) + 1));
  int64_t H = in.height, W = in.width;
  const float* sample = in.sample;
  Buffer centered;
  if (c.center_input_sample) {
    const int64_t n = B * c.in_channels * H * W;
    float* x = centered.ensure(n);
    for (int64_t i = 0; i < n; ++i) x[i] = 2.0f * sample[i] - 1.0f;
    sample = x;
  }
  auto push = [&](Buffer&& x, int64_t C) { skips.push_back({std::move(x), C, H, W}); };
  {
    Buffer x;
    conv_in_.forward(x.ensure(B * C0 * H * W), sample, B, H, W);
    record("conv_in", x.data(), {B, C0, H, W});
    push(std::move(x), C0);
  }

  ResnetBlock2D::Acts resnet_acts;
  Transformer2DModel::Acts attn_acts;
  for (size_t i = 0; i < down_.size(); ++i) {
    const DownBlock& d = down_[i];
    for (size_t j = 0; j < d.resnets.size(); ++j) {
      const int64_t C = d.resnets[j].cout, n = B * C * H * W;
      Buffer x;
      d.resnets[j].forward(x.ensure(n), skips.back().x.data(), temb, B, H, W, resnet_acts);
      if (!d.attentions.empty()) {
        Buffer y;
        d.attentions[j].forward(y.ensure(n), x.data(), context, B, H, W, L, attn_acts);
        x = std::move(y);
      }
      push(std::move(x), C);
    }
    if (d.has_downsampler) {
      const int64_t C = skips.back().C, Ho = d.downsampler.conv.out_size(H), Wo = d.downsampler.conv.out_size(W);
      Buffer x;
      d.downsampler.forward(x.ensure(B * C * Ho * Wo), skips.back().x.data(), B, H, W);
      H = Ho, W = Wo;
      push(std::move(x), C);
    }
    record(name("down_blocks", i), skips.back().x.data(), {B, skips.back().C, H, W});
  }
  const int64_t Cd = skips.back().C;
  if (stop == Stop::Down) {
    std::copy(skips.back().x.data(), skips.back().x.data() + B * Cd * H * W, out);
    return;
  }

  // The up path ping-pongs between two buffers; h is the current hidden state [B, Ch, H, W].
  Buffer ping[2];
  auto spare = [&](const float* h) -> Buffer& { return ping[0].data() == h ? ping[1] : ping[0]; };
  const float* h = skips.back().x.data();
  int64_t Ch = Cd;
  if (c.has_mid_block) {
    const int64_t n = B * Ch * H * W;
    Buffer& r0 = spare(h);
    mid_.resnet0.forward(r0.ensure(n), h, temb, B, H, W, resnet_acts);
    Buffer& a = spare(r0.data());
    mid_.attention.forward(a.ensure(n), r0.data(), context, B, H, W, L, attn_acts);
    Buffer& r1 = spare(a.data());
    mid_.resnet1.forward(r1.ensure(n), a.data(), temb, B, H, W, resnet_acts);
    h = r1.data();
    record("mid_block", h, {B, Ch, H, W});
    if (stop == Stop::Mid) {
      std::copy(h, h + n, out);
      return;
    }
  }

  Buffer cat;
  Upsample2D::Acts up_acts;
  for (size_t i = 0; i < up_.size(); ++i) {
    const UpBlock& u = up_[i];
    for (size_t j = 0; j < u.resnets.size(); ++j) {
      // Popped into a local: without a mid block h may still be this very skip.
      Skip s = std::move(skips.back());
      skips.pop_back();
      const int64_t HW = H * W, C = u.resnets[j].cout;
      cpu::concat_channels_forward(cat.ensure(B * (Ch + s.C) * HW), h, s.x.data(), B, Ch, s.C, HW);
      Buffer& r = spare(h);
      u.resnets[j].forward(r.ensure(B * C * HW), cat.data(), temb, B, H, W, resnet_acts);
      h = r.data();
      if (!u.attentions.empty()) {
        Buffer& a = spare(h);
        u.attentions[j].forward(a.ensure(B * C * HW), h, context, B, H, W, L, attn_acts);
        h = a.data();
      }
      Ch = C;
    }
    if (u.has_upsampler) {
      Buffer& y = spare(h);
      u.upsampler.forward(y.ensure(B * Ch * 4 * H * W), h, B, H, W, up_acts);
      h = y.data();
      H *= 2, W *= 2;
    }
    record(name("up_blocks", i), h, {B, Ch, H, W});
  }

  const int64_t n = B * C0 * H * W;
  Buffer normed, act;
  NormStats stats;
  conv_norm_out_.forward(normed.ensure(n), stats, h, B, H * W);
  cpu::activation_forward(Activation::SiLU, act.ensure(n), normed.data(), n);
  conv_out_.forward(out, act.data(), B, H, W);
}

}  // namespace ncp::model
