// Linear layers on top of gemm: y = x W^T + b, dx = dy W, dW = dy^T x, db = column sums of dy.
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

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                     int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      int64_t, int64_t, int64_t);

}  // namespace ncp::cpu
