// The compute device of the model code, and the ops the blocks call on it.
//
// The U-Net's blocks are written once, over raw pointers. Where those pointers live is decided by the calling
// thread's current device, which a DeviceScope sets for the duration of a U-Net call: on the CPU the ops below
// are ncp::cpu's float32 ops; on a CUDA device they are the function table of libncp_cuda (cuda/api.h), and
// every pointer handed to them is device memory (weights uploaded once, activations from the device cache).
// Buffers (model/buffer.h) allocate on the current device. So the forward and backward code that the CPU
// tests check is, line for line, the code that runs on the GPU.
//
// CUDA failures throw ncp::Error: NCP_ENOMEM for an allocation (naming the size asked for and what is free),
// NCP_ECUDA for anything else, with the library's message naming the op.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>

#include "core/dtype.h"
#include "cpu/ops.h"

namespace ncp::dev {

// -1: the CPU; 0, 1, ...: that CUDA device.
int current_device();
inline bool on_cuda() { return current_device() >= 0; }

// Sets the calling thread's device until the scope ends (scopes nest). Selecting a CUDA device checks that the
// backend is usable and throws NCP_ENOCUDA with the reason when it is not. A CUDA scope also holds a process-wide
// lock: libncp_cuda keeps process-wide scratch arenas and runs on one stream, so work from two threads (two
// U-Nets driven from two Promise workers) takes turns instead of sharing an arena.
class DeviceScope {
 public:
  explicit DeviceScope(int device);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  std::unique_lock<std::recursive_mutex> lock_;
  int previous_;
};

// The precision of a U-Net call's float products on a CUDA device, for the duration of the call, from the type of
// its weight matrices. Under mixed precision PyTorch's autocast runs attention and the remaining float GEMMs in
// bf16/fp16; here:
//  - bf16 or fp16 matrices: the float32 GEMMs (LoRA, attention products outside the fused kernels) run on TF32
//    tensor cores;
//  - bf16 matrices: attention takes the fused bf16 kernels, fused-async8 (the fastest on an H200,
//    bench/gpu/README.md). Not under fp16, whose users chose it for its 3 more mantissa bits.
// With float32 weights neither: the GPU then matches the CPU to float32 rounding. NCP_CUDA_TF32=1/0 and
// NCP_CUDA_ATTENTION=<mode> override every case. Scopes nest; outside any, the backend keeps what the environment
// set (TF32 off and materialized attention when unset). No effect on the CPU.
class PrecisionScope {
 public:
  explicit PrecisionScope(DType weight_matrices);
  ~PrecisionScope();
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  bool active_ = false;
  int previous_ = -1;            // the enclosing scope's TF32 choice, -1 outside scopes
  int previous_attention_ = -1;  // and its attention mode
};

// The attention mode (NCP_CUDA_ATTENTION_* of cuda/api.h) a U-Net call runs under a PrecisionScope, and its
// description (cuda::attention_mode_name), so that benchmark logs say what ran.
int unet_attention_mode(DType weight_matrices);
std::string unet_attention(DType weight_matrices);

// Parses "cpu", "cuda" (device 0) or "cuda:N"; NCP_EINVAL naming the value otherwise.
int parse_device(const std::string& s);
std::string device_name(int device);
// Throws NCP_ENOCUDA (why the backend is unusable) or NCP_EINVAL (no such device index) unless `device` can run.
void require_device(int device);

// ---- memory on the current device ----
float* alloc(int64_t n);  // n floats; NCP_ENOMEM names the size and the device's free memory
void free(float* p);
void zero(float* p, int64_t n);
void copy(float* dst, const float* src, int64_t n);            // same device
void upload(float* dst, const float* host, int64_t n);         // host -> current device (a copy on the CPU)
void download(float* host, const float* src, int64_t n);       // current device -> host
void synchronize();
// Bytes of CUDA memory this process held at most through alloc (weights, cached activations) since the last
// reset, on all devices together.
int64_t device_bytes_peak();
void reset_device_peak();
// Per-op profile of every dev:: op from now on (clears what was recorded); the report lists ops by total time.
// Sync: each profiled op waits for the device before and after itself (exact per op, slower runs). Gpu: nothing
// waits; device events around each op give its device time, beside the host time spent issuing it, its launch
// count, and the device's idle time between ops (model/dev_ops.cpp, Profile).
enum class ProfileMode { Off, Sync, Gpu };
ProfileMode parse_profile_mode(const std::string& s);  // off | on (= sync) | sync | gpu
void set_profiling(ProfileMode mode);
// Clears what was recorded and keeps profiling (benchmarks call it after their warm-up); no-op when off.
void restart_profile();
std::string profile_report();

// ---- ops (see cpu/ops.h for shapes and semantics; backward functions ADD into their outputs) ----
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
// W: float32, F16/BF16 on the CPU (widened while packing), BF16 or F16 on a CUDA device (mixed precision:
// DeviceWeights with half matrices, half tensor-core GEMMs); NCP_EDTYPE otherwise.
void linear_forward(float* y, const float* x, cpu::WeightRef W, const float* b, int64_t rows, int64_t in, int64_t out);
void linear_backward_input(float* dx, const float* dy, cpu::WeightRef W, int64_t rows, int64_t in, int64_t out);
// The LoRA adapter's update beside a Linear (cpu/ops.h, lora_forward / lora_backward); A, B, dA, dB float32. On a
// CUDA device ranks up to 32 run fused kernels (cuda/lora.cu): one launch forward, three backward.
void lora_forward(float* y, const float* x, const float* A, const float* B, float scale, const cpu::LoraShape& s);
void lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* A, const float* B,
                   float scale, const cpu::LoraShape& s);
