// Fused (flash-style) multi-head attention: the [heads, Lq, Lk] probabilities are never stored. The forward
// streams key tiles through shared memory with an online softmax; the backward streams query tiles past each key
// tile, recomputing the probabilities from the saved log-sum-exp. The products run on bf16 tensor cores with
// float accumulation (q, k, v, dout and the probability tiles are rounded to bf16, as PyTorch's flash attention
// under bf16 autocast reads them); softmax statistics and every output stay float32.
//
// attention.cu takes this path when the mode is on (set_fused_attention, NCP_CUDA_ATTENTION=fused on the host)
// and fused_attention_applies(shape); otherwise the materialised float path, which matches the CPU to float32
// rounding, runs.
#pragma once
#include "cuda/api.h"

namespace ncp::cuda {

// The fused mode is on and the shape is one the kernels handle on the current device: head dim at most 256,
// enough keys (>= kFusedMinKeys) for the key-tile parallel backward to fill the device, and tiles that fit its
// shared memory (the forward's alone for inference, both passes' for a backward).
bool fused_attention_applies(const ncp_cuda_attention_shape* s, bool backward);
constexpr int64_t kFusedMinKeys = 128;

// out = softmax(scale q k^T) v; lse (may be NULL) gets each row's log-sum-exp of the scaled scores, [B, H, Lq].
int fused_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                            const ncp_cuda_attention_shape* s);
// dq, dk, dv += the gradients (NULL ones skipped); out (may be NULL) gets the recomputed output.
int fused_attention_backward_recompute(float* dq, float* dk, float* dv, float* out, const float* dout,
                                       const float* q, const float* k, const float* v,
                                       const ncp_cuda_attention_shape* s);

}  // namespace ncp::cuda
