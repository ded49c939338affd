/* The ABI between the host (Node addon, native tests) and libncp_cuda.so, which the host opens with dlopen.
 * Plain C with no CUDA includes, so the CPU-only host compiles against it and never links libcudart.
 *
 * ncp_cuda_get_api(NCP_CUDA_ABI_VERSION) returns the function table, or NULL when the library was built for
 * another ABI version. Any change to a struct below or to a function's signature bumps the version; new
 * entries go at the end of ncp_cuda_api (the host also checks struct_size).
 *
 * Every function returns an ncp_cuda_status (0 = ok); on failure last_error() names the op, the argument or
 * the CUDA error. The ops mirror native/cpu/ops.h for float32: same argument order and meaning, with device
 * pointers; backward functions ADD into the gradient buffers they are given and skip NULL ones. Ops are queued
 * on the device's legacy default stream and return before they finish (memcpy_h2d/d2h, mem_free, synchronize
 * and mse_forward wait for the device); a kernel fault therefore surfaces at the next waiting call. The
 * library keeps process-wide state (scratch arenas, the cuBLAS handle, the GEMM choice): drive it from one
 * host thread at a time, on the device selected before the first op. */
#ifndef NCP_CUDA_API_H
#define NCP_CUDA_API_H

#include <stddef.h>
#include <stdint.h>

#define NCP_CUDA_ABI_VERSION 3  /* 3: ncp_cuda_dtype gained NCP_CUDA_F16 (a version-2 library reads it as float) */
#define NCP_CUDA_GET_API_SYMBOL "ncp_cuda_get_api"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ncp_cuda_status {
  NCP_CUDA_OK = 0,
  NCP_CUDA_EINVAL = 1,   /* bad argument (negative size, NULL required pointer, unsupported shape) */
  NCP_CUDA_ENOMEM = 2,   /* device allocation failed */
  NCP_CUDA_ENODRIVER = 3, /* no NVIDIA driver, or one too old for this CUDA runtime */
  NCP_CUDA_ENODEV = 4,   /* driver present but no CUDA device visible */
  NCP_CUDA_ECUDA = 5     /* any other CUDA runtime / cuBLAS error (launch failure, illegal address, ...) */
} ncp_cuda_status;

/* Same order as ncp::cpu::Activation. */
typedef enum ncp_cuda_activation {
  NCP_CUDA_ACT_SILU = 0,
  NCP_CUDA_ACT_GELU_ERF = 1,
  NCP_CUDA_ACT_GELU_TANH = 2,
  NCP_CUDA_ACT_QUICK_GELU = 3
} ncp_cuda_activation;

/* Storage type of frozen weights (mixed precision: bf16 or fp16 weights, float activations, float accumulation). */
typedef enum ncp_cuda_dtype {
  NCP_CUDA_F32 = 0,
  NCP_CUDA_BF16 = 1,
  NCP_CUDA_F16 = 2
} ncp_cuda_dtype;

typedef enum ncp_cuda_gemm_choice {
  NCP_CUDA_GEMM_AUTO = 0, /* cuBLAS when it could be loaded, else ncp's own kernel */
  NCP_CUDA_GEMM_OWN = 1   /* always ncp's own kernel (for parity checks of both providers) */
} ncp_cuda_gemm_choice;

typedef struct ncp_cuda_conv2d_shape {
  int64_t N, Cin, H, W, Cout, k, stride, pad;
} ncp_cuda_conv2d_shape;

/* set_fused_attention's modes */
#define NCP_CUDA_ATTENTION_MATERIALIZED 0
#define NCP_CUDA_ATTENTION_FUSED 1
#define NCP_CUDA_ATTENTION_FUSED_WMMA 2
#define NCP_CUDA_ATTENTION_FUSED_ASYNC 3  /* FUSED with the tiles loaded by cp.async into two buffers */
#define NCP_CUDA_ATTENTION_FUSED_ASYNC8 4 /* the same with 8 warps (128 query rows) per forward block */

typedef struct ncp_cuda_attention_shape {
  int64_t B, Lq, Lk, H, Dh;
  int32_t causal;
} ncp_cuda_attention_shape;

typedef struct ncp_cuda_adamw_config {
  double lr, beta1, beta2, eps, weight_decay;
} ncp_cuda_adamw_config;

typedef struct ncp_cuda_device_info {
  char name[256];
  int32_t cc_major, cc_minor;
  int32_t multiprocessors;
  uint64_t total_memory, free_memory; /* bytes */
} ncp_cuda_device_info;

