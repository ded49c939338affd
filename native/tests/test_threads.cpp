// The thread pool: chunks cover the range exactly once, nested loops run inline, and the region flag that gemm
// uses to keep OpenBLAS from starting threads inside ours is set only inside chunks.
#include <atomic>
#include <vector>

#include "core/threads.h"
#include "tests/harness.h"

NCP_TEST("threads: parallel_for covers [0, n) once; nested loops run inline; region flag") {
  NCP_EXPECT(!ncp::in_parallel_region(), "flag set outside any region");
  const int64_t n = 1001;
  std::vector<std::atomic<int>> hits(n);
  std::atomic<int> flagged{0}, chunks{0};
  ncp::parallel_for(n, 1, [&](int64_t b, int64_t e) {
    chunks++;
    if (ncp::in_parallel_region()) flagged++;
    for (int64_t i = b; i < e; ++i) hits[i]++;
    int inner = 0;
    ncp::parallel_for(10, 1, [&](int64_t ib, int64_t ie) { inner += int(ie - ib); });  // inline: no race
    NCP_EXPECT(inner == 10, inner);
  });
  for (int64_t i = 0; i < n; ++i) NCP_EXPECT(hits[i] == 1, "index " << i << " hit " << hits[i].load());
  if (ncp::num_threads() > 1) NCP_EXPECT(flagged == chunks, flagged.load() << " of " << chunks.load());
  NCP_EXPECT(!ncp::in_parallel_region(), "flag left set after the region");
}
