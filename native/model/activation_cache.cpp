#include "model/activation_cache.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "model/dev_ops.h"

namespace ncp::model::activation_cache {
namespace {

constexpr int64_t kFloat = int64_t(sizeof(float));
// Requests under 1 MiB are small: each gets its own allocation, rounded to a size class, and a cached one serves
// any later request at most twice smaller. Larger requests are carved out of segments (best fit, split, merged
// again with free neighbours when released), so the memory a freed activation leaves can serve the next few
// smaller ones instead of sitting idle until a request of its own size comes.
constexpr int64_t kSmallFloats = 256 * 1024;
constexpr int64_t kSegmentFloats = 16 * 1024 * 1024;  // 64 MiB: a segment's least size (a larger request: its own)
constexpr int64_t kLargeAlign = 128;                  // floats (512 bytes): every carved block stays aligned
constexpr int64_t kMinSplitFloats = kSmallFloats;     // a smaller remainder stays inside the block it came with

// A piece of a segment; the pieces of one segment are linked in address order.
struct Block {
  float* p = nullptr;
  int64_t size = 0;  // floats
  bool free = false;
  Block *prev = nullptr, *next = nullptr;  // neighbours in the same segment
};

struct DeviceCache {
  std::multimap<int64_t, float*> small_free;   // capacity -> free small block
  std::multimap<int64_t, Block*> large_free;   // size -> free large block
  std::map<float*, Block*> large;              // every large block, free or not, by address
  Usage usage;
};

struct Cache {
  std::mutex mu;
  std::map<int, DeviceCache> devices;
};

void count_in(Usage& u, int64_t floats) {
  u.in_use += floats * kFloat;
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

void erase_free(DeviceCache& d, Block* b) {
  auto [first, last] = d.large_free.equal_range(b->size);
  for (auto it = first; it != last; ++it)
    if (it->second == b) {
      d.large_free.erase(it);
      return;
    }
}

// Marks b used for `want` floats; a large enough remainder becomes a free block of its own.
float* take(DeviceCache& d, Block* b, int64_t want, int64_t* capacity) {
  if (b->size - want >= kMinSplitFloats) {
    Block* rest = new Block{b->p + want, b->size - want, true, b, b->next};
    if (b->next) b->next->prev = rest;
    b->next = rest;
    b->size = want;
    d.large[rest->p] = rest;
    d.large_free.emplace(rest->size, rest);
  }
  b->free = false;
  *capacity = b->size;
  count_in(d.usage, b->size);
  return b->p;
}

// Folds `from` (free, following `into` in its segment) into `into`.
void merge(DeviceCache& d, Block* into, Block* from) {
  into->size += from->size;
  into->next = from->next;
  if (from->next) from->next->prev = into;
  d.large.erase(from->p);
  delete from;
}

float* fresh(int64_t floats, int device) {
  try {
    return dev::alloc(floats);
  } catch (const Error& e) {
    if (e.code() != "NCP_ENOMEM") throw;
  }
  trim(device);  // cached blocks of other sizes may add up to what is asked
  return dev::alloc(floats);
}

float* acquire_large(int64_t n, int64_t* capacity, int device) {
  const int64_t want = std::max((n + kLargeAlign - 1) / kLargeAlign * kLargeAlign, kSmallFloats);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    DeviceCache& d = c.devices[device];
    auto it = d.large_free.lower_bound(want);  // the smallest free block that fits
    if (it != d.large_free.end()) {
      Block* b = it->second;
      d.large_free.erase(it);
      return take(d, b, want, capacity);
    }
  }
  int64_t segment = std::max(want, kSegmentFloats);
  float* p = nullptr;
  try {
    p = dev::alloc(segment);
  } catch (const Error& e) {
    if (e.code() != "NCP_ENOMEM") throw;
    segment = want;  // no room for a segment's spare: ask for the request alone, after freeing what is cached
    p = fresh(segment, device);
  }
  std::lock_guard<std::mutex> lock(c.mu);
  DeviceCache& d = c.devices[device];
  d.usage.held += segment * kFloat;
  Block* b = new Block{p, segment, true, nullptr, nullptr};
  d.large[p] = b;
  return take(d, b, want, capacity);
}

}  // namespace

float* acquire(int64_t n, int64_t* capacity) {
  const int device = dev::current_device();
  const int64_t want = size_class(n);
  if (want >= kSmallFloats) return acquire_large(n, capacity, device);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    DeviceCache& d = c.devices[device];
    auto it = d.small_free.lower_bound(want);
    if (it != d.small_free.end() && it->first <= 2 * want) {
      float* p = it->second;
      *capacity = it->first;
      d.small_free.erase(it);
      count_in(d.usage, *capacity);
      return p;
    }
  }
  *capacity = want;
  float* p = fresh(want, device);
  std::lock_guard<std::mutex> lock(c.mu);
  DeviceCache& d = c.devices[device];
  d.usage.held += want * kFloat;
  count_in(d.usage, want);
  return p;
}

void release(float* p, int64_t capacity, int device) {
  if (!p) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  DeviceCache& d = c.devices[device];
  d.usage.in_use -= capacity * kFloat;
  if (capacity < kSmallFloats) {  // small blocks never reach kSmallFloats, large ones never fall below it
    d.small_free.emplace(capacity, p);
    return;
  }
  Block* b = d.large.at(p);
  b->free = true;
  if (b->next && b->next->free) erase_free(d, b->next), merge(d, b, b->next);
  if (b->prev && b->prev->free) {
    Block* prev = b->prev;
    erase_free(d, prev), merge(d, prev, b);
    b = prev;
  }
  d.large_free.emplace(b->size, b);
}

void trim(int device) {
  std::vector<float*> blocks;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    DeviceCache& d = c.devices[device];
    for (auto& [cap, p] : d.small_free) blocks.push_back(p), d.usage.held -= cap * kFloat;
    d.small_free.clear();
    for (auto it = d.large_free.begin(); it != d.large_free.end();) {
      Block* b = it->second;
      if (b->prev || b->next) {  // part of a segment still in use
        ++it;
        continue;
      }
      blocks.push_back(b->p), d.usage.held -= b->size * kFloat;
      d.large.erase(b->p);
      delete b;
      it = d.large_free.erase(it);
    }
  }
  dev::DeviceScope scope(device);
  for (float* p : blocks) dev::free(p);
}

Usage usage(int device) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.devices[device].usage;
}

void reset_peak(int device) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  Usage& u = c.devices[device].usage;
  u.peak_in_use = u.in_use;
}

}  // namespace ncp::model::activation_cache
