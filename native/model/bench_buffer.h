// A device buffer for the op benchmarks (attention_bench, lora_bench): n floats on the current device holding a
// fixed pattern in [-1, 1). The values do not change the time, but uninitialised memory could hold NaNs, which some
// paths take more slowly.
#pragma once
#include <cstdint>
#include <vector>

#include "model/dev_ops.h"

namespace ncp::model {

struct BenchBuffer {
  float* p = nullptr;
  explicit BenchBuffer(int64_t n, uint32_t seed = 12345u) : p(dev::alloc(n)) {
    std::vector<float> host(static_cast<size_t>(n));
    uint32_t x = seed;
    for (float& v : host) x = x * 1664525u + 1013904223u, v = float(x >> 8) / float(1 << 23) - 1.f;
    dev::upload(p, host.data(), n);
  }
  ~BenchBuffer() { dev::free(p); }
  BenchBuffer(const BenchBuffer&) = delete;
  BenchBuffer& operator=(const BenchBuffer&) = delete;
};

}  // namespace ncp::model
