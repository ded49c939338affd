#include "model/unet.h"

#include <algorithm>

#include "core/error.h"
#include "model/dev_ops.h"

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

// A growable list whose elements keep their addresses and allocations across rewinds.
template <class T>
class Pool {
 public:
  T& next() {
    if (used_ == items_.size()) items_.push_back(std::make_unique<T>());
    return *items_[used_++];
  }
  T& operator[](size_t i) { return *items_[i]; }
  T& back() { return *items_[used_ - 1]; }
  size_t size() const { return used_; }
  void rewind() { used_ = 0; }

 private:
  std::vector<std::unique_ptr<T>> items_;
  size_t used_ = 0;
};

struct Skip {
  Buffer x;
  int64_t C = 0, H = 0, W = 0;
};

// Device copies of a call's inputs and its output (a U-Net on a CUDA device takes and returns host arrays).
struct DeviceIO {
  Buffer sample, timesteps, context, text_embeds, time_ids, out;
};

float* upload(Buffer& b, const float* host, int64_t n) {
  if (!host) return nullptr;
  float* d = b.ensure(n);
  dev::upload(d, host, n);
  return d;
}

// One recorded block call. x is its input, y its output, H x W the input's spatial size; C (and C2) channels.
// An up-path resnet reads the channel concatenation [x | x2] (its skip), which is not kept.
// y_storage: the tape's buffer behind y (nullptr for the pass's output), freed once backward has walked this op.
struct Op {
  enum Kind { ConvIn, Resnet, Attention, Downsample, Upsample, Head } kind;
  const void* module;
  size_t acts;  // index into the kind's activation pool
  const float* x;
  const float* x2;
  const float* y;
  int64_t C, C2, H, W;
  Buffer* y_storage;
};

}  // namespace

// Op::acts of a block whose activations were not kept (gradient checkpointing): backward recomputes them.
constexpr size_t kRecompute = ~size_t(0);

struct UNetTape::State {
  UNetInputs in;
  bool lora = false, centered = false;
  bool checkpointing = false;
  SelectiveRecompute recompute;
  Buffer temb;  // SiLU(time embedding): resnets read it again when recomputed
  ResnetBlock2D::Acts recompute_resnet;
  Transformer2DModel::Acts recompute_attention;
  Buffer recompute_out;
  Buffer cat, d_cat;  // an up-path resnet's input [h | skip], rebuilt in backward, and its gradient
  const float* result = nullptr;  // the pass's output, whose gradient backward starts from
  int64_t result_size = 0;
  std::vector<Op> ops;
  Pool<Skip> skips;
  Pool<Buffer> buffers;  // every other hidden state
  Pool<ResnetBlock2D::Acts> resnets;
  Pool<Transformer2DModel::Acts> attentions;
  NormStats head_stats;
  Buffer centered_sample;
  DeviceIO io;  // the inputs backward reads again, on the device
  // Backward's gradient buffers, keyed by the activation they belong to, and the free ones.
  std::vector<std::pair<const float*, Buffer*>> grads;
  Pool<Buffer> grad_pool;
  std::vector<Buffer*> free_grads;
  Buffer scratch;
  void rewind() {
    ops.clear(), skips.rewind(), buffers.rewind(), resnets.rewind(), attentions.rewind();
  }
};

UNetTape::UNetTape() : s_(std::make_unique<State>()) {}
UNetTape::~UNetTape() = default;
void UNetTape::set_checkpointing(bool on) { s_->checkpointing = on; }
bool UNetTape::checkpointing() const { return s_->checkpointing; }
void UNetTape::set_recompute(SelectiveRecompute r) { s_->recompute = r; }
SelectiveRecompute UNetTape::recompute() const { return s_->recompute; }

Manifest UNet::manifest(const UNetConfig& config) {
  Manifest m;
  const UNet recorder(config, ParamSource(m));
  return m;
}

UNet::UNet(const UNetConfig& config, const WeightMap& weights) : UNet(config, ParamSource(weights)) {}

UNet::UNet(const UNetConfig& config, std::shared_ptr<const DeviceWeights> weights)
    : UNet(config, ParamSource(*weights)) {
  device_ = weights->device();
  device_weights_ = std::move(weights);
}

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

void UNet::forward(const UNetInputs& in, float* out, Trace* trace, bool lora) const {
  run(in, Stop::Full, out, trace, nullptr, lora);
}

