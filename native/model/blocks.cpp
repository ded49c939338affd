#include "model/blocks.h"

#include <algorithm>

#include "core/error.h"
#include "core/threads.h"
#include "cpu/ops.h"

namespace ncp::model {

using cpu::Activation;

const float* ParamSource::take(const std::string& name, std::vector<int64_t> shape) {
  if (manifest_) {
    manifest_->push_back({name, std::move(shape)});
    return nullptr;
  }
  return weights_->get(name, shape);
}

float* Buffer::ensure(int64_t n) {
  if (n > capacity_) {
    data_.reset(new float[size_t(n)]);
    capacity_ = n;
  }
  size_ = n;
  return data_.get();
}

void transpose_batched(float* y, const float* x, int64_t N, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;  // a 32x32 float tile of source and destination both stay in L1
  const int64_t rt = (rows + kTile - 1) / kTile, ct = (cols + kTile - 1) / kTile;
  parallel_for(N * rt * ct, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (rt * ct), r0 = t / ct % rt * kTile, c0 = t % ct * kTile;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      const float* xs = x + n * rows * cols;
      float* yd = y + n * rows * cols;
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) yd[c * rows + r] = xs[r * cols + c];
    }
  });
}

// ---- Leaf layers -------------------------------------------------------------------------------------------
Linear::Linear(ParamSource& p, const std::string& prefix, int64_t in_, int64_t out_, bool bias, bool conv1x1)
    : in(in_), out(out_) {
  W = p.take(prefix + ".weight", conv1x1 ? std::vector<int64_t>{out, in, 1, 1} : std::vector<int64_t>{out, in});
  if (bias) b = p.take(prefix + ".bias", {out});
}

void Linear::forward(float* y, const float* x, int64_t rows) const { cpu::linear_forward(y, x, W, b, rows, in, out); }

Conv2d::Conv2d(ParamSource& p, const std::string& prefix, int64_t cin_, int64_t cout_, int64_t k_, int64_t stride_)
    : cin(cin_), cout(cout_), k(k_), stride(stride_), pad(k_ / 2) {
  W = p.take(prefix + ".weight", {cout, cin, k, k});
  b = p.take(prefix + ".bias", {cout});
}

void Conv2d::forward(float* y, const float* x, int64_t N, int64_t H, int64_t Wd) const {
  cpu::conv2d_forward(y, x, W, b, cpu::Conv2dShape{N, cin, H, Wd, cout, k, stride, pad});
}

GroupNorm::GroupNorm(ParamSource& p, const std::string& prefix, int64_t C_, int64_t groups_, double eps_)
    : C(C_), groups(groups_), eps(eps_) {
  check(groups > 0 && C % groups == 0, "NCP_ECONFIG",
        prefix + ": " + std::to_string(C) + " channels are not divisible into " + std::to_string(groups) +
            " groups");
  gamma = p.take(prefix + ".weight", {C});
  beta = p.take(prefix + ".bias", {C});
}

void GroupNorm::forward(float* y, NormStats& s, const float* x, int64_t N, int64_t HW) const {
  cpu::group_norm_forward(y, s.mean.ensure(N * groups), s.rstd.ensure(N * groups), x, gamma, beta, N, C, HW,
                          groups, eps);
}

LayerNorm::LayerNorm(ParamSource& p, const std::string& prefix, int64_t C_, double eps_) : C(C_), eps(eps_) {
  gamma = p.take(prefix + ".weight", {C});
  beta = p.take(prefix + ".bias", {C});
}

void LayerNorm::forward(float* y, NormStats& s, const float* x, int64_t rows) const {
  cpu::layer_norm_forward(y, s.mean.ensure(rows), s.rstd.ensure(rows), x, gamma, beta, rows, C, eps);
}

// ---- Blocks ------------------------------------------------------------------------------------------------
TimestepEmbedding::TimestepEmbedding(ParamSource& p, const std::string& prefix, int64_t in, int64_t dim)
    : linear_1(p, prefix + ".linear_1", in, dim), linear_2(p, prefix + ".linear_2", dim, dim) {}

void TimestepEmbedding::forward(float* y, const float* x, int64_t rows, Acts& a) const {
  const int64_t n = rows * linear_1.out;
  linear_1.forward(a.h.ensure(n), x, rows);
  cpu::activation_forward(Activation::SiLU, a.act.ensure(n), a.h.data(), n);
  linear_2.forward(y, a.act.data(), rows);
}

