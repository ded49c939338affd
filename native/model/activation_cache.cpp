#include "model/activation_cache.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

namespace ncp::model::activation_cache {
namespace {

struct Cache {
  std::mutex mu;
  std::multimap<int64_t, float*> free;  // capacity -> block
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: Buffers in static storage may release after exit begins
  return *c;
}

// n rounded up to the next of 8 steps per power of two (at most 12.5% slack), and to whole cache lines.
int64_t size_class(int64_t n) {
  if (n <= 16) return 16;
  int64_t p = 1;
  while (p * 2 <= n) p *= 2;
  const int64_t step = p / 8 > 16 ? p / 8 : 16;
  return (n + step - 1) / step * step;
}

}  // namespace

float* acquire(int64_t n, int64_t* capacity) {
  const int64_t want = size_class(n);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free.lower_bound(want);
    if (it != c.free.end() && it->first <= 2 * want) {
      float* p = it->second;
      *capacity = it->first;
      c.free.erase(it);
      return p;
    }
  }
  void* p = std::aligned_alloc(64, size_t(want) * sizeof(float));
  if (!p) throw std::bad_alloc();
  *capacity = want;
  return static_cast<float*>(p);
}

void release(float* p, int64_t capacity) {
  if (!p) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.free.emplace(capacity, p);
}

}  // namespace ncp::model::activation_cache
