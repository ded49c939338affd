#include "model/vae.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/threads.h"
#include "cpu/ops.h"
#include "model/config_reader.h"
#include "model/json.h"
#include "model/model_folder.h"
#include "model/safetensors.h"

namespace ncp::model {
namespace {


// diffusers builds every VAE resnet, attention GroupNorm and output norm with eps 1e-6.
constexpr double kEps = 1e-6;
// DiagonalGaussianDistribution clamps logvar to this range.
constexpr float kLogvarMin = -30.f, kLogvarMax = 20.f;
constexpr double kTwoPi = 6.283185307179586476925;

std::string name(const std::string& prefix, const char* kind, int64_t i) {
  return prefix + "." + kind + "." + std::to_string(i);
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void check_config(const VaeConfig& c) {
  auto fail = [](const std::string& what) { throw Error("NCP_ECONFIG", "VAE config: " + what); };
  if (c.block_out_channels.empty()) fail("block_out_channels is empty");
  if (c.in_channels < 1 || c.out_channels < 1 || c.latent_channels < 1 || c.layers_per_block < 1 ||
      c.norm_num_groups < 1)
    fail("channel counts, layers_per_block and norm_num_groups must be >= 1");
  for (int64_t ch : c.block_out_channels)
    if (ch < 1 || ch % c.norm_num_groups != 0)
      fail("norm_num_groups (" + std::to_string(c.norm_num_groups) + ") does not divide block_out_channels entry " +
           std::to_string(ch));
}

// Activation buffers of one pass, reused by every block and every batch slice (Buffers only grow).
struct Workspace {
  Buffer ping, pong, padded;
  ResnetBlock2D::Acts resnet;
  Buffer up;
  NormStats stats;
  Buffer normed, tokens, q, k, v, o, proj;
};

// The running feature map: `cur` holds [n, C, H, W]; next(c, h, w) sizes the other buffer, flip() makes it current.
struct Stream {
  Workspace& ws;
  int64_t n, C, H, W;
  bool in_ping = true;
  float* cur() { return (in_ping ? ws.ping : ws.pong).data(); }
  float* next(int64_t c, int64_t h, int64_t w) { return (in_ping ? ws.pong : ws.ping).ensure(n * c * h * w); }
  void flip(int64_t c, int64_t h, int64_t w) {
    in_ping = !in_ping;
    C = c, H = h, W = w;
  }
};

void resnet(Stream& s, const ResnetBlock2D& r) {
  r.forward(s.next(r.cout, s.H, s.W), s.cur(), nullptr, s.n, s.H, s.W, s.ws.resnet);
  s.flip(r.cout, s.H, s.W);
}

// diffusers Attention (AttnProcessor2_0) on a feature map: tokens = GroupNorm(x) as [n, HW, C]; the residual is
// added after the transpose back.
void attention(Stream& s, const Vae::MidAttention& a) {
  Workspace& ws = s.ws;
  const int64_t L = s.H * s.W, n = s.n * s.C * L;
  a.group_norm.forward(ws.normed.ensure(n), ws.stats, s.cur(), s.n, L);
  transpose_batched(ws.tokens.ensure(n), ws.normed.data(), s.n, s.C, L);
  a.to_q.forward(ws.q.ensure(n), ws.tokens.data(), s.n * L);
  a.to_k.forward(ws.k.ensure(n), ws.tokens.data(), s.n * L);
  a.to_v.forward(ws.v.ensure(n), ws.tokens.data(), s.n * L);
  cpu::attention_forward<float>(ws.o.ensure(n), nullptr, ws.q.data(), ws.k.data(), ws.v.data(),
                                cpu::AttentionShape{s.n, L, L, a.heads, a.C / a.heads, false});
  a.to_out.forward(ws.proj.ensure(n), ws.o.data(), s.n * L);
  float* y = s.next(s.C, s.H, s.W);
  transpose_batched(y, ws.proj.data(), s.n, L, s.C);
  cpu::add_forward(y, y, s.cur(), n);
  s.flip(s.C, s.H, s.W);
}

void mid_block(Stream& s, const Vae::MidBlock& m) {
  resnet(s, m.resnet0);
  if (m.has_attention) attention(s, m.attention);
  resnet(s, m.resnet1);
}

// y [NC, H+1, W+1] = x [NC, H, W] with a zero row below and a zero column to the right: F.pad(x, (0, 1, 0, 1)).
void pad_bottom_right(float* y, const float* x, int64_t NC, int64_t H, int64_t W) {
  parallel_for(NC, 4, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* xs = x + p * H * W;
      float* yd = y + p * (H + 1) * (W + 1);
      for (int64_t i = 0; i < H; ++i) {
        std::memcpy(yd + i * (W + 1), xs + i * W, size_t(W) * sizeof(float));
        yd[i * (W + 1) + W] = 0.f;
      }
      std::fill(yd + H * (W + 1), yd + (H + 1) * (W + 1), 0.f);
    }
  });
}

void downsample(Stream& s, const Conv2d& conv) {
  pad_bottom_right(s.ws.padded.ensure(s.n * s.C * (s.H + 1) * (s.W + 1)), s.cur(), s.n * s.C, s.H, s.W);
  const int64_t Ho = conv.out_size(s.H + 1), Wo = conv.out_size(s.W + 1);
  conv.forward(s.next(s.C, Ho, Wo), s.ws.padded.data(), s.n, s.H + 1, s.W + 1);
  s.flip(s.C, Ho, Wo);
}

// GroupNorm -> SiLU (fused) -> conv_out, into `out`.
void norm_act_conv(Stream& s, const GroupNorm& norm, const Conv2d& conv, float* out) {
  float* t = s.next(s.C, s.H, s.W);
  norm.forward_silu(t, s.ws.stats, s.cur(), s.n, s.H * s.W);
  conv.forward(out, t, s.n, s.H, s.W);
}

// Rows [0, N) in chunks of `slice` (0: all at once).
template <class F>
void for_slices(int64_t N, int64_t slice, F&& fn) {
  check(slice >= 0, "NCP_EINVAL", "VAE: slice must be >= 0 (0 = the whole batch at once), got " + std::to_string(slice));
  const int64_t step = slice == 0 ? N : slice;
  for (int64_t r0 = 0; r0 < N; r0 += step) fn(r0, std::min(step, N - r0));
}

}  // namespace