void conv2d_forward(float* y, const float* x, cpu::WeightRef W, const float* b, const cpu::Conv2dShape& s);
void conv2d_backward_input(float* dx, const float* dy, cpu::WeightRef W, const cpu::Conv2dShape& s);
void group_norm_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma, const float* beta,
                        int64_t N, int64_t C, int64_t HW, int64_t G, double eps);
void group_norm_backward_input(float* dx, const float* dy, const float* x, const float* mean, const float* rstd,
                               const float* gamma, int64_t N, int64_t C, int64_t HW, int64_t G);
// y = silu(group_norm(x)); the backward takes dy of y and needs only x and the statistics (cpu/ops.h).
void group_norm_silu_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                             const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G, double eps);
void group_norm_silu_backward_input(float* dx, const float* dy, const float* x, const float* mean, const float* rstd,
                                    const float* gamma, const float* beta, int64_t N, int64_t C, int64_t HW,
                                    int64_t G);
void layer_norm_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma, const float* beta,
                        int64_t rows, int64_t C, double eps);
void layer_norm_backward_input(float* dx, const float* dy, const float* x, const float* mean, const float* rstd,
                               const float* gamma, int64_t rows, int64_t C);
void activation_forward(cpu::Activation a, float* y, const float* x, int64_t n);
void activation_backward(cpu::Activation a, float* dx, const float* dy, const float* x, int64_t n);
void geglu_forward(float* y, const float* x, int64_t rows, int64_t D);
void geglu_backward(float* dx, const float* dy, const float* x, int64_t rows, int64_t D);
void attention_forward(float* out, float* saved_probs, const float* q, const float* k, const float* v,
                       const cpu::AttentionShape& s);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* saved_probs, const cpu::AttentionShape& s);
void attention_backward_recompute(float* dq, float* dk, float* dv, float* out, const float* dout, const float* q,
                                  const float* k, const float* v, const cpu::AttentionShape& s);
void upsample_nearest2x_forward(float* y, const float* x, int64_t N, int64_t C, int64_t H, int64_t W);
void upsample_nearest2x_backward(float* dx, const float* dy, int64_t N, int64_t C, int64_t H, int64_t W);
void add_forward(float* y, const float* a, const float* b, int64_t n);
void add_into(float* dst, const float* src, int64_t n);  // dst += src (add_backward's one-sided form)
void concat_channels_forward(float* y, const float* a, const float* b, int64_t N, int64_t Ca, int64_t Cb, int64_t HW);
void concat_channels_backward(float* da, float* db, const float* dy, int64_t N, int64_t Ca, int64_t Cb, int64_t HW);
void add_channel_bias_forward(float* y, const float* bias, int64_t N, int64_t C, int64_t HW);
void timestep_embedding(float* y, const float* t, int64_t N, int64_t dim, bool flip_sin_to_cos, double freq_shift);
void transpose_batched(float* y, const float* x, int64_t N, int64_t rows, int64_t cols);
void scale_shift(float* y, const float* x, float a, float c, int64_t n);  // y = a x + c
// The bf16 tape (model/buffer.h, KeptActivation): round-to-nearest-even into bf16 storage, and back to float32.
void round_to_bf16(uint16_t* dst, const float* src, int64_t n);
void widen_bf16(float* dst, const uint16_t* src, int64_t n);

}  // namespace ncp::dev
