// Linear layers on top of gemm: y = x W^T + b, dx = dy W, dW = dy^T x, db = column sums of dy; and the LoRA
// adapter's low-rank update beside them.
#include <algorithm>
#include <vector>

#include "core/threads.h"
#include "cpu/ops.h"

namespace ncp::cpu {

namespace {
template <class T>
void add_row_bias(T* y, const T* b, int64_t rows, int64_t out) {
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(out, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < out; ++j) y[r * out + j] += b[j];
  });
}
}  // namespace

template <class T>
void linear_forward(T* y, const T* x, const T* W, const T* b, int64_t rows, int64_t in, int64_t out) {
  gemm<T>(false, true, rows, out, in, T(1), x, in, W, in, T(0), y, out);
  if (b) add_row_bias(y, b, rows, out);
}

void linear_forward_w(float* y, const float* x, WeightRef W, const float* b, int64_t rows, int64_t in, int64_t out) {
  gemm_w(false, true, rows, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
  if (b) add_row_bias(y, b, rows, out);
}

void linear_backward_input_w(float* dx, const float* dy, WeightRef W, int64_t rows, int64_t in, int64_t out) {
  gemm_w(false, false, rows, in, out, 1.0f, dy, out, W, in, 1.0f, dx, in);
}

template <class T>
void linear_backward(T* dx, T* dW, T* db, const T* dy, const T* x, const T* W, int64_t rows, int64_t in,
                     int64_t out) {
  if (dx) gemm<T>(false, false, rows, in, out, T(1), dy, out, W, in, T(1), dx, in);
  if (dW) gemm<T>(true, false, out, in, rows, T(1), dy, out, x, in, T(1), dW, in);
  if (!db) return;
  // Split the columns across threads; each sums its columns over all rows in double (rows reach 4096+).
  parallel_for(out, 64, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(j1 - j0, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const T* d = dy + r * out;
      for (int64_t j = j0; j < j1; ++j) acc[j - j0] += double(d[j]);
    }
    for (int64_t j = j0; j < j1; ++j) db[j] += T(acc[j - j0]);
  });
}

// u [rows, rank] = x A^T, recomputed by the backward rather than kept (rank / in of x's size, but one more tape
// entry per adapter); du = scale dy B. The products are the GEMMs of the adapter's chain rule:
// y += scale u B^T  =>  dB += scale dy^T u, du = scale dy B, dA += du^T x, dx += du A.
template <class T>
void lora_forward(T* y, const T* x, const T* A, const T* B, T scale, const LoraShape& s) {
  std::vector<T> u(size_t(s.rows * s.rank));
  gemm<T>(false, true, s.rows, s.rank, s.in, T(1), x, s.in, A, s.in, T(0), u.data(), s.rank);
  gemm<T>(false, true, s.rows, s.out, s.rank, scale, u.data(), s.rank, B, s.rank, T(1), y, s.out);
}

template <class T>
void lora_backward(T* dx, T* dA, T* dB, const T* dy, const T* x, const T* A, const T* B, T scale,
                   const LoraShape& s) {
  if (!dx && !dA && !dB) return;
  std::vector<T> du(size_t(s.rows * s.rank));
  gemm<T>(false, false, s.rows, s.rank, s.out, scale, dy, s.out, B, s.rank, T(0), du.data(), s.rank);
  if (dA) gemm<T>(true, false, s.rank, s.in, s.rows, T(1), du.data(), s.rank, x, s.in, T(1), dA, s.in);
  if (dB) {
    std::vector<T> u(size_t(s.rows * s.rank));
    gemm<T>(false, true, s.rows, s.rank, s.in, T(1), x, s.in, A, s.in, T(0), u.data(), s.rank);
    gemm<T>(true, false, s.out, s.rank, s.rows, scale, dy, s.out, u.data(), s.rank, T(1), dB, s.rank);
  }
  if (dx) gemm<T>(false, false, s.rows, s.in, s.rank, T(1), du.data(), s.rank, A, s.in, T(1), dx, s.in);
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                     int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      int64_t, int64_t, int64_t);

template void lora_forward<float>(float*, const float*, const float*, const float*, float, const LoraShape&);
template void lora_forward<double>(double*, const double*, const double*, const double*, double, const LoraShape&);
template void lora_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*,
                                   float, const LoraShape&);
template void lora_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                    const double*, double, const LoraShape&);

}  // namespace ncp::cpu