ResnetBlock2D::ResnetBlock2D(ParamSource& p, const std::string& prefix, int64_t cin_, int64_t cout_,
                             int64_t temb_dim_, int64_t groups, double eps)
    : cin(cin_), cout(cout_), temb_dim(temb_dim_), has_shortcut(cin_ != cout_) {
  norm1 = GroupNorm(p, prefix + ".norm1", cin, groups, eps);
  conv1 = Conv2d(p, prefix + ".conv1", cin, cout, 3);
  if (temb_dim > 0) time_emb_proj = Linear(p, prefix + ".time_emb_proj", temb_dim, cout);
  norm2 = GroupNorm(p, prefix + ".norm2", cout, groups, eps);
  conv2 = Conv2d(p, prefix + ".conv2", cout, cout, 3);
  if (has_shortcut) conv_shortcut = Conv2d(p, prefix + ".conv_shortcut", cin, cout, 1);
}

void ResnetBlock2D::forward(float* y, const float* x, const float* temb_act, int64_t N, int64_t H, int64_t W,
                            Acts& a) const {
  const int64_t HW = H * W, nin = N * cin * HW, nout = N * cout * HW;
  norm1.forward(a.n1.ensure(nin), a.s1, x, N, HW);
  cpu::activation_forward(Activation::SiLU, a.a1.ensure(nin), a.n1.data(), nin);
  conv1.forward(a.c1.ensure(nout), a.a1.data(), N, H, W);
  if (temb_dim > 0) {
    time_emb_proj.forward(a.temb.ensure(N * cout), temb_act, N);
    cpu::add_channel_bias_forward(a.c1.data(), a.temb.data(), N, cout, HW);
  }
  norm2.forward(a.n2.ensure(nout), a.s2, a.c1.data(), N, HW);
  cpu::activation_forward(Activation::SiLU, a.a2.ensure(nout), a.n2.data(), nout);
  conv2.forward(y, a.a2.data(), N, H, W);
  if (has_shortcut) {
    conv_shortcut.forward(a.shortcut.ensure(nout), x, N, H, W);
    cpu::add_forward(y, y, a.shortcut.data(), nout);
  } else {
    cpu::add_forward(y, y, x, nout);
  }
}

Attention::Attention(ParamSource& p, const std::string& prefix, int64_t query_dim, int64_t context_dim,
                     int64_t heads_, int64_t head_dim_)
    : heads(heads_), head_dim(head_dim_) {
  const int64_t inner = heads * head_dim;
  to_q = Linear(p, prefix + ".to_q", query_dim, inner, false);
  to_k = Linear(p, prefix + ".to_k", context_dim, inner, false);
  to_v = Linear(p, prefix + ".to_v", context_dim, inner, false);
  to_out = Linear(p, prefix + ".to_out.0", inner, query_dim);
}

void Attention::forward(float* y, const float* x, const float* context, int64_t B, int64_t Lq, int64_t Lk,
                        Acts& a) const {
  const int64_t inner = heads * head_dim;
  to_q.forward(a.q.ensure(B * Lq * inner), x, B * Lq);
  to_k.forward(a.k.ensure(B * Lk * inner), context, B * Lk);
  to_v.forward(a.v.ensure(B * Lk * inner), context, B * Lk);
  cpu::attention_forward<float>(a.o.ensure(B * Lq * inner), nullptr, a.q.data(), a.k.data(), a.v.data(),
                                cpu::AttentionShape{B, Lq, Lk, heads, head_dim, false});
  to_out.forward(y, a.o.data(), B * Lq);
}

BasicTransformerBlock::BasicTransformerBlock(ParamSource& p, const std::string& prefix, int64_t dim_,
                                             int64_t context_dim, int64_t heads, int64_t head_dim)
    : dim(dim_), ff_inner(4 * dim_) {
  norm1 = LayerNorm(p, prefix + ".norm1", dim, 1e-5);
  attn1 = Attention(p, prefix + ".attn1", dim, dim, heads, head_dim);
  norm2 = LayerNorm(p, prefix + ".norm2", dim, 1e-5);
  attn2 = Attention(p, prefix + ".attn2", dim, context_dim, heads, head_dim);
  norm3 = LayerNorm(p, prefix + ".norm3", dim, 1e-5);
  ff_proj = Linear(p, prefix + ".ff.net.0.proj", dim, 2 * ff_inner);
  ff_out = Linear(p, prefix + ".ff.net.2", ff_inner, dim);
}

