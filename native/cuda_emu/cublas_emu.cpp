// The emulator's cuBLAS (cublas_emu.h). Products accumulate in double and round once to float: at least as
// accurate as any GPU reduction order, so the parity cases' bounds hold for both. TF32 math mode rounds float
// operands to TF32 (10 explicit mantissa bits, to nearest even) first, as the tensor cores take them.
#include "cuda_emu/cublas_emu.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cuda_emu/ncp_cuda_emu.h"

namespace ncp_emu::cublas {
namespace {

// cublasStatus_t, cublasOperation_t, cublasMath_t, cudaDataType_t, cublasComputeType_t (their C ABI values).
constexpr int kSuccess = 0, kNotInitialized = 1, kInvalidValue = 7, kNotSupported = 15;
constexpr int kOpN = 0, kOpT = 1;
constexpr int kDefaultMath = 0, kTf32Math = 3;
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;
constexpr int kCompute32F = 68;

struct Handle {
  int math = kDefaultMath;
};

float to_tf32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;  // keep Inf and NaN
  std::memcpy(&f, &u, 4);
  return f;
}

size_t type_size(int type) { return type == kR32F ? 4 : 2; }

float load(const void* p, int type, int64_t i, bool tf32) {
  switch (type) {
    case kR16F: return ncp::f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case kR16BF: return ncp::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: {
      const float v = static_cast<const float*>(p)[i];
      return tf32 ? to_tf32(v) : v;
    }
  }
}

// A column-major operand of `rows` x `cols` used values at leading dimension ld, `batch` times `stride` apart, must
// lie inside one emulator allocation.
void check_span(const char* name, const void* p, int type, int64_t rows, int64_t cols, int64_t ld, long long stride,
                int batch) {
  if (rows == 0 || cols == 0 || batch == 0) return;
  const int64_t elements = (cols - 1) * ld + rows + int64_t(batch - 1) * stride;
  if (stride < 0 || !device_range_ok(p, size_t(elements) * type_size(type))) {
    const std::string what = std::string("cuBLAS (emulated): operand ") + name + " (" + std::to_string(rows) + " x " +
                             std::to_string(cols) + ", ld " + std::to_string(ld) + ", stride " +
                             std::to_string(stride) + ", batch " + std::to_string(batch) +
                             ") is not inside one device allocation";
    fatal(what.c_str());
  }
}

// C = alpha op(A) op(B) + beta C for every batch item, column-major, as cublasGemmStridedBatchedEx defines it.
int gemm(void* handle, int op_a, int op_b, int m, int n, int k, float alpha, const void* A, int a_type, int lda,
         long long stride_a, const void* B, int b_type, int ldb, long long stride_b, float beta, float* C, int ldc,
         long long stride_c, int batch) {
  if (!handle) return kNotInitialized;
  if ((op_a != kOpN && op_a != kOpT) || (op_b != kOpN && op_b != kOpT) || m < 0 || n < 0 || k < 0 || batch < 0)
    return kInvalidValue;
  const int a_rows = op_a == kOpN ? m : k, b_rows = op_b == kOpN ? k : n;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m)) return kInvalidValue;
  if (m == 0 || n == 0 || batch == 0) return kSuccess;
  const bool products = k > 0 && alpha != 0.0f;
  if (products) {
    check_span("A", A, a_type, a_rows, op_a == kOpN ? k : m, lda, stride_a, batch);
    check_span("B", B, b_type, b_rows, op_b == kOpN ? n : k, ldb, stride_b, batch);
  }
  check_span("C", C, kR32F, m, n, ldc, stride_c, batch);
  const bool tf32 = static_cast<Handle*>(handle)->math == kTf32Math;
  // op(A) as rows of k values, op(B) as columns of k values: every dot product then reads two contiguous runs.
  std::vector<float> a_rows_k(products ? size_t(m) * k : 0), b_cols_k(products ? size_t(n) * k : 0);
  for (int b = 0; b < batch; ++b) {
    float* c = C + b * stride_c;
    if (products) {
      const int64_t a0 = b * stride_a, b0 = b * stride_b;
      for (int i = 0; i < m; ++i)
        for (int p = 0; p < k; ++p) {
          const int64_t at = op_a == kOpN ? i + int64_t(p) * lda : p + int64_t(i) * lda;
          a_rows_k[size_t(i) * k + p] = load(A, a_type, a0 + at, tf32);
        }
      for (int j = 0; j < n; ++j)
        for (int p = 0; p < k; ++p) {
          const int64_t at = op_b == kOpN ? p + int64_t(j) * ldb : j + int64_t(p) * ldb;
          b_cols_k[size_t(j) * k + p] = load(B, b_type, b0 + at, tf32);
        }
    }
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        double sum = 0;
        if (products) {
          const float *x = &a_rows_k[size_t(i) * k], *y = &b_cols_k[size_t(j) * k];
          for (int p = 0; p < k; ++p) sum += double(x[p]) * double(y[p]);
        }
        float& out = c[i + int64_t(j) * ldc];
        out = float(double(alpha) * sum + (beta == 0.0f ? 0.0 : double(beta) * double(out)));  // beta 0: C unread
      }
  }
  return kSuccess;
}

}  // namespace

int create(void** handle) {
  *handle = new Handle;
  return kSuccess;
}
int get_version(void* handle, int* version) {
  if (!handle) return kNotInitialized;
  *version = 0;
  return kSuccess;
}
int set_math_mode(void* handle, int mode) {
  if (!handle) return kNotInitialized;
  if (mode != kDefaultMath && mode != kTf32Math) return kInvalidValue;
  static_cast<Handle*>(handle)->math = mode;
  return kSuccess;
}
int sgemm(void* handle, int op_a, int op_b, int m, int n, int k, const float* alpha, const float* A, int lda,
          const float* B, int ldb, const float* beta, float* C, int ldc) {
  return gemm(handle, op_a, op_b, m, n, k, *alpha, A, kR32F, lda, 0, B, kR32F, ldb, 0, *beta, C, ldc, 0, 1);
}
int sgemm_strided_batched(void* handle, int op_a, int op_b, int m, int n, int k, const float* alpha, const float* A,
                          int lda, long long stride_a, const float* B, int ldb, long long stride_b, const float* beta,
                          float* C, int ldc, long long stride_c, int batch) {
  return gemm(handle, op_a, op_b, m, n, k, *alpha, A, kR32F, lda, stride_a, B, kR32F, ldb, stride_b, *beta, C, ldc,
              stride_c, batch);
}
int gemm_strided_batched_ex(void* handle, int op_a, int op_b, int m, int n, int k, const void* alpha, const void* A,
                            int a_type, int lda, long long stride_a, const void* B, int b_type, int ldb,
                            long long stride_b, const void* beta, void* C, int c_type, int ldc, long long stride_c,
                            int batch, int compute_type, int /*algo*/) {
  // The combinations the backend uses: A and B of one type (float, fp16 or bf16), float C, float compute.
  const bool known = a_type == kR32F || a_type == kR16F || a_type == kR16BF;
  if (!known || b_type != a_type || c_type != kR32F || compute_type != kCompute32F) return kNotSupported;
  return gemm(handle, op_a, op_b, m, n, k, *static_cast<const float*>(alpha), A, a_type, lda, stride_a, B, b_type,
              ldb, stride_b, *static_cast<const float*>(beta), static_cast<float*>(C), ldc, stride_c, batch);
}

}  // namespace ncp_emu::cublas
