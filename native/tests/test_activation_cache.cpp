// The activation cache's byte counts, which the step benchmark reports as the memory a training step's
// activations need: in use follows acquire and release exactly, the peak holds the high-water mark until reset,
// and held counts the cached free blocks until trim returns them.
#include <algorithm>
#include <cstdint>
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

// Large blocks come out of shared segments: a freed one serves smaller requests by splitting, and freed
// neighbours merge again, so the cache takes no more memory from the system for a request that its free space
// covers.
NCP_TEST("activation_cache: large blocks are split out of segments and merged again when released") {
  cache::trim(kCpu);
  const cache::Usage start = cache::usage(kCpu);
  const int64_t mib = 256 * 1024;  // floats
  {
    Buffer a, b, c;
    a.ensure(8 * mib), b.ensure(8 * mib), c.ensure(8 * mib);
    const int64_t segment_held = cache::usage(kCpu).held - start.held;
    NCP_EXPECT(segment_held <= 64 * 4 * mib, "three 32 MiB buffers took " << segment_held << " bytes, not one segment");
    const float* gap = b.data();
    b = Buffer();
    Buffer d, e;
    d.ensure(3 * mib), e.ensure(3 * mib);  // both fit in b's place
    NCP_EXPECT(cache::usage(kCpu).held - start.held == segment_held, "the freed block did not serve smaller ones");
    NCP_EXPECT(d.data() >= gap && d.data() + 3 * mib <= gap + 8 * mib && e.data() >= gap &&
                   e.data() + 3 * mib <= gap + 8 * mib,
               "the smaller buffers were not carved out of the freed one");
  }
  {
    Buffer whole;  // everything above was released and merged: the whole segment serves one request again
    whole.ensure(60 * mib);
    NCP_EXPECT(cache::usage(kCpu).held - start.held <= 64 * 4 * mib,
               "a 240 MiB request after the release grew held to " << cache::usage(kCpu).held - start.held);
  }
  cache::trim(kCpu);
  NCP_EXPECT(cache::usage(kCpu).held == start.held, "trim left " << cache::usage(kCpu).held - start.held << " bytes");
}

// Many acquire/release calls of mixed sizes, small and large: live blocks never overlap, each is as large as
// asked and 64-byte aligned, what is in use covers them, and every byte comes back.
NCP_TEST("activation_cache: mixed small and large blocks never overlap and all come back") {
  const int64_t start = cache::usage(kCpu).in_use;
  std::vector<Buffer> live(24);
  std::vector<int64_t> sizes(live.size(), 0);
  uint64_t state = 12345;
  auto next = [&]() { return int64_t((state = state * 6364136223846793005ull + 1442695040888963407ull) >> 33); };
  int64_t overlaps = 0, misaligned = 0, short_counted = 0;
  for (int step = 0; step < 2000; ++step) {
    const size_t i = size_t(next() % int64_t(live.size()));
    live[i] = Buffer(), sizes[i] = 0;
    if (next() % 4 == 0) continue;  // sometimes only a release
    const int64_t n = next() % 3 == 0 ? next() % 4096 + 1 : next() % (6 * 256 * 1024) + 1;
    const float* p = live[i].ensure(n);
    sizes[i] = n;
    if (reinterpret_cast<uintptr_t>(p) % 64 != 0) ++misaligned;
    int64_t bytes = 0;
    for (size_t j = 0; j < live.size(); ++j) {
      if (!sizes[j]) continue;
      bytes += sizes[j] * 4;
      const float* q = live[j].data();
      if (j != i && p < q + sizes[j] && q < p + n) ++overlaps;
    }
    if (cache::usage(kCpu).in_use - start < bytes) ++short_counted;
  }
  live.clear();
  NCP_EXPECT(overlaps == 0, overlaps << " times a new block overlapped a live one");
  NCP_EXPECT(misaligned == 0, misaligned << " blocks not 64-byte aligned");
  NCP_EXPECT(short_counted == 0, short_counted << " times in use counted less than the live blocks");
  NCP_EXPECT(cache::usage(kCpu).in_use == start, "in use " << cache::usage(kCpu).in_use - start << " bytes off");
  cache::trim(kCpu);
  NCP_EXPECT(cache::usage(kCpu).held == cache::usage(kCpu).in_use, "trim left free memory held");
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
