// Building blocks of the diffusers U-Net (and the VAE), in float32 on the current device's ops (dev_ops.h).
//
// Each block is a small struct: constructed from a ParamSource (which either records its parameters' names and
// shapes for a manifest, or binds them from a WeightMap), then forward(...) on raw pointers. Forward writes
// every intermediate that a backward pass needs into the caller-owned Acts of the block, so a training step can
// keep one Acts per block call while inference reuses a single Acts for all calls of a kind (Buffers only grow).
// Attention probabilities are not kept: they are the largest activation and cheap to recompute.
//
// Backward passes exist for what training needs: the gradient with respect to the block's input (the NCP
// encoder passes gradients to its input) and to LoRA parameters. Base weights are frozen, so no weight gradient
// is ever computed or stored. Like the CPU ops, backward ADDS into dx (callers zero it), so residual branches
// and skips accumulate without copies. `lora` selects the policy (LoRA on) or the reference (LoRA off) network.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/buffer.h"
#include "model/device_weights.h"
#include "model/lora.h"
#include "model/weights.h"

namespace ncp::model {

// Declares each parameter exactly once: in manifest mode take() records name and shape and returns nullptr;
// in bind mode it returns the weight map's tensor (which checks the shape), on the host or on a CUDA device. The manifest and the binding are
// therefore the same code path and cannot disagree.
class ParamSource {
 public:
  explicit ParamSource(Manifest& manifest) : manifest_(&manifest) {}
  explicit ParamSource(const WeightMap& weights) : weights_(&weights) {}
  explicit ParamSource(const DeviceWeights& weights) : device_weights_(&weights) {}
  // A float32 tensor (biases, norm parameters, embeddings).
  const float* take(const std::string& name, std::vector<int64_t> shape);
  // A Linear or conv weight as held: float32, F16/BF16 kept in a mapped file (host), or bf16 (DeviceWeights
  // with bf16 matrices). In manifest mode, records it and returns an empty reference.
  cpu::WeightRef take_matrix(const std::string& name, std::vector<int64_t> shape);

