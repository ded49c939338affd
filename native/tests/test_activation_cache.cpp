// The activation cache's byte counts, which the step benchmark reports as the memory a training step's
// activations need: in use follows acquire and release exactly, the peak holds the high-water mark until reset,
// and held counts the cached free blocks until trim returns them.
#include "model/activation_cache.h"
#include "model/buffer.h"
#include "tests/harness.h"

namespace {
using ncp::model::Buffer;
namespace cache = ncp::model::activation_cache;
constexpr int kCpu = -1;  // the device id of host memory (dev_ops.h)

NCP_TEST("activation_cache: in use, peak and held bytes follow acquire, release, reset_peak and trim") {
  const cache::Usage start = cache::usage(kCpu);
  NCP_EXPECT(start.in_use >= 0 && start.held >= start.in_use && start.peak_in_use >= start.in_use);
  const int64_t n = 3 * 1024 * 1024 + 17;  // floats; the cache may serve a cached block up to twice as large
  int64_t in_use_with_both = 0;
  {
    Buffer a, b;
    a.ensure(n);
    const cache::Usage one = cache::usage(kCpu);
    const int64_t got = one.in_use - start.in_use;
    NCP_EXPECT(got >= n * 4 && got <= 2 * n * 4 + 4096, "in use grew by " << got << " bytes for " << n << " floats");
    b.ensure(n);
    const cache::Usage two = cache::usage(kCpu);
    in_use_with_both = two.in_use;
    NCP_EXPECT(two.in_use - one.in_use >= n * 4, "the second buffer adds " << two.in_use - one.in_use);
    NCP_EXPECT(two.peak_in_use >= two.in_use, "peak " << two.peak_in_use << " below in use " << two.in_use);
    NCP_EXPECT(two.held >= two.in_use, "held " << two.held << " below in use " << two.in_use);
  }
  const cache::Usage after = cache::usage(kCpu);
  NCP_EXPECT(after.in_use == start.in_use, "released buffers leave " << after.in_use - start.in_use << " bytes in use");
  NCP_EXPECT(after.peak_in_use >= in_use_with_both, "the peak forgot the two buffers: " << after.peak_in_use);
  NCP_EXPECT(after.held >= in_use_with_both, "the freed blocks stay cached: held " << after.held);
  cache::reset_peak(kCpu);
  NCP_EXPECT(cache::usage(kCpu).peak_in_use == after.in_use, "reset_peak leaves " << cache::usage(kCpu).peak_in_use);
  cache::trim(kCpu);
  const cache::Usage trimmed = cache::usage(kCpu);
  NCP_EXPECT(trimmed.held == trimmed.in_use, "after trim held " << trimmed.held << " vs in use " << trimmed.in_use);
}

}  // namespace
