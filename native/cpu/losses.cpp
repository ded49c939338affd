// Mean squared error, the denoising loss. The sum runs over fixed-size blocks combined in order, so the value
// does not depend on the thread count.
#include <algorithm>
#include <vector>

#include "core/threads.h"
#include "cpu/ops.h"
#include "cpu/vec.h"

namespace ncp::cpu {
namespace {
constexpr int64_t kBlock = 1 << 14;
}

template <class T>
double mse_forward(const T* a, const T* b, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
  parallel_for(blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const T* ak = a + k * kBlock;
      const T* bk = b + k * kBlock;
      partial[k] = vec::sum(std::min(kBlock, n - k * kBlock), [&](int64_t i) {
        const double d = double(ak[i]) - double(bk[i]);
        return d * d;
      });
    }
  });
  double sum = 0;
  for (double p : partial) sum += p;
  return sum / double(n);
}

template <class T>
void mse_backward(T* da, T* db, const T* a, const T* b, int64_t n, double scale) {
  if (n <= 0) return;
  const T g = T(2.0 * scale / double(n));
  parallel_for(n, kBlock, [&](int64_t i0, int64_t i1) {
    if (da)
      for (int64_t i = i0; i < i1; ++i) da[i] += g * (a[i] - b[i]);
    if (db)
      for (int64_t i = i0; i < i1; ++i) db[i] -= g * (a[i] - b[i]);
  });
}

template double mse_forward<float>(const float*, const float*, int64_t);
template double mse_forward<double>(const double*, const double*, int64_t);
template void mse_backward<float>(float*, float*, const float*, const float*, int64_t, double);
template void mse_backward<double>(double*, double*, const double*, const double*, int64_t, double);

}  // namespace ncp::cpu
