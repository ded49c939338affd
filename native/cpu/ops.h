// CPU reference ops, forward and backward, in the style of llm.c: plain functions over raw pointers and sizes,
// no hidden state. Every op is a template over the scalar type so the gradient checks can run in float64;
// the engine itself runs float32 (explicit instantiations for float and double live in each .cpp).
//
// Conventions (all tensors dense, row-major, PyTorch layouts):
//  - images are NCHW; token sequences are [batch, length, channels];
//  - Linear weights are [out, in] and conv weights [out, in, k, k], as in diffusers' state dicts;
//  - backward functions ADD into every gradient buffer they are given (so residual branches and weight
//    sharing just work) and skip any gradient pointer that is nullptr;
//  - `saved_*` buffers are written by forward and read by backward; their sizes are documented per op.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace ncp::cpu {

// ---- GEMM ------------------------------------------------------------------------------------------------
// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C. op(X) = X^T when trans_x. Row-major, leading dims given.
// float uses the BLAS found at build time (or our blocked kernel); double uses the blocked kernel.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
// Name of the GEMM provider in use, e.g. "ncp avx512 (2 threads)" or "openblas 0.3.21 Haswell".
const char* gemm_provider();

// ---- Linear: y[rows, out] = x[rows, in] W[out, in]^T + b[out] (b may be nullptr) ------------------------------
template <class T>
void linear_forward(T* y, const T* x, const T* W, const T* b, int64_t rows, int64_t in, int64_t out);
template <class T>
void linear_backward(T* dx, T* dW, T* db, const T* dy, const T* x, const T* W, int64_t rows, int64_t in,
                     int64_t out);

// ---- LoRA adapter (PEFT convention): y[rows, out] += scale (x A^T) B^T with A [rank, in] and B [out, rank] -------
// The backward adds dx += scale dy B A, dA += scale (dy B)^T x and dB += scale dy^T (x A^T), skipping nullptr ones;
// x may be nullptr when dA and dB both are.
struct LoraShape {
  int64_t rows, in, out, rank;
};
template <class T>
void lora_forward(T* y, const T* x, const T* A, const T* B, T scale, const LoraShape& s);
template <class T>
void lora_backward(T* dx, T* dA, T* dB, const T* dy, const T* x, const T* A, const T* B, T scale,
                   const LoraShape& s);

// ---- Conv2d: square kernel k (1 or 3), stride 1 or 2, zero padding `pad`. x [N,Cin,H,W] -> y [N,Cout,Ho,Wo]
// with Ho = (H + 2 pad - k) / stride + 1. W [Cout,Cin,k,k], b [Cout] or nullptr.
struct Conv2dShape {
  int64_t N, Cin, H, W, Cout, k, stride, pad;
  int64_t Ho() const { return (H + 2 * pad - k) / stride + 1; }
  int64_t Wo() const { return (W + 2 * pad - k) / stride + 1; }
};
template <class T>
void conv2d_forward(T* y, const T* x, const T* W, const T* b, const Conv2dShape& s);
template <class T>
void conv2d_backward(T* dx, T* dW, T* db, const T* dy, const T* x, const T* W, const Conv2dShape& s);

// ---- Frozen layer weights as stored: float32, or F16/BF16 values (a half-precision model file kept mapped,
// possibly unaligned) that the GEMM packers widen to float32 as they copy panels. The results are bit-identical
// to the float32 ops on the widened weights: widening is exact and the arithmetic is the same. Half weights
// always run on ncp's own kernels (a BLAS cannot read them).
struct WeightRef {
  const void* data = nullptr;
  DType dtype = DType::F32;  // F32, F16 or BF16 (NCP_EDTYPE otherwise)
  WeightRef() = default;
  WeightRef(const float* w) : data(w) {}  // NOLINT: a float pointer is a float32 weight
  WeightRef(const void* w, DType t) : data(w), dtype(t) {}
};
void linear_forward_w(float* y, const float* x, WeightRef W, const float* b, int64_t rows, int64_t in, int64_t out);
// dx += dy W.
void linear_backward_input_w(float* dx, const float* dy, WeightRef W, int64_t rows, int64_t in, int64_t out);
void conv2d_forward_w(float* y, const float* x, WeightRef W, const float* b, const Conv2dShape& s);
// dx += conv^T dy.
void conv2d_backward_input_w(float* dx, const float* dy, WeightRef W, const Conv2dShape& s);
// C = alpha op(A) op(B) + beta C where A and B may each be float32 or half (the GEMM above otherwise).
void gemm_w(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, WeightRef A, int64_t lda,
            WeightRef B, int64_t ldb, float beta, float* C, int64_t ldc);

// ---- GroupNorm over x [N, C, HW] with G groups; gamma/beta [C] (nullptr = identity affine).
// saved_mean, saved_rstd: [N*G].
template <class T>
void group_norm_forward(T* y, T* saved_mean, T* saved_rstd, const T* x, const T* gamma, const T* beta, int64_t N,
                        int64_t C, int64_t HW, int64_t G, double eps);
template <class T>
void group_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* saved_mean,
                         const T* saved_rstd, const T* gamma, int64_t N, int64_t C, int64_t HW, int64_t G);