void BasicTransformerBlock::forward(float* y, const float* x, const float* context, int64_t B, int64_t L,
                                    int64_t Lk, Acts& a) const {
  const int64_t rows = B * L, n = rows * dim;
  // Each sub-layer's output lands in the next residual buffer, which then takes the residual in place.
  norm1.forward(a.n1.ensure(n), a.s1, x, rows);
  attn1.forward(a.h1.ensure(n), a.n1.data(), a.n1.data(), B, L, L, a.attn1);
  cpu::add_forward(a.h1.data(), a.h1.data(), x, n);
  norm2.forward(a.n2.ensure(n), a.s2, a.h1.data(), rows);
  attn2.forward(a.h2.ensure(n), a.n2.data(), context, B, L, Lk, a.attn2);
  cpu::add_forward(a.h2.data(), a.h2.data(), a.h1.data(), n);
  norm3.forward(a.n3.ensure(n), a.s3, a.h2.data(), rows);
  ff_proj.forward(a.ff_h.ensure(rows * 2 * ff_inner), a.n3.data(), rows);
  cpu::geglu_forward(a.ff_g.ensure(rows * ff_inner), a.ff_h.data(), rows, ff_inner);
  ff_out.forward(y, a.ff_g.data(), rows);
  cpu::add_forward(y, y, a.h2.data(), n);
}

Transformer2DModel::Transformer2DModel(ParamSource& p, const std::string& prefix, int64_t channels, int64_t heads,
                                       int64_t depth, int64_t context_dim, int64_t groups, bool linear_projection)
    : C(channels) {
  check(heads > 0 && channels % heads == 0, "NCP_ECONFIG",
        prefix + ": " + std::to_string(channels) + " channels do not split into " + std::to_string(heads) +
            " attention heads");
  const int64_t head_dim = channels / heads;
  inner = heads * head_dim;
  norm = GroupNorm(p, prefix + ".norm", C, groups, 1e-6);
  proj_in = Linear(p, prefix + ".proj_in", C, inner, true, !linear_projection);
  for (int64_t i = 0; i < depth; ++i)
    blocks.emplace_back(p, prefix + ".transformer_blocks." + std::to_string(i), inner, context_dim, heads,
                        head_dim);
  proj_out = Linear(p, prefix + ".proj_out", inner, C, true, !linear_projection);
}

void Transformer2DModel::forward(float* y, const float* x, const float* context, int64_t N, int64_t H, int64_t W,
                                 int64_t Lk, Acts& a) const {
  const int64_t L = H * W, n = N * C * L, depth = int64_t(blocks.size());
  a.stream.resize(depth + 1);
  a.blocks.resize(depth);
  norm.forward(a.normed.ensure(n), a.s, x, N, L);
  transpose_batched(a.tokens.ensure(n), a.normed.data(), N, C, L);
  proj_in.forward(a.stream[0].ensure(N * L * inner), a.tokens.data(), N * L);
  for (int64_t i = 0; i < depth; ++i)
    blocks[i].forward(a.stream[i + 1].ensure(N * L * inner), a.stream[i].data(), context, N, L, Lk, a.blocks[i]);
  proj_out.forward(a.proj_out.ensure(n), a.stream[depth].data(), N * L);
  transpose_batched(y, a.proj_out.data(), N, L, C);
  cpu::add_forward(y, y, x, n);
}

Downsample2D::Downsample2D(ParamSource& p, const std::string& prefix, int64_t channels)
    : conv(p, prefix + ".conv", channels, channels, 3, 2) {}

void Downsample2D::forward(float* y, const float* x, int64_t N, int64_t H, int64_t W) const {
  conv.forward(y, x, N, H, W);
}

Upsample2D::Upsample2D(ParamSource& p, const std::string& prefix, int64_t channels)
    : conv(p, prefix + ".conv", channels, channels, 3) {}

void Upsample2D::forward(float* y, const float* x, int64_t N, int64_t H, int64_t W, Acts& a) const {
  const int64_t C = conv.cin;
  cpu::upsample_nearest2x_forward(a.up.ensure(N * C * 4 * H * W), x, N, C, H, W);
  conv.forward(y, a.up.data(), N, 2 * H, 2 * W);
}

}  // namespace ncp::model