void UNet::encode(const UNetInputs& in, EncoderLayer layer, float* out, Trace* trace, bool lora) const {
  check(layer == EncoderLayer::Down || config_.has_mid_block, "NCP_EINVAL",
        "UNet encode: layer \"mid\" asked of a U-Net without a mid block");
  run(in, layer == EncoderLayer::Mid ? Stop::Mid : Stop::Down, out, trace, nullptr, lora);
}

void UNet::forward_train(const UNetInputs& in, float* out, UNetTape& tape, bool lora) const {
  run(in, Stop::Full, out, nullptr, &tape, lora);
}

void UNet::encode_train(const UNetInputs& in, EncoderLayer layer, float* out, UNetTape& tape, bool lora) const {
  check(layer == EncoderLayer::Down || config_.has_mid_block, "NCP_EINVAL",
        "UNet encode: layer \"mid\" asked of a U-Net without a mid block");
  run(in, layer == EncoderLayer::Mid ? Stop::Mid : Stop::Down, out, nullptr, &tape, lora);
}

void UNet::run(const UNetInputs& host_in, Stop stop, float* host_out, Trace* trace, UNetTape* tape,
               bool lora) const {
  check_inputs(host_in);
  const UNetConfig& c = config_;
  const int64_t B = host_in.batch, T = c.time_embed_dim(), C0 = c.block_out_channels[0], L = host_in.text_len;
  dev::DeviceScope scope(device_);
  dev::PrecisionScope device_precision(weight_matrices_);
  TapePrecision precision(tape_bf16_);
  const bool on_device = device_ >= 0;
  UNetTape::State* t = tape ? tape->s_.get() : nullptr;

  // On a device the inputs are uploaded first (into the tape when training: backward reads the context again)
  // and the output is computed in a device buffer, downloaded at the end.
  DeviceIO local_io;
  DeviceIO& io = t ? t->io : local_io;
  UNetInputs in = host_in;
  float* out = host_out;
  if (on_device) {
    const int64_t HW = in.height * in.width;
    in.sample = upload(io.sample, host_in.sample, B * c.in_channels * HW);
    in.timesteps = upload(io.timesteps, host_in.timesteps, B);
    in.encoder_hidden_states = upload(io.context, host_in.encoder_hidden_states, B * L * c.cross_attention_dim);
    if (c.text_time_embedding) {
      in.text_embeds = upload(io.text_embeds, host_in.text_embeds, B * pooled_dim());
      in.time_ids = upload(io.time_ids, host_in.time_ids, B * 6);
    }
    out = stop == Stop::Full ? io.out.ensure(B * c.out_channels * HW) : nullptr;
    if (lora) upload_lora();
  }
  const float* context = in.encoder_hidden_states;
  auto record = [&](const std::string& key, const float* x, std::vector<int64_t> shape) {
    if (!trace) return;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    Tensor32 v{std::move(shape), std::vector<float>(size_t(n))};
    dev::download(v.data.data(), x, n);
    (*trace)[key] = std::move(v);
  };

  // Inference reuses one set of activations per block kind and ping-pongs the hidden state between two
  // buffers; training takes a fresh buffer from the tape for every block call and records the call.
  if (t) t->rewind(), t->in = in, t->lora = lora;
  Pool<Skip> local_skips;
  Pool<Skip>& skips = t ? t->skips : local_skips;
  ResnetBlock2D::Acts shared_resnet;
  Transformer2DModel::Acts shared_attention;
  Buffer upsampled;  // the upsamplers' scratch: their backward needs no activation
  Buffer ping[2];
  auto hidden = [&](const float* h) -> Buffer& {
    if (t) return t->buffers.next();
    return ping[0].data() == h ? ping[1] : ping[0];
  };
  // With gradient checkpointing the blocks' internals go to the shared (inference) activations and backward
  // recomputes them from the block's input, which the tape keeps.
  const bool keep_acts = t && !t->checkpointing;
  auto resnet_acts = [&](size_t& index) -> ResnetBlock2D::Acts& {
    index = keep_acts ? t->resnets.size() : kRecompute;
    return keep_acts ? t->resnets.next() : shared_resnet;
  };
  auto attention_acts = [&](size_t& index) -> Transformer2DModel::Acts& {
    index = keep_acts ? t->attentions.size() : kRecompute;
    if (!keep_acts) return shared_attention;
    Transformer2DModel::Acts& a = t->attentions.next();
    a.recompute = t->recompute;
    return a;
  };
  auto push_op = [&](Op op) {
    if (t) t->ops.push_back(op);
  };
  int64_t H = in.height, W = in.width;

  // Time embedding (+ SDXL's text_time embedding), SiLU'd once here for every resnet's time_emb_proj. No LoRA
  // and no gradient here: timesteps and added conditions are data.
  Buffer sinusoid, emb, emb_act;
  TimestepEmbedding::Acts time_acts;
  dev::timestep_embedding(sinusoid.ensure(B * C0), in.timesteps, B, C0, c.flip_sin_to_cos, c.freq_shift);
  time_embedding_.forward(emb.ensure(B * T), sinusoid.data(), B, time_acts);
  record("time_embedding", emb.data(), {B, T});
  if (c.text_time_embedding) {
    const int64_t P = pooled_dim(), A = c.addition_time_embed_dim, D = c.projection_class_embeddings_input_dim;
    Buffer ids, add_in, aug;
    dev::timestep_embedding(ids.ensure(B * 6 * A), in.time_ids, B * 6, A, c.flip_sin_to_cos, c.freq_shift);
    float* row = add_in.ensure(B * D);
    for (int64_t b = 0; b < B; ++b, row += D) {  // [text_embeds | sinusoids of the 6 ids, flattened]
      dev::copy(row, in.text_embeds + b * P, P);
      dev::copy(row + P, ids.data() + b * 6 * A, 6 * A);
    }
    TimestepEmbedding::Acts add_acts;
    add_embedding_.forward(aug.ensure(B * T), add_in.data(), B, add_acts);
    record("add_embedding", aug.data(), {B, T});
    dev::add_forward(emb.data(), emb.data(), aug.data(), B * T);
  }
  // Kept on the tape: recomputed resnets (gradient checkpointing) read it again.
  Buffer& temb_buf = t ? t->temb : emb_act;
  dev::activation_forward(Activation::SiLU, temb_buf.ensure(B * T), emb.data(), B * T);
  const float* temb = temb_buf.data();

  const float* sample = in.sample;
  Buffer local_centered;
  if (c.center_input_sample) {
    const int64_t n = B * c.in_channels * H * W;
    float* x = (t ? t->centered_sample : local_centered).ensure(n);
    dev::scale_shift(x, sample, 2.0f, -1.0f, n);
    sample = x;
  }
  if (t) t->centered = c.center_input_sample;

  // Every down-path output is kept as a skip; the latest one is the current hidden state.
  auto push_skip = [&](int64_t C) -> Skip& {
    Skip& s = skips.next();
    s.C = C, s.H = H, s.W = W;
    s.x.ensure(B * C * H * W);
    return s;
  };
  {
    Skip& s = push_skip(C0);
    conv_in_.forward(s.x.data(), sample, B, H, W);
    push_op({Op::ConvIn, &conv_in_, 0, sample, nullptr, s.x.data(), c.in_channels, 0, H, W, &s.x});
    record("conv_in", s.x.data(), {B, C0, H, W});
  }

  for (size_t i = 0; i < down_.size(); ++i) {
    const DownBlock& d = down_[i];
    for (size_t j = 0; j < d.resnets.size(); ++j) {
      const int64_t C = d.resnets[j].cout, n = B * C * H * W;
      const float* x = skips.back().x.data();
      const int64_t Cx = skips.back().C;
      Skip& s = push_skip(C);
      size_t ra = 0;
      if (d.attentions.empty()) {
        d.resnets[j].forward(s.x.data(), x, temb, B, H, W, resnet_acts(ra));
        push_op({Op::Resnet, &d.resnets[j], ra, x, nullptr, s.x.data(), Cx, 0, H, W, &s.x});
      } else {
        Buffer& r = hidden(nullptr);
        d.resnets[j].forward(r.ensure(n), x, temb, B, H, W, resnet_acts(ra));
        push_op({Op::Resnet, &d.resnets[j], ra, x, nullptr, r.data(), Cx, 0, H, W, &r});
        size_t aa = 0;
        d.attentions[j].forward(s.x.data(), r.data(), context, B, H, W, L, attention_acts(aa), lora);
        push_op({Op::Attention, &d.attentions[j], aa, r.data(), nullptr, s.x.data(), C, 0, H, W, &s.x});
      }
    }
    if (d.has_downsampler) {
      const float* x = skips.back().x.data();
      const int64_t C = skips.back().C, Hi = H, Wi = W;
      H = d.downsampler.conv.out_size(H), W = d.downsampler.conv.out_size(W);
      Skip& s = push_skip(C);
      d.downsampler.forward(s.x.data(), x, B, Hi, Wi);
      push_op({Op::Downsample, &d.downsampler, 0, x, nullptr, s.x.data(), C, 0, Hi, Wi, &s.x});
    }
    record(name("down_blocks", i), skips.back().x.data(), {B, skips.back().C, H, W});
  }
  const int64_t Cd = skips.back().C;
  auto finish = [&](const float* h, int64_t n) {
    if (host_out) dev::download(host_out, h, n);
    if (t) t->result = h, t->result_size = n;
  };
  if (stop == Stop::Down) return finish(skips.back().x.data(), B * Cd * H * W);

  const float* h = skips.back().x.data();
  int64_t Ch = Cd;
  if (c.has_mid_block) {
    const int64_t n = B * Ch * H * W;
    size_t ra = 0, aa = 0;
    Buffer& r0 = hidden(h);
    mid_.resnet0.forward(r0.ensure(n), h, temb, B, H, W, resnet_acts(ra));
    push_op({Op::Resnet, &mid_.resnet0, ra, h, nullptr, r0.data(), Ch, 0, H, W, &r0});
    Buffer& a = hidden(r0.data());
    mid_.attention.forward(a.ensure(n), r0.data(), context, B, H, W, L, attention_acts(aa), lora);
    push_op({Op::Attention, &mid_.attention, aa, r0.data(), nullptr, a.data(), Ch, 0, H, W, &a});
    Buffer& r1 = hidden(a.data());
    mid_.resnet1.forward(r1.ensure(n), a.data(), temb, B, H, W, resnet_acts(ra));
    push_op({Op::Resnet, &mid_.resnet1, ra, a.data(), nullptr, r1.data(), Ch, 0, H, W, &r1});
    h = r1.data();
    record("mid_block", h, {B, Ch, H, W});
    if (stop == Stop::Mid) return finish(h, n);
  }

  // The up path takes the skips from the last one down. Inference frees each once read.
  Buffer local_cat;
  size_t next_skip = skips.size();
  for (size_t i = 0; i < up_.size(); ++i) {
    const UpBlock& u = up_[i];
    for (size_t j = 0; j < u.resnets.size(); ++j) {
      Skip& s = skips[--next_skip];
      const int64_t HW = H * W, C = u.resnets[j].cout;
      // The resnet reads [h | skip]. The tape keeps h and the skip, not this concatenation of them: backward
      // rebuilds it (a copy) rather than hold a third of the up path's hidden states twice.
      dev::concat_channels_forward(local_cat.ensure(B * (Ch + s.C) * HW), h, s.x.data(), B, Ch, s.C, HW);
      const float* skip = s.x.data();
      if (!t) s.x = Buffer();
      size_t ra = 0;
      Buffer& r = hidden(h);
      u.resnets[j].forward(r.ensure(B * C * HW), local_cat.data(), temb, B, H, W, resnet_acts(ra));
      push_op({Op::Resnet, &u.resnets[j], ra, h, skip, r.data(), Ch, s.C, H, W, &r});
      h = r.data();
      if (!u.attentions.empty()) {
        size_t aa = 0;
        Buffer& a = hidden(h);
        u.attentions[j].forward(a.ensure(B * C * HW), h, context, B, H, W, L, attention_acts(aa), lora);
        push_op({Op::Attention, &u.attentions[j], aa, h, nullptr, a.data(), C, 0, H, W, &a});
        h = a.data();
      }
      Ch = C;
    }
    if (u.has_upsampler) {
      Buffer& y = hidden(h);
      u.upsampler.forward(y.ensure(B * Ch * 4 * H * W), h, B, H, W, upsampled);
      push_op({Op::Upsample, &u.upsampler, 0, h, nullptr, y.data(), Ch, 0, H, W, &y});
      h = y.data();
      H *= 2, W *= 2;
    }
    record(name("up_blocks", i), h, {B, Ch, H, W});
  }

  // Head: GroupNorm -> SiLU (fused; backward needs only h and the statistics) -> conv_out.
  const int64_t n = B * C0 * H * W;
  Buffer act;
  NormStats local_stats;
  conv_norm_out_.forward_silu(act.ensure(n), t ? t->head_stats : local_stats, h, B, H * W);
  conv_out_.forward(out, act.data(), B, H, W);
  push_op({Op::Head, nullptr, 0, h, nullptr, out, C0, 0, H, W, nullptr});
  if (t) t->result = out, t->result_size = B * c.out_channels * H * W;
  if (on_device) dev::download(host_out, out, B * c.out_channels * H * W);
}