VaeConfig parse_vae_config(const std::string& json_text, const std::string& source) {
  const json::Value root = json::parse(json_text, "NCP_ECONFIG", source);
  if (!root.is_object()) throw Error("NCP_ECONFIG", source + ": not a JSON object");
  const ConfigReader r(root, source);
  VaeConfig c;
  r.only_string("_class_name", "AutoencoderKL");
  c.block_out_channels = r.get("block_out_channels") ? r.int_list("block_out_channels") : std::vector<int64_t>{64};
  const size_t levels = c.block_out_channels.size();
  r.only_strings("down_block_types", levels, "DownEncoderBlock2D");
  r.only_strings("up_block_types", levels, "UpDecoderBlock2D");
  r.only_string("act_fn", "silu");
  c.in_channels = r.integer("in_channels", c.in_channels, 1);
  c.out_channels = r.integer("out_channels", c.out_channels, 1);
  c.latent_channels = r.integer("latent_channels", c.latent_channels, 1);
  c.layers_per_block = r.integer("layers_per_block", c.layers_per_block, 1);
  c.norm_num_groups = r.integer("norm_num_groups", c.norm_num_groups, 1);
  for (size_t i = 0; i < levels; ++i)
    if (c.block_out_channels[i] % c.norm_num_groups != 0)
      r.fail("norm_num_groups", *r.get("norm_num_groups"),
             "does not divide block_out_channels[" + std::to_string(i) + "] = " +
                 std::to_string(c.block_out_channels[i]));
  c.sample_size = r.integer("sample_size", c.sample_size, 1);
  c.scaling_factor = r.positive("scaling_factor", c.scaling_factor);
  c.shift_factor = r.number("shift_factor", c.shift_factor);
  c.use_quant_conv = r.boolean("use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = r.boolean("use_post_quant_conv", c.use_post_quant_conv);
  c.mid_block_add_attention = r.boolean("mid_block_add_attention", c.mid_block_add_attention);
  return c;
}

Manifest Vae::manifest(const VaeConfig& config) {
  Manifest m;
  const Vae recorder(config, ParamSource(m));
  return m;
}

Vae::Vae(const VaeConfig& config, const WeightMap& weights) : Vae(config, ParamSource(weights)) {}

namespace {

Vae::MidBlock make_mid(ParamSource& p, const std::string& prefix, int64_t C, int64_t G, bool attention) {
  Vae::MidBlock m;
  m.resnet0 = ResnetBlock2D(p, prefix + ".resnets.0", C, C, 0, G, kEps);
  m.has_attention = attention;
  if (attention) {
    const std::string a = prefix + ".attentions.0";
    Vae::MidAttention& at = m.attention;
    at.C = C;
    at.heads = 1;  // C / attention_head_dim, with attention_head_dim = C in diffusers' VAE
    at.group_norm = GroupNorm(p, a + ".group_norm", C, G, kEps);
    at.to_q = Linear(p, a + ".to_q", C, C);
    at.to_k = Linear(p, a + ".to_k", C, C);
    at.to_v = Linear(p, a + ".to_v", C, C);
    at.to_out = Linear(p, a + ".to_out.0", C, C);
  }
  m.resnet1 = ResnetBlock2D(p, prefix + ".resnets.1", C, C, 0, G, kEps);
  return m;
}

}  // namespace

Vae::Vae(const VaeConfig& c, ParamSource p) : config_(c) {
  check_config(c);
  const int64_t n = c.levels(), G = c.norm_num_groups, Z = c.latent_channels;
  const auto& ch = c.block_out_channels;

  enc_conv_in_ = Conv2d(p, "encoder.conv_in", c.in_channels, ch[0], 3);
  int64_t out_ch = ch[0];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = ch[size_t(i)];
    const std::string prefix = name("encoder", "down_blocks", i);
    DownLevel d;
    for (int64_t j = 0; j < c.layers_per_block; ++j)
      d.resnets.emplace_back(p, name(prefix, "resnets", j), j == 0 ? in_ch : out_ch, out_ch, 0, G, kEps);
    if (i < n - 1) {
      d.has_downsampler = true;
      d.downsampler = Conv2d(p, prefix + ".downsamplers.0.conv", out_ch, out_ch, 3, 2);
      d.downsampler.pad = 0;  // the (0, 1, 0, 1) padding is explicit
    }
    enc_levels_.push_back(std::move(d));
  }
  enc_mid_ = make_mid(p, "encoder.mid_block", ch.back(), G, c.mid_block_add_attention);
  enc_norm_out_ = GroupNorm(p, "encoder.conv_norm_out", ch.back(), G, kEps);
  enc_conv_out_ = Conv2d(p, "encoder.conv_out", ch.back(), 2 * Z, 3);

  if (c.use_quant_conv) quant_conv_ = Conv2d(p, "quant_conv", 2 * Z, 2 * Z, 1);
  if (c.use_post_quant_conv) post_quant_conv_ = Conv2d(p, "post_quant_conv", Z, Z, 1);

  dec_conv_in_ = Conv2d(p, "decoder.conv_in", Z, ch.back(), 3);
  dec_mid_ = make_mid(p, "decoder.mid_block", ch.back(), G, c.mid_block_add_attention);
  out_ch = ch.back();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t prev_ch = out_ch;
    out_ch = ch[size_t(n - 1 - i)];
    const std::string prefix = name("decoder", "up_blocks", i);
    UpLevel u;
    for (int64_t j = 0; j <= c.layers_per_block; ++j)
      u.resnets.emplace_back(p, name(prefix, "resnets", j), j == 0 ? prev_ch : out_ch, out_ch, 0, G, kEps);
    if (i < n - 1) {
      u.has_upsampler = true;
      u.upsampler = Upsample2D(p, prefix + ".upsamplers.0", out_ch);
    }
    dec_levels_.push_back(std::move(u));
  }
  dec_norm_out_ = GroupNorm(p, "decoder.conv_norm_out", ch[0], G, kEps);
  dec_conv_out_ = Conv2d(p, "decoder.conv_out", ch[0], c.out_channels, 3);
}