 private:
  Manifest* manifest_ = nullptr;
  const WeightMap* weights_ = nullptr;
  const DeviceWeights* device_weights_ = nullptr;
};

// y [N, cols, rows] = x [N, rows, cols] transposed per batch: NCHW <-> NLC (its own backward, with the roles
// swapped). On the current device, like every op of the blocks.
void transpose_batched(float* y, const float* x, int64_t N, int64_t rows, int64_t cols);

// ---- Leaf layers -------------------------------------------------------------------------------------------
struct NormStats {
  Buffer mean, rstd;
};

// y = x W^T + b, plus (alpha / r) B (A x) when a LoRA adapter is attached and `lora` is on.
struct Linear {
  int64_t in = 0, out = 0;
  std::string name;          // diffusers module name ("...attn1.to_q"), to attach LoRA adapters by
  cpu::WeightRef W;          // [out, in], float32 or half (ParamSource::take_matrix)
  const float* b = nullptr;  // [out] or nullptr
  LoraAdapter* lora = nullptr;
  Linear() = default;
  // conv1x1: stored as a 1x1 convolution [out, in, 1, 1], which has the memory layout of [out, in].
  Linear(ParamSource& p, const std::string& prefix, int64_t in, int64_t out, bool bias = true,
         bool conv1x1 = false);
  void forward(float* y, const float* x, int64_t rows, bool lora_on = false) const;
  // dx += dy W (+ the LoRA path); the adapter's dA, dB += their gradients. x: the forward input (read only
  // when the adapter is on; A x is recomputed, which costs rank/out of the forward).
  void backward(float* dx, const float* dy, const float* x, int64_t rows, bool lora_on) const;
  // backward in two halves, for callers that have x for a few rows at a time: dx += the input gradient (base and
  // adapter paths, no x needed), and the adapter's dA, dB += their gradients over the given rows.
  void backward_input(float* dx, const float* dy, int64_t rows, bool lora_on) const;
  void backward_params(const float* dy, const float* x, int64_t rows, bool lora_on) const;
  // Whether backward reads x: only an attached, enabled adapter does (the base weights are frozen).
  bool reads_input(bool lora_on) const { return lora_on && lora != nullptr; }
};

struct Conv2d {
  int64_t cin = 0, cout = 0, k = 0, stride = 1, pad = 0;
  cpu::WeightRef W;          // [cout, cin, k, k], float32 or half (ParamSource::take_matrix)
  const float* b = nullptr;  // [cout]
  Conv2d() = default;
  Conv2d(ParamSource& p, const std::string& prefix, int64_t cin, int64_t cout, int64_t k, int64_t stride = 1);
  int64_t out_size(int64_t n) const { return (n + 2 * pad - k) / stride + 1; }
  void forward(float* y, const float* x, int64_t N, int64_t H, int64_t W) const;
  // dx += conv^T dy (input gradient only: the weights are frozen). H, W: the input size.
  void backward(float* dx, const float* dy, int64_t N, int64_t H, int64_t W) const;
};

struct GroupNorm {
  int64_t C = 0, groups = 0;
  double eps = 0;
  const float *gamma = nullptr, *beta = nullptr;
  GroupNorm() = default;
  GroupNorm(ParamSource& p, const std::string& prefix, int64_t C, int64_t groups, double eps);
  void forward(float* y, NormStats& s, const float* x, int64_t N, int64_t HW) const;
  void backward(float* dx, const float* dy, const float* x, const NormStats& s, int64_t N, int64_t HW) const;
  // The norm followed by SiLU, fused: y = silu(norm(x)); the backward takes dy of that y and needs only x and s.
  void forward_silu(float* y, NormStats& s, const float* x, int64_t N, int64_t HW) const;
  void backward_silu(float* dx, const float* dy, const float* x, const NormStats& s, int64_t N, int64_t HW) const;
};

struct LayerNorm {
  int64_t C = 0;
  double eps = 0;
  const float *gamma = nullptr, *beta = nullptr;
  LayerNorm() = default;
  LayerNorm(ParamSource& p, const std::string& prefix, int64_t C, double eps);
  void forward(float* y, NormStats& s, const float* x, int64_t rows) const;
  void backward(float* dx, const float* dy, const float* x, const NormStats& s, int64_t rows) const;
};

// ---- diffusers blocks --------------------------------------------------------------------------------------
// TimestepEmbedding: linear_1 -> SiLU -> linear_2.
struct TimestepEmbedding {
  Linear linear_1, linear_2;
  struct Acts {
    Buffer h, act;  // linear_1 output, its SiLU
  };
  TimestepEmbedding() = default;
  TimestepEmbedding(ParamSource& p, const std::string& prefix, int64_t in, int64_t dim);
  void forward(float* y, const float* x, int64_t rows, Acts& a) const;
};

// ResnetBlock2D: GroupNorm-SiLU-conv3x3, + time_emb_proj(temb_act) per channel, GroupNorm-SiLU-conv3x3, plus the
// input (through a 1x1 conv_shortcut when the channel count changes). temb_dim 0: no time embedding (VAE).
struct ResnetBlock2D {
  int64_t cin = 0, cout = 0, temb_dim = 0;
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2, conv_shortcut;  // conv_shortcut only when has_shortcut (cin != cout)
  Linear time_emb_proj;               // only when temb_dim > 0
  bool has_shortcut = false;
  struct Acts {
    NormStats s1, s2;
    KeptActivation c1;  // conv1 output plus the time-embedding bias: the input of norm2
  };
  ResnetBlock2D() = default;
  ResnetBlock2D(ParamSource& p, const std::string& prefix, int64_t cin, int64_t cout, int64_t temb_dim,
                int64_t groups, double eps);
  // x [N, cin, H, W] -> y [N, cout, H, W]; temb_act [N, temb_dim] is SiLU(emb), shared by every resnet.
  void forward(float* y, const float* x, const float* temb_act, int64_t N, int64_t H, int64_t W, Acts& a) const;
  // dx += d(y)/d(x)^T dy; x and a: as given to and left by forward. Needs no time-embedding gradient (the time
  // embedding is data here).
  void backward(float* dx, const float* dy, const float* x, int64_t N, int64_t H, int64_t W, const Acts& a) const;
};

// Selective recompute: what a training forward leaves off the tape in the transformer blocks, for backward to
// recompute from what is kept (the residual stream and the text context). The same ops on the same inputs, so the
// gradients are bit for bit the plain tape's on a float32 tape; on a bf16 tape the recomputed values are float32
// where the kept ones were rounded. No effect under gradient checkpointing, which recomputes whole blocks.
struct SelectiveRecompute {
  bool feedforward = false;  // ff.net.0.proj's output: 8 of a block's 14 kept block-sized tensors, one GEMM of 8 dim^2
  bool qkv = false;          // both attentions' q, k, v: 4 more (plus the text's k, v), GEMMs of 4 dim^2 per token
  bool any() const { return feedforward || qkv; }
};
// "feedforward", "qkv" or both, comma-separated ("" for none); NCP_EINVAL names an unknown part.
SelectiveRecompute parse_selective_recompute(const std::string& list);

// diffusers Attention as BasicTransformerBlock uses it: to_q/to_k/to_v without bias, to_out.0 with bias.
struct Attention {
  int64_t heads = 0, head_dim = 0;
  Linear to_q, to_k, to_v, to_out;
  struct Acts {
    bool recompute = false;  // the caller's choice before forward: q, k, v not kept, backward runs the projections
    KeptActivation q, k, v;  // the attention output is not kept: backward recomputes it with the probabilities
  };
  Attention() = default;
  Attention(ParamSource& p, const std::string& prefix, int64_t query_dim, int64_t context_dim, int64_t heads,
            int64_t head_dim);
  // x [B, Lq, query_dim], context [B, Lk, context_dim] -> y [B, Lq, query_dim].
  void forward(float* y, const float* x, const float* context, int64_t B, int64_t Lq, int64_t Lk, Acts& a,
               bool lora) const;
  // dx += gradient through to_q; dcontext += gradient through to_k/to_v (nullptr: none wanted; pass dx again
  // for self-attention, where context is x). The softmax is recomputed block by block (no [heads, Lq, Lk]
  // buffer; on a GPU, one batch row's worth until a fused kernel lands). x and context
  // are read only where reads_x / reads_context say so (nullptr is fine otherwise).
  void backward(float* dx, float* dcontext, const float* dy, const float* x, const float* context, int64_t B,
                int64_t Lq, int64_t Lk, const Acts& a, bool lora) const;
  bool reads_x(bool lora, const Acts& a) const { return a.recompute || to_q.reads_input(lora); }
  bool reads_context(bool lora, const Acts& a) const {
    return a.recompute || to_k.reads_input(lora) || to_v.reads_input(lora);
  }
};

// BasicTransformerBlock: x += attn1(norm1 x); x += attn2(norm2 x, context); x += ff(norm3 x), with the GEGLU
// feed-forward ff.net.0.proj (dim -> 2 * 4dim, [hidden | gate]) -> hidden * gelu(gate) -> ff.net.2.
struct BasicTransformerBlock {
  int64_t dim = 0, ff_inner = 0;
  LayerNorm norm1, norm2, norm3;
  Attention attn1, attn2;
  Linear ff_proj, ff_out;
  // The normalised inputs of the three sub-layers and the GEGLU output are not kept: backward recomputes one
  // (a layer norm, or the elementwise GEGLU) only when a LoRA adapter reads it. That leaves the residual stream,
  // the feed-forward's pre-GEGLU activations and q, k, v: 14 block-sized tensors' worth, not 23.
  // With recompute (the caller's choice, made before forward; SelectiveRecompute) ff_h, or q, k, v, are not kept
  // either: backward runs the norm and the projection again from the kept residual stream.
  struct Acts {
    SelectiveRecompute recompute;
    NormStats s1, s2, s3;
    KeptActivation h1, h2, ff_h;  // h1, h2: residual stream after attn1, attn2; ff_h: ff.net.0.proj output
    Attention::Acts attn1, attn2;
  };
  BasicTransformerBlock() = default;
  BasicTransformerBlock(ParamSource& p, const std::string& prefix, int64_t dim, int64_t context_dim, int64_t heads,
                        int64_t head_dim);
  // x, y [B, L, dim]; context [B, Lk, context_dim].
  void forward(float* y, const float* x, const float* context, int64_t B, int64_t L, int64_t Lk, Acts& a,
               bool lora) const;
  void backward(float* dx, const float* dy, const float* x, const float* context, int64_t B, int64_t L, int64_t Lk,
                const Acts& a, bool lora) const;
};

// Transformer2DModel: GroupNorm (eps 1e-6) -> proj_in -> transformer_blocks -> proj_out, plus the input.
// proj_in/proj_out are 1x1 convs (SD1.x) or Linears (use_linear_projection, SDXL). diffusers applies the conv
// before the NCHW -> NLC reshape and the linear after it; a 1x1 conv commutes with that transpose, so both run
// here as one Linear on tokens and differ only in the stored weight shape.
struct Transformer2DModel {
  int64_t C = 0, inner = 0;
  GroupNorm norm;
  Linear proj_in, proj_out;
  std::vector<BasicTransformerBlock> blocks;
  struct Acts {
    SelectiveRecompute recompute;  // set by the caller before forward: every block's Acts::recompute
    NormStats s;
    Buffer tokens;                // the normalised input as NLC, kept only when proj_in's LoRA reads it
    // stream[0] = proj_in output, stream[i + 1] = output of block i (the last only for proj_out's adapter)
    std::vector<KeptActivation> stream;
    std::vector<BasicTransformerBlock::Acts> blocks;
  };
  Transformer2DModel() = default;
  Transformer2DModel(ParamSource& p, const std::string& prefix, int64_t channels, int64_t heads, int64_t depth,
                     int64_t context_dim, int64_t groups, bool linear_projection);
  // x, y [N, C, H, W]; context [N, Lk, context_dim].
  void forward(float* y, const float* x, const float* context, int64_t N, int64_t H, int64_t W, int64_t Lk,
               Acts& a, bool lora) const;
  void backward(float* dx, const float* dy, const float* x, const float* context, int64_t N, int64_t H, int64_t W,
                int64_t Lk, const Acts& a, bool lora) const;
  // Every Linear of the block (proj_in, attention projections, feed-forward), for attaching LoRA adapters.
  void linears(std::vector<Linear*>& out);
};

// Downsample2D: conv3x3 stride 2 pad 1 ("downsamplers.0.conv").
struct Downsample2D {
  Conv2d conv;
  Downsample2D() = default;
  Downsample2D(ParamSource& p, const std::string& prefix, int64_t channels);
  // x [N, C, H, W] -> y [N, C, ceil(H/2), ceil(W/2)].
  void forward(float* y, const float* x, int64_t N, int64_t H, int64_t W) const;
  void backward(float* dx, const float* dy, int64_t N, int64_t H, int64_t W) const { conv.backward(dx, dy, N, H, W); }
};

// Upsample2D: nearest 2x, then conv3x3 ("upsamplers.0.conv").
struct Upsample2D {
  Conv2d conv;
  Upsample2D() = default;
  Upsample2D(ParamSource& p, const std::string& prefix, int64_t channels);
  // x [N, C, H, W] -> y [N, C, 2H, 2W]. scratch takes the upsampled input; nothing is kept for backward.
  void forward(float* y, const float* x, int64_t N, int64_t H, int64_t W, Buffer& scratch) const;
  // Needs no saved activation: the conv's input gradient only reads its weights. scratch: [N, C, 2H, 2W].
  void backward(float* dx, const float* dy, int64_t N, int64_t H, int64_t W, Buffer& scratch) const;
};

}  // namespace ncp::model