// One upload of every attached adapter's A and B (LoraPacking), and the adapters' device pointers into it.
void UNet::upload_lora() const {
  const int64_t n = LoraPacking::size(attached_);
  lora_staging_.resize(size_t(n));
  LoraPacking::pack_params(attached_, lora_staging_.data());
  float* params = lora_params_dev_.ensure(n);
  dev::upload(params, lora_staging_.data(), n);
  LoraPacking::bind(attached_, params, nullptr);
}

// One fill of this backward's device gradients for every attached adapter.
void UNet::zero_lora_grads() const {
  LoraPacking::bind(attached_, nullptr, lora_grads_dev_.zeros(LoraPacking::size(attached_)));
}

// One download of them, added into the host gradients.
void UNet::download_lora_grads() const {
  const int64_t n = LoraPacking::size(attached_);
  lora_staging_.resize(size_t(n));
  dev::download(lora_staging_.data(), lora_grads_dev_.data(), n);
  LoraPacking::add_grads(attached_, lora_staging_.data());
}

void UNet::backward(const float* dout, UNetTape& tape, float* dsample) const {
  UNetTape::State& t = *tape.s_;
  check(!t.ops.empty() && t.result, "NCP_EINVAL", "UNet backward: the tape holds no training forward");
  const int64_t B = t.in.batch, L = t.in.text_len;
  const float* context = t.in.encoder_hidden_states;
  const bool lora = t.lora;
  dev::DeviceScope scope(device_);
  dev::PrecisionScope device_precision(weight_matrices_);
  TapePrecision precision(tape_bf16_);
  const bool on_device = device_ >= 0;
  if (on_device && lora) zero_lora_grads();  // this pass's LoRA gradients, added into the host dA/dB at the end

  // Gradient buffers keyed by the activation they belong to; one is recycled as soon as the op that produced
  // its activation has been walked back.
  t.grads.clear();
  t.free_grads.clear();
  t.grad_pool.rewind();
  auto grad_of = [&](const float* x, int64_t n) -> float* {
    for (auto& [key, buf] : t.grads)
      if (key == x) return buf->data();
    Buffer* b = nullptr;
    if (!t.free_grads.empty()) {
      b = t.free_grads.back();
      t.free_grads.pop_back();
    } else {
      b = &t.grad_pool.next();
    }
    t.grads.emplace_back(x, b);
    return b->zeros(n);
  };
  auto find_grad = [&](const float* y) -> float* {
    for (auto& [key, buf] : t.grads)
      if (key == y) return buf->data();
    return nullptr;
  };
  auto release = [&](const float* y) {
    for (size_t i = 0; i < t.grads.size(); ++i)
      if (t.grads[i].first == y) {
        t.free_grads.push_back(t.grads[i].second);
        t.grads.erase(t.grads.begin() + long(i));
        return;
      }
  };
  dev::upload(grad_of(t.result, t.result_size), dout, t.result_size);

  for (size_t k = t.ops.size(); k-- > 0;) {
    const Op& op = t.ops[k];
    const float* dy = find_grad(op.y);
    if (!dy) continue;  // nothing downstream of this op reached the result
    const int64_t HW = op.H * op.W;
    switch (op.kind) {
      case Op::Head: {
        const int64_t n = B * op.C * HW;
        float* d_act = t.scratch.zeros(n);
        conv_out_.backward(d_act, dy, B, op.H, op.W);
        conv_norm_out_.backward_silu(grad_of(op.x, n), d_act, op.x, t.head_stats, B, HW);
        break;
      }
      case Op::Upsample: {
        const auto* m = static_cast<const Upsample2D*>(op.module);
        m->backward(grad_of(op.x, B * op.C * HW), dy, B, op.H, op.W, t.scratch);
        break;
      }
      case Op::Attention: {
        const auto* m = static_cast<const Transformer2DModel*>(op.module);
        Transformer2DModel::Acts* a = op.acts == kRecompute ? &t.recompute_attention : &t.attentions[op.acts];
        if (op.acts == kRecompute)
          m->forward(t.recompute_out.ensure(B * op.C * HW), op.x, context, B, op.H, op.W, L, *a, lora);
        m->backward(grad_of(op.x, B * op.C * HW), dy, op.x, context, B, op.H, op.W, L, *a, lora);
        break;
      }
      case Op::Resnet: {
        const auto* m = static_cast<const ResnetBlock2D*>(op.module);
        ResnetBlock2D::Acts* a = op.acts == kRecompute ? &t.recompute_resnet : &t.resnets[op.acts];
        const int64_t cin = op.C + op.C2;
        const float* x = op.x;
        if (op.x2) {  // an up-path resnet: its input [x | x2] again
          x = t.cat.ensure(B * cin * HW);
          dev::concat_channels_forward(t.cat.data(), op.x, op.x2, B, op.C, op.C2, HW);
        }
        if (op.acts == kRecompute)
          m->forward(t.recompute_out.ensure(B * m->cout * HW), x, t.temb.data(), B, op.H, op.W, *a);
        float* dx = op.x2 ? t.d_cat.zeros(B * cin * HW) : grad_of(op.x, B * op.C * HW);
        m->backward(dx, dy, x, B, op.H, op.W, *a);
        if (op.x2)
          dev::concat_channels_backward(grad_of(op.x, B * op.C * HW), grad_of(op.x2, B * op.C2 * HW), dx, B, op.C,
                                        op.C2, HW);
        break;
      }
      case Op::Downsample: {
        const auto* m = static_cast<const Downsample2D*>(op.module);
        m->backward(grad_of(op.x, B * op.C * HW), dy, B, op.H, op.W);
        break;
      }
      case Op::ConvIn: {
        if (!dsample) break;
        const int64_t n = B * op.C * HW;
        float* d = t.scratch.zeros(n);
        conv_in_.backward(d, dy, B, op.H, op.W);
        const float f = t.centered ? 2.0f : 1.0f;  // centre_input_sample: x' = 2x - 1
        std::vector<float> host;
        if (on_device) host.resize(size_t(n)), dev::download(host.data(), d, n), d = host.data();
        for (int64_t i = 0; i < n; ++i) dsample[i] += f * d[i];
        break;
      }
    }
    // Every reader of this op's output and activations comes later in the list and has been walked back, so they
    // go back to the activation cache now: the tape shrinks as the gradients grow.
    release(op.y);
    if (op.y_storage) *op.y_storage = Buffer();
    if (op.acts != kRecompute && op.kind == Op::Resnet) t.resnets[op.acts] = ResnetBlock2D::Acts();
    if (op.acts != kRecompute && op.kind == Op::Attention) t.attentions[op.acts] = Transformer2DModel::Acts();
  }
  if (on_device && lora) download_lora_grads();
  // The tape is spent: what it still holds (gradient buffers, scratch, the inputs' device copies) goes back to the
  // cache too, and a second backward finds no forward to walk.
  const bool checkpointing = t.checkpointing;
  const SelectiveRecompute recompute = t.recompute;
  tape.s_ = std::make_unique<UNetTape::State>();
  tape.s_->checkpointing = checkpointing;
  tape.s_->recompute = recompute;
}