int64_t Vae::latent_size(int64_t image_size) const {
  int64_t s = image_size;
  for (int64_t i = 0; i + 1 < config_.levels(); ++i) {
    check(s >= 2, "NCP_ESHAPE",
          "VAE encoder: an image side of " + std::to_string(image_size) + " shrinks below 2 before downsampling " +
              std::to_string(i + 1) + " of " + std::to_string(config_.levels() - 1));
    s = (s + 1 - 3) / 2 + 1;  // pad (0, 1), conv 3x3 stride 2: floor(s / 2)
  }
  return s;
}

int64_t Vae::image_size(int64_t latent_size) const { return latent_size << (config_.levels() - 1); }

LatentDist Vae::encode(const float* image, int64_t N, int64_t H, int64_t W, int64_t slice) const {
  const VaeConfig& c = config_;
  check(image != nullptr, "NCP_EINVAL", "VAE encode: image is null");
  check(N >= 1 && H >= 1 && W >= 1, "NCP_ESHAPE",
        "VAE encode: image [" + std::to_string(N) + ", " + std::to_string(c.in_channels) + ", " + std::to_string(H) +
            ", " + std::to_string(W) + "] must not be empty");
  const int64_t h = latent_size(H), w = latent_size(W), Z = c.latent_channels, per_row = Z * h * w;
  LatentDist out;
  out.mean.shape = out.logvar.shape = {N, Z, h, w};
  out.mean.data.resize(size_t(N * per_row));
  out.logvar.data.resize(size_t(N * per_row));

  Workspace ws;
  Buffer moments;
  for_slices(N, slice, [&](int64_t r0, int64_t n) {
    Stream s{ws, n, c.in_channels, H, W};
    const float* x = image + r0 * c.in_channels * H * W;
    enc_conv_in_.forward(s.next(enc_conv_in_.cout, H, W), x, n, H, W);
    s.flip(enc_conv_in_.cout, H, W);
    for (const DownLevel& d : enc_levels_) {
      for (const ResnetBlock2D& r : d.resnets) resnet(s, r);
      if (d.has_downsampler) downsample(s, d.downsampler);
    }
    mid_block(s, enc_mid_);
    float* m = moments.ensure(n * 2 * per_row);
    norm_act_conv(s, enc_norm_out_, enc_conv_out_, m);
    if (c.use_quant_conv) {
      float* q = s.next(2 * Z, h, w);
      quant_conv_.forward(q, m, n, h, w);
      std::memcpy(m, q, size_t(n * 2 * per_row) * sizeof(float));
    }
    // Channels [0, Z) are the mean, [Z, 2Z) the log-variance.
    for (int64_t b = 0; b < n; ++b) {
      const float* mb = m + b * 2 * per_row;
      std::memcpy(out.mean.data.data() + (r0 + b) * per_row, mb, size_t(per_row) * sizeof(float));
      float* lv = out.logvar.data.data() + (r0 + b) * per_row;
      for (int64_t i = 0; i < per_row; ++i) lv[i] = std::clamp(mb[per_row + i], kLogvarMin, kLogvarMax);
    }
  });
  return out;
}

