// The functions behind ncp_cuda_api's entries (api.cu fills the table from these). Each .cu defines its op
// family's entries; signatures match the table's exactly.
#pragma once
#include "cuda/api.h"

namespace ncp::cuda {

// device.cu
int device_count(int32_t* count);
int device_info(int32_t device, ncp_cuda_device_info* info);
int set_device(int32_t device);
int versions(int32_t* driver, int32_t* runtime);
const char* last_error();
int mem_alloc(void** ptr, size_t bytes);
int mem_free(void* ptr);
int memcpy_h2d(void* dst, const void* src, size_t bytes);
int memcpy_d2h(void* dst, const void* src, size_t bytes);
int memcpy_d2d(void* dst, const void* src, size_t bytes);
int mem_zero(void* ptr, size_t bytes);
int synchronize();
int event_record(int64_t* id);
int event_query(int64_t id, int32_t* done);
int event_elapsed(int64_t start, int64_t end, float* ms);
int event_release(int64_t id);
int64_t launch_count();

// gemm.cu
const char* gemm_provider();
int select_gemm(int32_t choice);
int set_tf32(int32_t allow);
int gemm(int32_t trans_a, int32_t trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
int linear_forward(float* y, const float* x, const float* W, const float* b, int64_t rows, int64_t in,
                   int64_t out);
int linear_backward(float* dx, float* dW, float* db, const float* dy, const float* x, const float* W,
                    int64_t rows, int64_t in, int64_t out);

// conv2d.cu
int conv2d_forward(float* y, const float* x, const float* W, const float* b, const ncp_cuda_conv2d_shape* s);
int conv2d_backward(float* dx, float* dW, float* db, const float* dy, const float* x, const float* W,
                    const ncp_cuda_conv2d_shape* s);

// norm.cu
int group_norm_forward(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                       const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G, double eps);
int group_norm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* saved_mean, const float* saved_rstd, const float* gamma, int64_t N, int64_t C,
                        int64_t HW, int64_t G);
int group_norm_silu_forward(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                            const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G, double eps);
int group_norm_silu_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                             const float* saved_mean, const float* saved_rstd, const float* gamma, const float* beta,
                             int64_t N, int64_t C, int64_t HW, int64_t G);
int layer_norm_forward(float* y, float* saved_mean, float* saved_rstd, const float* x, const float* gamma,
                       const float* beta, int64_t rows, int64_t C, double eps);
int layer_norm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* saved_mean, const float* saved_rstd, const float* gamma, int64_t rows,
                        int64_t C);

// activations.cu
int activation_forward(int32_t activation, float* y, const float* x, int64_t n);
int activation_backward(int32_t activation, float* dx, const float* dy, const float* x, int64_t n);
int geglu_forward(float* y, const float* x, int64_t rows, int64_t D);
int geglu_backward(float* dx, const float* dy, const float* x, int64_t rows, int64_t D);

// attention.cu
int attention_forward(float* out, float* saved_probs, const float* q, const float* k, const float* v,
                      const ncp_cuda_attention_shape* s);
int attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                       const float* v, const float* saved_probs, const ncp_cuda_attention_shape* s);
int attention_backward_recompute(float* dq, float* dk, float* dv, float* out, const float* dout, const float* q,
                                 const float* k, const float* v, const ncp_cuda_attention_shape* s);
// flash_attention.cu
int set_fused_attention(int32_t mode);

// elementwise.cu
int upsample_nearest2x_forward(float* y, const float* x, int64_t N, int64_t C, int64_t H, int64_t W);
int upsample_nearest2x_backward(float* dx, const float* dy, int64_t N, int64_t C, int64_t H, int64_t W);
int add_forward(float* y, const float* a, const float* b, int64_t n);
int add_backward(float* da, float* db, const float* dy, int64_t n);
int concat_channels_forward(float* y, const float* a, const float* b, int64_t N, int64_t Ca, int64_t Cb,
                            int64_t HW);
int concat_channels_backward(float* da, float* db, const float* dy, int64_t N, int64_t Ca, int64_t Cb,
                             int64_t HW);
int add_channel_bias_forward(float* y, const float* bias, int64_t N, int64_t C, int64_t HW);
int add_channel_bias_backward(float* dbias, const float* dy, int64_t N, int64_t C, int64_t HW);
int transpose_batched(float* y, const float* x, int64_t N, int64_t rows, int64_t cols);
int round_to_bf16(void* dst, const float* src, int64_t n);
int widen_bf16(float* dst, const void* src, int64_t n);

// gemm.cu, conv2d.cu: frozen weights in float32 or bf16 (ncp_cuda_dtype)
int gemm_mixed(int32_t trans_a, int32_t trans_b, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
               int32_t a_dtype, int64_t lda, const void* B, int32_t b_dtype, int64_t ldb, float beta, float* C,
               int64_t ldc);
int linear_forward_w(float* y, const float* x, const void* W, int32_t w_dtype, const float* b, int64_t rows,
                     int64_t in, int64_t out);
int linear_backward_input_w(float* dx, const float* dy, const void* W, int32_t w_dtype, int64_t rows, int64_t in,
                            int64_t out);
int conv2d_forward_w(float* y, const float* x, const void* W, int32_t w_dtype, const float* b,
                     const ncp_cuda_conv2d_shape* s);
int conv2d_backward_input_w(float* dx, const float* dy, const void* W, int32_t w_dtype, const ncp_cuda_conv2d_shape* s);
int scale_shift(float* y, const float* x, float a, float c, int64_t n);

// embeddings.cu
int timestep_embedding(float* y, const float* t, int64_t N, int64_t dim, int32_t flip_sin_to_cos,
                       double freq_shift, double max_period);

// losses.cu
int mse_forward(const float* a, const float* b, int64_t n, double* loss);
int mse_backward(float* da, float* db, const float* a, const float* b, int64_t n, double scale);

// optim.cu
int adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step,
               const ncp_cuda_adamw_config* c);

// lora.cu
int lora_forward(float* y, const float* x, const float* A, const float* B, float scale, int64_t rows, int64_t in,
                 int64_t out, int64_t rank);
int lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* A, const float* B,
                  float scale, int64_t rows, int64_t in, int64_t out, int64_t rank);

}  // namespace ncp::cuda
