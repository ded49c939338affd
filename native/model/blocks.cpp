#include "model/blocks.h"

#include <algorithm>

#include "core/error.h"
#include "model/dev_ops.h"

namespace ncp::model {

using cpu::Activation;

const float* ParamSource::take(const std::string& name, std::vector<int64_t> shape) {
  if (manifest_) {
    manifest_->push_back({name, std::move(shape)});
    return nullptr;
  }
  return device_weights_ ? device_weights_->get(name, shape) : weights_->get(name, shape);
}

cpu::WeightRef ParamSource::take_matrix(const std::string& name, std::vector<int64_t> shape) {
  if (manifest_) {
    manifest_->push_back({name, std::move(shape), true});
    return {};
  }
  return device_weights_ ? device_weights_->get_matrix(name, shape) : weights_->get_matrix(name, shape);
}

void transpose_batched(float* y, const float* x, int64_t N, int64_t rows, int64_t cols) {
  dev::transpose_batched(y, x, N, rows, cols);
}

// ---- Leaf layers -------------------------------------------------------------------------------------------
Linear::Linear(ParamSource& p, const std::string& prefix, int64_t in_, int64_t out_, bool bias, bool conv1x1)
    : in(in_), out(out_), name(prefix) {
  W = p.take_matrix(prefix + ".weight", conv1x1 ? std::vector<int64_t>{out, in, 1, 1} : std::vector<int64_t>{out, in});
  if (bias) b = p.take(prefix + ".bias", {out});
}

namespace {
cpu::LoraShape lora_shape(const LoraAdapter& a, int64_t rows) { return {rows, a.in, a.out, a.rank}; }
}  // namespace

void Linear::forward(float* y, const float* x, int64_t rows, bool lora_on) const {
  dev::linear_forward(y, x, W, b, rows, in, out);
  if (lora_on && lora) dev::lora_forward(y, x, lora->a(), lora->b(), lora->scale(), lora_shape(*lora, rows));
}

void Linear::backward(float* dx, const float* dy, const float* x, int64_t rows, bool lora_on) const {
  if (dx) dev::linear_backward_input(dx, dy, W, rows, in, out);
  if (!reads_input(lora_on)) return;
  dev::lora_backward(dx, lora->da(), lora->db(), dy, x, lora->a(), lora->b(), lora->scale(), lora_shape(*lora, rows));
}

void Linear::backward_input(float* dx, const float* dy, int64_t rows, bool lora_on) const {
  dev::linear_backward_input(dx, dy, W, rows, in, out);
  if (!reads_input(lora_on)) return;
  dev::lora_backward(dx, nullptr, nullptr, dy, nullptr, lora->a(), lora->b(), lora->scale(), lora_shape(*lora, rows));
}

void Linear::backward_params(const float* dy, const float* x, int64_t rows, bool lora_on) const {
  if (!reads_input(lora_on)) return;
  dev::lora_backward(nullptr, lora->da(), lora->db(), dy, x, lora->a(), lora->b(), lora->scale(),
                     lora_shape(*lora, rows));
}

Conv2d::Conv2d(ParamSource& p, const std::string& prefix, int64_t cin_, int64_t cout_, int64_t k_, int64_t stride_)
    : cin(cin_), cout(cout_), k(k_), stride(stride_), pad(k_ / 2) {
  W = p.take_matrix(prefix + ".weight", {cout, cin, k, k});
  b = p.take(prefix + ".bias", {cout});
}

void Conv2d::forward(float* y, const float* x, int64_t N, int64_t H, int64_t Wd) const {
  dev::conv2d_forward(y, x, W, b, cpu::Conv2dShape{N, cin, H, Wd, cout, k, stride, pad});
}

void Conv2d::backward(float* dx, const float* dy, int64_t N, int64_t H, int64_t Wd) const {
  dev::conv2d_backward_input(dx, dy, W, cpu::Conv2dShape{N, cin, H, Wd, cout, k, stride, pad});
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
  dev::group_norm_forward(y, s.mean.ensure(N * groups), s.rstd.ensure(N * groups), x, gamma, beta, N, C, HW,
                          groups, eps);
}

void GroupNorm::backward(float* dx, const float* dy, const float* x, const NormStats& s, int64_t N,
                         int64_t HW) const {
  dev::group_norm_backward_input(dx, dy, x, s.mean.data(), s.rstd.data(), gamma, N, C, HW,
                                  groups);
}

void GroupNorm::forward_silu(float* y, NormStats& s, const float* x, int64_t N, int64_t HW) const {
  dev::group_norm_silu_forward(y, s.mean.ensure(N * groups), s.rstd.ensure(N * groups), x, gamma, beta, N, C, HW,
                               groups, eps);
}

void GroupNorm::backward_silu(float* dx, const float* dy, const float* x, const NormStats& s, int64_t N,
                              int64_t HW) const {
  dev::group_norm_silu_backward_input(dx, dy, x, s.mean.data(), s.rstd.data(), gamma, beta, N, C, HW, groups);
}

LayerNorm::LayerNorm(ParamSource& p, const std::string& prefix, int64_t C_, double eps_) : C(C_), eps(eps_) {
  gamma = p.take(prefix + ".weight", {C});
  beta = p.take(prefix + ".bias", {C});
}

void LayerNorm::forward(float* y, NormStats& s, const float* x, int64_t rows) const {
  dev::layer_norm_forward(y, s.mean.ensure(rows), s.rstd.ensure(rows), x, gamma, beta, rows, C, eps);
}

void LayerNorm::backward(float* dx, const float* dy, const float* x, const NormStats& s, int64_t rows) const {
  dev::layer_norm_backward_input(dx, dy, x, s.mean.data(), s.rstd.data(), gamma, rows, C);
}

// ---- Blocks ------------------------------------------------------------------------------------------------
TimestepEmbedding::TimestepEmbedding(ParamSource& p, const std::string& prefix, int64_t in, int64_t dim)
    : linear_1(p, prefix + ".linear_1", in, dim), linear_2(p, prefix + ".linear_2", dim, dim) {}

void TimestepEmbedding::forward(float* y, const float* x, int64_t rows, Acts& a) const {
  const int64_t n = rows * linear_1.out;
  linear_1.forward(a.h.ensure(n), x, rows);
  dev::activation_forward(Activation::SiLU, a.act.ensure(n), a.h.data(), n);
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

// The tape keeps c1 and the two norms' statistics only: the activated tensors are the fused norms' business
// (their backward rebuilds them from the input), and the convolutions' input gradients read no activation.
void ResnetBlock2D::forward(float* y, const float* x, const float* temb_act, int64_t N, int64_t H, int64_t W,
                            Acts& a) const {
  const int64_t HW = H * W, nin = N * cin * HW, nout = N * cout * HW;
  Buffer act, temb, c1s;  // scratch: back to the activation cache when the block returns
  norm1.forward_silu(act.ensure(nin), a.s1, x, N, HW);
  float* c1 = a.c1.out(nout, c1s);
  conv1.forward(c1, act.data(), N, H, W);
  if (temb_dim > 0) {
    time_emb_proj.forward(temb.ensure(N * cout), temb_act, N);
    dev::add_channel_bias_forward(c1, temb.data(), N, cout, HW);
  }
  a.c1.keep();
  norm2.forward_silu(act.ensure(nout), a.s2, c1, N, HW);
  conv2.forward(y, act.data(), N, H, W);
  if (has_shortcut) {
    conv_shortcut.forward(act.data(), x, N, H, W);  // act is free again, and holds nout
    dev::add_forward(y, y, act.data(), nout);
  } else {
    dev::add_forward(y, y, x, nout);
  }
}

void ResnetBlock2D::backward(float* dx, const float* dy, const float* x, int64_t N, int64_t H, int64_t W,
                             const Acts& a) const {
  const int64_t HW = H * W, nin = N * cin * HW, nout = N * cout * HW;
  // Shortcut: y = conv2(...) + shortcut(x).
  if (has_shortcut)
    conv_shortcut.backward(dx, dy, N, H, W);
  else
    dev::add_into(dx, dy, nout);
  Buffer g_act, g_c1, c1s;
  float* g = g_act.zeros(nout);
  conv2.backward(g, dy, N, H, W);  // d silu(norm2 c1)
  float* gc = g_c1.zeros(nout);
  norm2.backward_silu(gc, g, a.c1.get(c1s), a.s2, N, HW);  // d c1 (the time bias passes it on)
  g = g_act.zeros(nin);
  conv1.backward(g, gc, N, H, W);  // d silu(norm1 x)
  norm1.backward_silu(dx, g, x, a.s1, N, HW);
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

SelectiveRecompute parse_selective_recompute(const std::string& list) {
  SelectiveRecompute r;
  size_t at = 0;
  while (at <= list.size()) {
    const size_t end = std::min(list.find(',', at), list.size());
    const std::string part = list.substr(at, end - at);
    if (part == "feedforward")
      r.feedforward = true;
    else if (part == "qkv")
      r.qkv = true;
    else if (!(part.empty() && list.empty()))
      throw Error("NCP_EINVAL", "recompute: '" + part + "' is not one of feedforward, qkv");
    at = end + 1;
  }
  return r;
}

// q, k, v of this forward: kept on the tape (a float32 copy in scratch when it keeps bf16), or only in scratch when
// backward recomputes them (Acts::recompute).
void Attention::forward(float* y, const float* x, const float* context, int64_t B, int64_t Lq, int64_t Lk,
                        Acts& a, bool lora) const {
  const int64_t inner = heads * head_dim;
  Buffer qs, ks, vs;
  auto project = [&](const Linear& l, KeptActivation& kept, Buffer& scratch, const float* in, int64_t rows) {
    float* p = a.recompute ? scratch.ensure(rows * inner) : kept.out(rows * inner, scratch);
    l.forward(p, in, rows, lora);
    if (a.recompute)
      kept = KeptActivation();  // a kept copy from an earlier pass would only hold memory
    else
      kept.keep();
    return p;
  };
  const float* q = project(to_q, a.q, qs, x, B * Lq);
  const float* k = project(to_k, a.k, ks, context, B * Lk);
  const float* v = project(to_v, a.v, vs, context, B * Lk);
  Buffer o;  // not kept: backward recomputes it with the probabilities
  dev::attention_forward(o.ensure(B * Lq * inner), nullptr, q, k, v, cpu::AttentionShape{B, Lq, Lk, heads, head_dim, false});
  to_out.forward(y, o.data(), B * Lq, lora);
}

void Attention::backward(float* dx, float* dcontext, const float* dy, const float* x, const float* context,
                         int64_t B, int64_t Lq, int64_t Lk, const Acts& a, bool lora) const {
  const int64_t inner = heads * head_dim, nq = Lq * inner, nk = Lk * inner;
  Buffer d_o, dq, dk, dv, o;
  to_out.backward_input(d_o.zeros(B * nq), dy, B * Lq, lora);
  dq.zeros(B * nq), dk.zeros(B * nk), dv.zeros(B * nk);
  // The probabilities are recomputed, never stored whole; the recomputed output is what to_out's adapter reads.
  float* out = to_out.reads_input(lora) ? o.ensure(B * nq) : nullptr;
  Buffer qs, ks, vs;  // widened from a bf16 tape, or recomputed: the forward's ops on the same inputs
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  if (a.recompute) {
    to_q.forward(qs.ensure(B * nq), x, B * Lq, lora);
    to_k.forward(ks.ensure(B * nk), context, B * Lk, lora);
    to_v.forward(vs.ensure(B * nk), context, B * Lk, lora);
    q = qs.data(), k = ks.data(), v = vs.data();
  } else {
    q = a.q.get(qs), k = a.k.get(ks), v = a.v.get(vs);
  }
  dev::attention_backward_recompute(dq.data(), dk.data(), dv.data(), out, d_o.data(), q, k, v,
                                    cpu::AttentionShape{B, Lq, Lk, heads, head_dim, false});
  to_out.backward_params(dy, out, B * Lq, lora);
  to_q.backward(dx, dq.data(), x, B * Lq, lora);
  to_k.backward(dcontext, dk.data(), context, B * Lk, lora);
  to_v.backward(dcontext, dv.data(), context, B * Lk, lora);
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
                                    int64_t Lk, Acts& a, bool lora) const {
  const int64_t rows = B * L, n = rows * dim;
  Buffer normed, gated;  // scratch (see Acts)
  Buffer h1s, h2s, ffs;  // float32 values of the kept activations when the tape keeps them in bf16
  // Each sub-layer's output lands in the next residual buffer, which then takes the residual in place.
  a.attn1.recompute = a.attn2.recompute = a.recompute.qkv;
  norm1.forward(normed.ensure(n), a.s1, x, rows);
  float* h1 = a.h1.out(n, h1s);
  attn1.forward(h1, normed.data(), normed.data(), B, L, L, a.attn1, lora);
  dev::add_forward(h1, h1, x, n);
  a.h1.keep();
  norm2.forward(normed.data(), a.s2, h1, rows);
  float* h2 = a.h2.out(n, h2s);
  attn2.forward(h2, normed.data(), context, B, L, Lk, a.attn2, lora);
  dev::add_forward(h2, h2, h1, n);
  a.h2.keep();
  norm3.forward(normed.data(), a.s3, h2, rows);
  const bool ff_recompute = a.recompute.feedforward;
  float* ff_h = ff_recompute ? ffs.ensure(rows * 2 * ff_inner) : a.ff_h.out(rows * 2 * ff_inner, ffs);
  ff_proj.forward(ff_h, normed.data(), rows, lora);
  if (ff_recompute)
    a.ff_h = KeptActivation();  // a kept copy from an earlier pass would only hold memory
  else
    a.ff_h.keep();
  dev::geglu_forward(gated.ensure(rows * ff_inner), ff_h, rows, ff_inner);
  ff_out.forward(y, gated.data(), rows, lora);
  dev::add_forward(y, y, h2, n);
}

void BasicTransformerBlock::backward(float* dx, const float* dy, const float* x, const float* context, int64_t B,
                                     int64_t L, int64_t Lk, const Acts& a, bool lora) const {
  const int64_t rows = B * L, n = rows * dim;
  Buffer dh, dn, dg, dffh, redo;
  // A sub-layer input the forward did not keep, rebuilt into `redo` when an adapter reads it (nullptr if not).
  // The recomputed norm is the forward's op on the same input, so the values are the forward's bit for bit.
  auto renormed = [&](const LayerNorm& norm, const float* in, bool needed) -> const float* {
    if (!needed) return nullptr;
    NormStats s;
    norm.forward(redo.ensure(n), s, in, rows);
    return redo.data();
  };
  // The kept activations as float32 (widened from a bf16 tape into these buffers).
  Buffer h1s, h2s;
  const float* h1 = a.h1.get(h1s);
  const float* h2 = a.h2.get(h2s);
  // y = h2 + ff(norm3 h2)
  float* d_h2 = dh.ensure(n);
  dev::copy(d_h2, dy, n);
  // norm3's output: for ff.net.0.proj's adapter, and to recompute ff_h (SelectiveRecompute::feedforward).
  const bool ff_recompute = a.recompute.feedforward;
  Buffer n3s;
  const float* n3 = nullptr;
  if (ff_proj.reads_input(lora) || ff_recompute) {
    NormStats s;
    norm3.forward(n3s.ensure(n), s, h2, rows);
    n3 = n3s.data();
  }
  {
    Buffer ffs;  // the widest tensor: widened from the tape or recomputed only for the feed-forward's backward
    const float* ff_h = nullptr;
    if (ff_recompute) {
      ff_proj.forward(ffs.ensure(rows * 2 * ff_inner), n3, rows, lora);
      ff_h = ffs.data();
    } else {
      ff_h = a.ff_h.get(ffs);
    }
    const float* gated = nullptr;
    if (ff_out.reads_input(lora)) {
      dev::geglu_forward(redo.ensure(rows * ff_inner), ff_h, rows, ff_inner);
      gated = redo.data();
    }
    ff_out.backward(dg.zeros(rows * ff_inner), dy, gated, rows, lora);
    dev::geglu_backward(dffh.zeros(rows * 2 * ff_inner), dg.data(), ff_h, rows, ff_inner);
  }
  ff_proj.backward(dn.zeros(n), dffh.data(), n3, rows, lora);
  norm3.backward(d_h2, dn.data(), h2, a.s3, rows);
  // h2 = h1 + attn2(norm2 h1, context): no gradient to the text conditioning.
  attn2.backward(dn.zeros(n), nullptr, d_h2, renormed(norm2, h1, attn2.reads_x(lora, a.attn2)), context, B, L, Lk,
                 a.attn2,
                 lora);
  norm2.backward(d_h2, dn.data(), h1, a.s2, rows);  // d_h2 now holds d h1
  // h1 = x + attn1(norm1 x)
  dev::add_into(dx, d_h2, n);
  float* d_n1 = dn.zeros(n);
  const float* n1 = renormed(norm1, x, attn1.reads_x(lora, a.attn1) || attn1.reads_context(lora, a.attn1));
  attn1.backward(d_n1, d_n1, d_h2, n1, n1, B, L, L, a.attn1, lora);
  norm1.backward(dx, d_n1, x, a.s1, rows);
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
                                 int64_t Lk, Acts& a, bool lora) const {
  const int64_t L = H * W, n = N * C * L, depth = int64_t(blocks.size());
  a.stream.resize(depth + 1);
  a.blocks.resize(depth);
  Buffer normed, scratch_tokens;  // NCHW norm output, and the NLC tokens when the tape does not keep them
  Buffer& tokens = proj_in.reads_input(lora) ? a.tokens : scratch_tokens;
  if (&tokens != &a.tokens) a.tokens = Buffer();  // a kept copy from an earlier pass would only hold memory
  norm.forward(normed.ensure(n), a.s, x, N, L);
  transpose_batched(tokens.ensure(n), normed.data(), N, C, L);
  // The stream in float32 for this forward: the input and output of the block running (alternating scratch when
  // the tape keeps the stream in bf16). The last block's output is kept only for proj_out's adapter.
  const int64_t ni = N * L * inner;
  Buffer flo[2], last;
  float* cur = a.stream[0].out(ni, flo[0]);
  proj_in.forward(cur, tokens.data(), N * L, lora);
  a.stream[0].keep();
  const bool keep_last = proj_out.reads_input(lora);
  if (!keep_last) a.stream[depth] = KeptActivation();  // a kept copy from an earlier pass would only hold memory
  for (int64_t i = 0; i < depth; ++i) {
    float* next = i + 1 < depth || keep_last ? a.stream[i + 1].out(ni, flo[(i + 1) % 2]) : last.ensure(ni);
    a.blocks[i].recompute = a.recompute;
    blocks[i].forward(next, cur, context, N, L, Lk, a.blocks[i], lora);
    if (i + 1 < depth || keep_last) a.stream[i + 1].keep();
    cur = next;
  }
  float* projected = normed.data();  // NLC proj_out output, into the free norm buffer (both N C L floats)
  proj_out.forward(projected, cur, N * L, lora);
  transpose_batched(y, projected, N, L, C);
  dev::add_forward(y, y, x, n);
}

void Transformer2DModel::backward(float* dx, const float* dy, const float* x, const float* context, int64_t N,
                                  int64_t H, int64_t W, int64_t Lk, const Acts& a, bool lora) const {
  const int64_t L = H * W, n = N * C * L, ni = N * L * inner, depth = int64_t(blocks.size());
  dev::add_into(dx, dy, n);  // the residual
  Buffer tok, ds[2];
  transpose_batched(tok.ensure(n), dy, N, C, L);  // d proj_out output, NLC
  float* d = ds[0].zeros(ni);
  Buffer stream;  // the stream entry being read, widened from a bf16 tape
  proj_out.backward(d, tok.data(), proj_out.reads_input(lora) ? a.stream[depth].get(stream) : nullptr, N * L, lora);
  for (int64_t i = depth - 1; i >= 0; --i) {
    float* d_in = ds[(depth - i) % 2].zeros(ni);
    blocks[i].backward(d_in, d, a.stream[i].get(stream), context, N, L, Lk, a.blocks[i], lora);
    d = d_in;
  }
  proj_in.backward(tok.zeros(n), d, proj_in.reads_input(lora) ? a.tokens.data() : nullptr, N * L, lora);
  Buffer dn;
  transpose_batched(dn.ensure(n), tok.data(), N, L, C);          // d normed, NCHW
  norm.backward(dx, dn.data(), x, a.s, N, L);
}

void Transformer2DModel::linears(std::vector<Linear*>& out) {
  out.push_back(&proj_in);
  for (BasicTransformerBlock& b : blocks)
    for (Linear* l : {&b.attn1.to_q, &b.attn1.to_k, &b.attn1.to_v, &b.attn1.to_out, &b.attn2.to_q, &b.attn2.to_k,
                      &b.attn2.to_v, &b.attn2.to_out, &b.ff_proj, &b.ff_out})
      out.push_back(l);
  out.push_back(&proj_out);
}

Downsample2D::Downsample2D(ParamSource& p, const std::string& prefix, int64_t channels)
    : conv(p, prefix + ".conv", channels, channels, 3, 2) {}

void Downsample2D::forward(float* y, const float* x, int64_t N, int64_t H, int64_t W) const {
  conv.forward(y, x, N, H, W);
}

Upsample2D::Upsample2D(ParamSource& p, const std::string& prefix, int64_t channels)
    : conv(p, prefix + ".conv", channels, channels, 3) {}

void Upsample2D::forward(float* y, const float* x, int64_t N, int64_t H, int64_t W, Buffer& scratch) const {
  const int64_t C = conv.cin;
  dev::upsample_nearest2x_forward(scratch.ensure(N * C * 4 * H * W), x, N, C, H, W);
  conv.forward(y, scratch.data(), N, 2 * H, 2 * W);
}

void Upsample2D::backward(float* dx, const float* dy, int64_t N, int64_t H, int64_t W, Buffer& scratch) const {
  const int64_t C = conv.cin;
  float* d_up = scratch.zeros(N * C * 4 * H * W);
  conv.backward(d_up, dy, N, 2 * H, 2 * W);
  dev::upsample_nearest2x_backward(dx, d_up, N, C, H, W);
}

}  // namespace ncp::model