Tensor32 Vae::decode(const float* latent, int64_t N, int64_t h, int64_t w, int64_t slice) const {
  const VaeConfig& c = config_;
  check(latent != nullptr, "NCP_EINVAL", "VAE decode: latent is null");
  check(N >= 1 && h >= 1 && w >= 1, "NCP_ESHAPE",
        "VAE decode: latent [" + std::to_string(N) + ", " + std::to_string(c.latent_channels) + ", " +
            std::to_string(h) + ", " + std::to_string(w) + "] must not be empty");
  const int64_t Z = c.latent_channels, H = image_size(h), W = image_size(w), per_row = c.out_channels * H * W;
  Tensor32 out;
  out.shape = {N, c.out_channels, H, W};
  out.data.resize(size_t(N * per_row));

  Workspace ws;
  Buffer z;
  for_slices(N, slice, [&](int64_t r0, int64_t n) {
    Stream s{ws, n, Z, h, w};
    const float* x = latent + r0 * Z * h * w;
    if (c.use_post_quant_conv) {
      post_quant_conv_.forward(z.ensure(n * Z * h * w), x, n, h, w);
      x = z.data();
    }
    dec_conv_in_.forward(s.next(dec_conv_in_.cout, h, w), x, n, h, w);
    s.flip(dec_conv_in_.cout, h, w);
    mid_block(s, dec_mid_);
    for (const UpLevel& u : dec_levels_) {
      for (const ResnetBlock2D& r : u.resnets) resnet(s, r);
      if (u.has_upsampler) {
        u.upsampler.forward(s.next(s.C, 2 * s.H, 2 * s.W), s.cur(), n, s.H, s.W, ws.up);
        s.flip(s.C, 2 * s.H, 2 * s.W);
      }
    }
    norm_act_conv(s, dec_norm_out_, dec_conv_out_, out.data.data() + r0 * per_row);
  });
  return out;
}

