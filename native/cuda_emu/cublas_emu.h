// cuBLAS for the CUDA emulator: the entry points libncp_cuda resolves from libcublas.so (cublas_loader.cpp), with
// cuBLAS' C ABI and semantics (column-major operands, cublasOperation_t, leading-dimension rules, status codes,
// CUBLAS_TF32_TENSOR_OP_MATH), computed on the CPU. On a GPU the GEMMs go through cuBLAS; with this the emulator
// runs that same path, operand swap and argument translation included, instead of only the backend's own kernel.
// Each operand's span is checked against the emulator's allocations (a real GPU would fault on a bad one).
#pragma once

namespace ncp_emu::cublas {

int create(void** handle);
int get_version(void* handle, int* version);
int set_math_mode(void* handle, int mode);
int sgemm(void* handle, int op_a, int op_b, int m, int n, int k, const float* alpha, const float* A, int lda,
          const float* B, int ldb, const float* beta, float* C, int ldc);
int sgemm_strided_batched(void* handle, int op_a, int op_b, int m, int n, int k, const float* alpha, const float* A,
                          int lda, long long stride_a, const float* B, int ldb, long long stride_b, const float* beta,
                          float* C, int ldc, long long stride_c, int batch);
int gemm_strided_batched_ex(void* handle, int op_a, int op_b, int m, int n, int k, const void* alpha, const void* A,
                            int a_type, int lda, long long stride_a, const void* B, int b_type, int ldb,
                            long long stride_b, const void* beta, void* C, int c_type, int ldc, long long stride_c,
                            int batch, int compute_type, int algo);

}  // namespace ncp_emu::cublas