// GroupNorm then SiLU as one op: y = silu(group_norm(x)). The backward takes the gradient of y and recomputes
// the normalised values from x and the saved statistics, so a training tape keeps neither the normalised nor the
// activated tensor (the resnets' norm1/norm2 and the U-Net's output head), and each runs one pass fewer.
template <class T>
void group_norm_silu_forward(T* y, T* saved_mean, T* saved_rstd, const T* x, const T* gamma, const T* beta,
                             int64_t N, int64_t C, int64_t HW, int64_t G, double eps);
template <class T>
void group_norm_silu_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* saved_mean,
                              const T* saved_rstd, const T* gamma, const T* beta, int64_t N, int64_t C, int64_t HW,
                              int64_t G);

// ---- LayerNorm over the last dim of x [rows, C]; saved_mean, saved_rstd: [rows].
template <class T>
void layer_norm_forward(T* y, T* saved_mean, T* saved_rstd, const T* x, const T* gamma, const T* beta,
                        int64_t rows, int64_t C, double eps);
template <class T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* saved_mean,
                         const T* saved_rstd, const T* gamma, int64_t rows, int64_t C);

// ---- Activations (elementwise over n values; backward reads the forward input x) -------------------------
enum class Activation { SiLU, GeluErf, GeluTanh, QuickGelu };
template <class T>
void activation_forward(Activation a, T* y, const T* x, int64_t n);
template <class T>
void activation_backward(Activation a, T* dx, const T* dy, const T* x, int64_t n);

// ---- GEGLU (diffusers): x [rows, 2D] = [hidden | gate]; y [rows, D] = hidden * gelu_erf(gate).
template <class T>
void geglu_forward(T* y, const T* x, int64_t rows, int64_t D);
template <class T>
void geglu_backward(T* dx, const T* dy, const T* x, int64_t rows, int64_t D);

// ---- Multi-head softmax attention. q [B, Lq, H*Dh], k and v [B, Lk, H*Dh] -> out [B, Lq, H*Dh],
// scale = 1/sqrt(Dh); causal masks key j > query i. saved_probs: [B, H, Lq, Lk] (the softmax), or nullptr for
// inference (backward then needs it recomputed by a forward with a buffer).
struct AttentionShape {
  int64_t B, Lq, Lk, H, Dh;
  bool causal;
};
template <class T>
void attention_forward(T* out, T* saved_probs, const T* q, const T* k, const T* v, const AttentionShape& s);
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* saved_probs, const AttentionShape& s);
// dq, dk, dv += the gradients as attention_backward gives them, recomputing the probabilities block by block
// instead of reading them (no [B, H, Lq, Lk] buffer); out (nullptr: not wanted) receives the forward's output.
template <class T>
void attention_backward_recompute(T* dq, T* dk, T* dv, T* out, const T* dout, const T* q, const T* k, const T* v,
                                  const AttentionShape& s);

// ---- Nearest 2x upsample: x [N, C, H, W] -> y [N, C, 2H, 2W].
template <class T>
void upsample_nearest2x_forward(T* y, const T* x, int64_t N, int64_t C, int64_t H, int64_t W);
template <class T>
void upsample_nearest2x_backward(T* dx, const T* dy, int64_t N, int64_t C, int64_t H, int64_t W);

// ---- Elementwise add (y = a + b, n values) and channel concat: a [N,Ca,HW], b [N,Cb,HW] -> y [N,Ca+Cb,HW].
// bf16 storage of float32 activations (the mixed-precision tape): dst = round-to-nearest-even of src, and back.
void round_to_bf16(uint16_t* dst, const float* src, int64_t n);
void widen_bf16(float* dst, const uint16_t* src, int64_t n);

template <class T>
void add_forward(T* y, const T* a, const T* b, int64_t n);
template <class T>
void add_backward(T* da, T* db, const T* dy, int64_t n);
template <class T>
void concat_channels_forward(T* y, const T* a, const T* b, int64_t N, int64_t Ca, int64_t Cb, int64_t HW);
template <class T>
void concat_channels_backward(T* da, T* db, const T* dy, int64_t N, int64_t Ca, int64_t Cb, int64_t HW);
// Broadcast add of a per-(n, c) bias over HW (the resnet's time-embedding injection): y[n,c,:] += bias[n,c].
template <class T>
void add_channel_bias_forward(T* y, const T* bias, int64_t N, int64_t C, int64_t HW);
template <class T>
void add_channel_bias_backward(T* dbias, const T* dy, int64_t N, int64_t C, int64_t HW);

// ---- Sinusoidal timestep embedding (diffusers get_timestep_embedding): t [N] -> y [N, dim].
// exponent_i = -ln(max_period) * i / (half - freq_shift); emb = [sin(t*f), cos(t*f)], swapped when
// flip_sin_to_cos; an odd dim gets a zero last column. No backward: timesteps are data.
template <class T>
void timestep_embedding(T* y, const T* t, int64_t N, int64_t dim, bool flip_sin_to_cos, double freq_shift,
                        double max_period = 10000.0);

// ---- Mean squared error: returns mean((a - b)^2) over n; backward adds scale * 2 (a - b) / n to da (and
// the negation to db), where scale is the upstream gradient of the scalar loss.
template <class T>
double mse_forward(const T* a, const T* b, int64_t n);
template <class T>
void mse_backward(T* da, T* db, const T* a, const T* b, int64_t n, double scale);

// ---- AdamW (decoupled weight decay, PyTorch semantics): step counts from 1.
struct AdamWConfig {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
};
template <class T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, int64_t step, const AdamWConfig& c);

}  // namespace ncp::cpu
