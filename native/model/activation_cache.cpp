#include "model/activation_cache.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "model/dev_ops.h"

namespace ncp::model::activation_cache {
namespace {

struct Cache {
  std::mutex mu;
  std::map<int, std::multimap<int64_t, float*>> free;  // device -> (capacity -> block)
  std::map<int, Usage> usage;                          // device -> byte counts
};

constexpr int64_t kFloat = int64_t(sizeof(float));

void count_in(Usage& u, int64_t capacity) {
  u.in_use += capacity * kFloat;
  u.peak_in_use = std::max(u.peak_in_use, u.in_use);
}

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
  const int device = dev::current_device();
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto& blocks = c.free[device];
    auto it = blocks.lower_bound(want);
    if (it != blocks.end() && it->first <= 2 * want) {
      float* p = it->second;
      *capacity = it->first;
      blocks.erase(it);
      count_in(c.usage[device], *capacity);
      return p;
    }
  }
  *capacity = want;
  float* p = nullptr;
  try {
    p = dev::alloc(want);
  } catch (const Error& e) {
    if (e.code() != "NCP_ENOMEM") throw;
    trim(device);  // cached blocks of other sizes may add up to what is asked
    p = dev::alloc(want);
  }
  std::lock_guard<std::mutex> lock(c.mu);
  Usage& u = c.usage[device];
  u.held += want * kFloat;
  count_in(u, want);
  return p;
}

void release(float* p, int64_t capacity, int device) {
  if (!p) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.free[device].emplace(capacity, p);
  c.usage[device].in_use -= capacity * kFloat;
}

void trim(int device) {
  std::vector<float*> blocks;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    for (auto& [cap, p] : c.free[device]) blocks.push_back(p), c.usage[device].held -= cap * kFloat;
    c.free[device].clear();
  }
  dev::DeviceScope scope(device);
  for (float* p : blocks) dev::free(p);
}

Usage usage(int device) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.usage[device];
}

void reset_peak(int device) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  Usage& u = c.usage[device];
  u.peak_in_use = u.in_use;
}

}  // namespace ncp::model::activation_cache
