// cuBLAS, opened at run time by soname (libcublas.so.13, .12, .11, or NCP_CUBLAS_LIB): libncp_cuda.so builds
// without cuBLAS headers, never links it, and falls back to its own GEMM kernel where cuBLAS is absent.
// Plain C++ (no CUDA headers): streams are passed as void*.
#pragma once

namespace ncp::cuda::cublas {

// Opens the library and creates the handle on the current device, once. False when any step failed.
bool available();
// "cublas 13.0.2 (libcublas.so.13)", or why it is not available ("libcublas.so.13: cannot open ...; ...").
const char* description();
// TF32 tensor-op math for SGEMM (default off: full float32).
void set_tf32(bool allow);
bool tf32();

// Row-major C[b] = alpha op(A[b]) op(B[b]) + beta C[b] on the legacy default stream; returns the cublasStatus_t
// (0 = success). Sizes must fit cuBLAS' int arguments (the caller checks).
int sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, long long stride_a,
          const float* B, int ldb, long long stride_b, float beta, float* C, int ldc, long long stride_c, int batch);

// As sgemm with A and B both bf16 (fp16 = false) or both fp16 and float C, float accumulation
// (cublasGemmStridedBatchedEx, CUBLAS_COMPUTE_32F).
bool half_available();
int gemm_half(bool fp16, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const void* A, int lda,
              long long stride_a, const void* B, int ldb, long long stride_b, float beta, float* C, int ldc,
              long long stride_c, int batch);

}  // namespace ncp::cuda::cublas