typedef struct ncp_cuda_api {
  uint32_t abi_version; /* NCP_CUDA_ABI_VERSION */
  uint32_t struct_size; /* sizeof(ncp_cuda_api) as built into the library */

  /* ---- device and runtime ---- */
  /* Count of visible devices. Without a usable driver or device it fails with ENODRIVER / ENODEV and
   * last_error() says why in words ("no NVIDIA driver found (libcuda.so.1)", ...). */
  int (*device_count)(int32_t* count);
  int (*device_info)(int32_t device, ncp_cuda_device_info* info);
  int (*set_device)(int32_t device);
  /* CUDA versions as 1000 * major + 10 * minor; driver is 0 when no driver is installed. */
  int (*versions)(int32_t* driver, int32_t* runtime);
  /* Message of the last failure on the calling thread ("" when none). */
  const char* (*last_error)(void);
  /* "cublas 13.0.0 (libcublas.so.13)" or "ncp-tiled 64x64x16 (cuBLAS not found: ...)". */
  const char* (*gemm_provider)(void);
  int (*select_gemm)(int32_t choice); /* ncp_cuda_gemm_choice */
  /* TF32 tensor cores for float GEMMs through cuBLAS; off by default (exact float32 parity with the CPU). */
  int (*set_tf32)(int32_t allow);

  /* ---- memory ---- */
  int (*mem_alloc)(void** ptr, size_t bytes);
  int (*mem_free)(void* ptr);
  int (*memcpy_h2d)(void* dst, const void* src, size_t bytes);
  int (*memcpy_d2h)(void* dst, const void* src, size_t bytes);
  int (*memcpy_d2d)(void* dst, const void* src, size_t bytes);
  int (*mem_zero)(void* ptr, size_t bytes);
  int (*synchronize)(void);

  /* ---- ops (float32; see native/cpu/ops.h for shapes and semantics) ---- */
  int (*gemm)(int32_t trans_a, int32_t trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

  int (*linear_forward)(float* y, const float* x, const float* W, const float* b, int64_t rows, int64_t in,
                        int64_t out);
  int (*linear_backward)(float* dx, float* dW, float* db, const float* dy, const float* x, const float* W,
                         int64_t rows, int64_t in, int64_t out);

  int (*conv2d_forward)(float* y, const float* x, const float* W, const float* b, const ncp_cuda_conv2d_shape* s);
  int (*conv2d_backward)(float* dx, float* dW, float* db, const float* dy, const float* x, const float* W,
                         const ncp_cuda_conv2d_shape* s);

  int (*group_norm_forward)(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                            const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G, double eps);
  int (*group_norm_backward)(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                             const float* saved_mean, const float* saved_rstd, const float* gamma, int64_t N,
                             int64_t C, int64_t HW, int64_t G);
  /* y = silu(group_norm(x)); the backward takes the gradient of y and recomputes the normalised values. */
  int (*group_norm_silu_forward)(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                                 const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G, double eps);
  int (*group_norm_silu_backward)(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                                  const float* saved_mean, const float* saved_rstd, const float* gamma,
                                  const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G);

  int (*layer_norm_forward)(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                            const float* beta, int64_t rows, int64_t C, double eps);
  int (*layer_norm_backward)(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                             const float* saved_mean, const float* saved_rstd, const float* gamma, int64_t rows,
                             int64_t C);

  int (*activation_forward)(int32_t activation, float* y, const float* x, int64_t n);
  int (*activation_backward)(int32_t activation, float* dx, const float* dy, const float* x, int64_t n);

  int (*geglu_forward)(float* y, const float* x, int64_t rows, int64_t D);
  int (*geglu_backward)(float* dx, const float* dy, const float* x, int64_t rows, int64_t D);

  int (*attention_forward)(float* out, float* saved_probs, const float* q, const float* k, const float* v,
                           const ncp_cuda_attention_shape* s);
  int (*attention_backward)(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                            const float* v, const float* saved_probs, const ncp_cuda_attention_shape* s);
  /* The same gradients with the probabilities recomputed (no saved_probs); out (may be NULL) gets the output. */
  int (*attention_backward_recompute)(float* dq, float* dk, float* dv, float* out, const float* dout,
                                      const float* q, const float* k, const float* v,
                                      const ncp_cuda_attention_shape* s);

  int (*upsample_nearest2x_forward)(float* y, const float* x, int64_t N, int64_t C, int64_t H, int64_t W);
  int (*upsample_nearest2x_backward)(float* dx, const float* dy, int64_t N, int64_t C, int64_t H, int64_t W);

  int (*add_forward)(float* y, const float* a, const float* b, int64_t n);
  int (*add_backward)(float* da, float* db, const float* dy, int64_t n);
  int (*concat_channels_forward)(float* y, const float* a, const float* b, int64_t N, int64_t Ca, int64_t Cb,
                                 int64_t HW);
  int (*concat_channels_backward)(float* da, float* db, const float* dy, int64_t N, int64_t Ca, int64_t Cb,
                                  int64_t HW);
  int (*add_channel_bias_forward)(float* y, const float* bias, int64_t N, int64_t C, int64_t HW);
  int (*add_channel_bias_backward)(float* dbias, const float* dy, int64_t N, int64_t C, int64_t HW);

  /* t is a device array of N timesteps. */
  int (*timestep_embedding)(float* y, const float* t, int64_t N, int64_t dim, int32_t flip_sin_to_cos,
                            double freq_shift, double max_period);

  /* Waits for the device and stores mean((a - b)^2) in *loss (host memory). */
  int (*mse_forward)(const float* a, const float* b, int64_t n, double* loss);
  int (*mse_backward)(float* da, float* db, const float* a, const float* b, int64_t n, double scale);

  int (*adamw_step)(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step,
                    const ncp_cuda_adamw_config* c);

  /* ---- layout and scaling, for the U-Net on the device (model/dev_ops.h) ---- */
  /* y [N, cols, rows] = x [N, rows, cols] transposed per batch item (NCHW <-> NLC). */
  int (*transpose_batched)(float* y, const float* x, int64_t N, int64_t rows, int64_t cols);
  /* y = a x + c over n values (centre_input_sample's 2x - 1). */
  int (*scale_shift)(float* y, const float* x, float a, float c, int64_t n);

  /* ---- mixed precision: A and B each float32, bf16 or fp16 (ncp_cuda_dtype; two half operands of one type), C
   * float32. A half GEMM rounds its float operand to the half type and accumulates in float (cuBLAS' GemmEx); the
   * weight variants below are the float ops of the same name with W in any of the types (inputs, outputs and
   * gradients stay float32). */
  int (*gemm_mixed)(int32_t trans_a, int32_t trans_b, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
                    int32_t a_dtype, int64_t lda, const void* B, int32_t b_dtype, int64_t ldb, float beta, float* C,
                    int64_t ldc);
  int (*linear_forward_w)(float* y, const float* x, const void* W, int32_t w_dtype, const float* b, int64_t rows,
                          int64_t in, int64_t out);
  int (*linear_backward_input_w)(float* dx, const float* dy, const void* W, int32_t w_dtype, int64_t rows,
                                 int64_t in, int64_t out);
  int (*conv2d_forward_w)(float* y, const float* x, const void* W, int32_t w_dtype, const float* b,
                          const ncp_cuda_conv2d_shape* s);
  int (*conv2d_backward_input_w)(float* dx, const float* dy, const void* W, int32_t w_dtype,
                                 const ncp_cuda_conv2d_shape* s);

  /* ---- fused attention (cuda/flash_attention.h) ---- */
  /* Fused modes: attention_forward without saved_probs and attention_backward_recompute run the fused flash-style
   * kernels (bf16 tensor-core products, float softmax statistics and outputs, no [heads, Lq, Lk] buffer) for shapes
   * with at least 128 keys and a head dim of at most 256. NCP_CUDA_ATTENTION_FUSED: the register-level (mma.sync)
   * kernels (the backward's up to head dim 128, WMMA's beyond); _FUSED_ASYNC / _FUSED_ASYNC8: the same, with the
   * forward's k and v tiles and the backward's q and dout tiles loaded by cp.async into two buffers (4 or 8 warps a
   * forward block) where the head dim is a multiple of 8 (SD's 40, 64, 80, 160; 128); _FUSED_WMMA: the WMMA kernels
   * for both passes.
   * _MATERIALIZED (the default): the float path. */
  int (*set_fused_attention)(int32_t mode);

  /* ---- the bf16 tape (mixed precision): dst = src rounded to nearest-even bf16 (n values), and back ---- */
  int (*round_to_bf16)(void* dst, const float* src, int64_t n);
  int (*widen_bf16)(float* dst, const void* src, int64_t n);

  /* ---- profiling without synchronising (ncp_bench --profile gpu): device timestamps on the op stream ---- */
  /* Records a timing event on the op stream; *id is its handle until event_release (the library pools them). */
  int (*event_record)(int64_t* id);
  /* *done = 1 when everything queued before the event has run, else 0; never waits. */
  int (*event_query)(int64_t id, int32_t* done);
  /* Milliseconds of device time between two recorded events; waits for `end`. */
  int (*event_elapsed)(int64_t start, int64_t end, float* ms);
  int (*event_release)(int64_t id);
  /* Kernel and library launches made so far (each is counted where it is checked, in check_launch). */
  int64_t (*launch_count)(void);

  /* ---- LoRA adapters (cpu/ops.h lora_forward / lora_backward): y[rows, out] += scale (x A^T) B^T with A [rank, in],
   * B [out, rank]; the backward adds into dx, dA, dB (each may be NULL; x may be NULL when dA and dB are). Ranks up
   * to 32 run fused kernels, larger ones the GEMMs. */
  int (*lora_forward)(float* y, const float* x, const float* A, const float* B, float scale, int64_t rows,
                      int64_t in, int64_t out, int64_t rank);
  int (*lora_backward)(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* A,
                       const float* B, float scale, int64_t rows, int64_t in, int64_t out, int64_t rank);
} ncp_cuda_api;

/* The one exported symbol. */
#if defined(__GNUC__)
__attribute__((visibility("default")))
#endif
const ncp_cuda_api* ncp_cuda_get_api(int abi_version);

typedef const ncp_cuda_api* (*ncp_cuda_get_api_fn)(int abi_version);

#ifdef __cplusplus
}
#endif

#endif /* NCP_CUDA_API_H */