std::vector<Linear*> UNet::linears() {
  std::vector<Linear*> out;
  for (DownBlock& d : down_)
    for (Transformer2DModel& a : d.attentions) a.linears(out);
  if (config_.has_mid_block) mid_.attention.linears(out);
  for (UpBlock& u : up_)
    for (Transformer2DModel& a : u.attentions) a.linears(out);
  return out;
}

size_t UNet::create_lora(LoraSet& set, const std::vector<std::string>& targets, int64_t rank, float alpha) {
  size_t n = 0;
  for (Linear* l : linears())
    if (is_lora_target(l->name, targets)) {
      set.add(l->name, rank, l->in, l->out, alpha);
      ++n;
    }
  check(n > 0, "NCP_ELORA", "LoRA: no Linear layer of this U-Net matches the targets");
  attach_lora(set);
  return n;
}

void UNet::attach_lora(LoraSet& set) {
  detach_lora();
  std::map<std::string, Linear*> by_name;
  for (Linear* l : linears()) by_name[l->name] = l;
  for (const auto& a : set.adapters()) {
    auto it = by_name.find(a->module);
    check(it != by_name.end(), "NCP_ELORA", "LoRA module " + a->module + " is not a Linear layer of this U-Net");
    Linear& l = *it->second;
    check(l.in == a->in && l.out == a->out, "NCP_ELORA",
          "LoRA module " + a->module + ": adapter is " + std::to_string(a->in) + " -> " + std::to_string(a->out) +
              " features, the layer " + std::to_string(l.in) + " -> " + std::to_string(l.out));
    l.lora = a.get();
    attached_.push_back(a.get());
  }
}

void UNet::detach_lora() {
  for (Linear* l : linears()) l->lora = nullptr;
  attached_.clear();
}

}  // namespace ncp::model
