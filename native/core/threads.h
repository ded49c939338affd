// A small persistent thread pool. The CPU ops split their outer loops over it; the machines we target have few
// cores, so one pool shared by every op (and by BLAS, which we pin to the same count) avoids oversubscription.
#pragma once
#include <cstdint>
#include <functional>

namespace ncp {

// Number of worker threads (including the caller). Defaults to the hardware concurrency, or NCP_NUM_THREADS.
int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n). Chunks are contiguous and at least `grain` long, so
// small loops run inline on the caller. Nested calls run inline (no deadlock, no oversubscription).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// True on a thread that is running a chunk of a parallel_for (where nested parallelism must not start threads).
bool in_parallel_region();

}  // namespace ncp
