// The activation cache's byte counts, which the step benchmark reports as the memory a training step's
// activations need: in use follows acquire and release exactly, the peak holds the high-water mark until reset,
// and held counts the cached free blocks until trim returns them.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"
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

namespace {
using ncp::model::KeptActivation;
using ncp::model::TapePrecision;

// KeptActivation: in float32 the forward writes straight into the storage (no copy) and backward reads it back
// as written; in bf16 (a TapePrecision scope) the storage is half the size and reads back each value rounded to
// nearest-even bf16.
NCP_TEST("kept activation: float32 in place, bf16 at half the memory with values rounded to bf16") {
  const int64_t n = 1000003;  // odd: the last bf16 value shares a float slot with nothing
  std::vector<float> values(static_cast<size_t>(n));
  ncp::test::fill_uniform(values, 5, -3.0, 3.0);
  values[0] = 1.0f + 1.0f / 256.0f;  // halfway between two bf16 values: rounds to even (1.0)
  values[1] = 1.0f + 3.0f / 256.0f;  // halfway: rounds to even (1 + 4/256)
  NCP_EXPECT(!ncp::model::tape_bf16(), "the tape is float32 outside a scope");
  {
    KeptActivation kept;
    Buffer scratch, read;
    float* out = kept.out(n, scratch);
    std::copy(values.begin(), values.end(), out);
    kept.keep();
    NCP_EXPECT(!kept.bf16() && scratch.data() == nullptr, "float32 wrote into scratch");
    const float* back = kept.get(read);
    NCP_EXPECT(back == out && read.data() == nullptr, "float32 read back through a copy");
  }
  const int64_t before = cache::usage(kCpu).in_use;
  {
    TapePrecision bf16(true);
    NCP_EXPECT(ncp::model::tape_bf16(), "the scope sets bf16");
    KeptActivation kept;
    Buffer scratch, read;
    float* out = kept.out(n, scratch);
    NCP_EXPECT(out == scratch.data(), "bf16: the forward writes float32 values into the caller's scratch");
    std::copy(values.begin(), values.end(), out);
    const int64_t with_scratch = cache::usage(kCpu).in_use;
    kept.keep();
    const int64_t stored = cache::usage(kCpu).in_use - with_scratch;
    NCP_EXPECT(stored >= 2 * n && stored <= 4 * n, "bf16 storage of " << n << " values took " << stored << " bytes");
    const float* back = kept.get(read);
    NCP_EXPECT(back == read.data(), "bf16 read back in place of widening");
    NCP_EXPECT(back[0] == 1.0f && back[1] == 1.0f + 4.0f / 256.0f, "ties: " << back[0] << " " << back[1]);
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float v = values[size_t(i)], b = back[i];
      if (std::fabs(b - v) > std::ldexp(std::fabs(v), -8) || ncp::f32_to_bf16(v) != ncp::f32_to_bf16(b)) ++wrong;
    }
    NCP_EXPECT(wrong == 0, wrong << " values not rounded to their nearest bf16");
  }
  NCP_EXPECT(!ncp::model::tape_bf16(), "the scope restores float32");
  NCP_EXPECT(cache::usage(kCpu).in_use == before, "buffers not returned to the cache");
}
}  // namespace