Tensor32 Vae::decode(const Tensor32& latent, int64_t slice) const {
  const auto& s = latent.shape;
  check(s.size() == 4 && s[1] == config_.latent_channels && numel(s) == int64_t(latent.data.size()), "NCP_ESHAPE",
        "VAE decode: latent has shape " + shape_str(s) + ", expected [batch, " +
            std::to_string(config_.latent_channels) + ", height, width]");
  return decode(latent.data.data(), s[0], s[2], s[3], slice);
}

Tensor32 Vae::sample(const Tensor32& mean, const Tensor32& logvar, uint64_t seed) {
  check(mean.shape == logvar.shape && numel(mean.shape) == int64_t(mean.data.size()) &&
            logvar.data.size() == mean.data.size(),
        "NCP_ESHAPE",
        "VAE sample: mean " + shape_str(mean.shape) + " and logvar " + shape_str(logvar.shape) + " must agree");
  std::mt19937_64 rng(seed);
  // Uniforms from the top 53 bits; u1 in (0, 1] keeps the log finite.
  auto uniform = [&rng] { return double(rng() >> 11) * 0x1.0p-53; };
  Tensor32 z;
  z.shape = mean.shape;
  z.data.resize(mean.data.size());
  const size_t n = z.data.size();
  for (size_t i = 0; i < n; i += 2) {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1)), t = kTwoPi * u2;
    const double e[2] = {r * std::cos(t), r * std::sin(t)};
    for (size_t j = 0; j < 2 && i + j < n; ++j) {
      const float lv = std::clamp(logvar.data[i + j], kLogvarMin, kLogvarMax);
      z.data[i + j] = float(mean.data[i + j] + std::exp(0.5 * double(lv)) * e[j]);
    }
  }
  return z;
}

namespace {

// diffusers before 0.14 saved the VAE attention as query/key/value/proj_attn (Linear layers of the same shapes);
// diffusers itself renames them on load.
const std::pair<const char*, const char*> kDeprecatedAttention[] = {
    {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}};

std::string deprecated_name(const std::string& name) {
  if (name.find(".mid_block.attentions.") == std::string::npos) return name;
  for (const auto& [now, before] : kDeprecatedAttention)
    if (const size_t at = name.find(now); at != std::string::npos)
      return name.substr(0, at) + before + name.substr(at + std::strlen(now));
  return name;
}

}  // namespace

std::unique_ptr<LoadedVae> load_vae(const std::string& model_dir, const std::string& variant) {
  const ComponentFiles files = resolve_component_files(model_dir, "vae", "diffusion_pytorch_model", variant);
  auto m = std::make_unique<LoadedVae>();
  m->model_dir = model_dir;
  m->weight_files = files.weight_files;
  m->config = parse_vae_config(files.config_text, files.config_path);
  Manifest manifest = Vae::manifest(m->config);

  bool deprecated = false;
  for (const auto& path : files.weight_files) {
    const SafetensorsFile f = SafetensorsFile::open(path);
    for (const auto& p : manifest)
      if (deprecated_name(p.name) != p.name && f.find(deprecated_name(p.name))) deprecated = true;
  }
  if (!deprecated) {
    m->weights = load_weights(manifest, files.weight_files, "", model_load_mode());
  } else {
    // Copied into float32: the renamed attention tensors are re-put under their current names below.
    Manifest old = manifest;
    for (auto& p : old) p.name = deprecated_name(p.name);
    m->weights = load_weights(old, files.weight_files);
    // The few attention tensors are copied under their current names; the rest are bound as loaded.
    for (const auto& p : manifest)
      if (deprecated_name(p.name) != p.name) m->weights.put(p.name, m->weights.all().at(deprecated_name(p.name)));
  }
  m->vae = std::make_unique<Vae>(m->config, m->weights);
  return m;
}

}  // namespace ncp::model
