// A caching allocator for activation and gradient buffers, in the spirit of PyTorch's CUDA caching allocator: a
// freed block is kept (per device) and handed to a later request, so steady-state training steps and repeated
// forwards touch no fresh pages and make no cudaMalloc calls. Small requests (under 1 MiB) are rounded up to
// 1/8-octave size classes and a cached block serves a request at most twice smaller than itself. Large ones are
// carved best-fit out of segments of at least 64 MiB, split when the rest is worth keeping and merged with free
// neighbours when released: a step frees and asks for blocks of many sizes, and blocks that only served their
// own size would leave much of what the cache holds idle.
#pragma once
#include <cstdint>

namespace ncp::model::activation_cache {

// At least n floats on the calling thread's current device (dev_ops.h), 64-byte aligned; *capacity receives
// the usable size. When the device is out of memory, the cached blocks of that device are freed and the
// allocation tried again before NCP_ENOMEM is thrown.
float* acquire(int64_t n, int64_t* capacity);
// Returns a block from acquire (nullptr is ignored) to the cache of the device it came from.
void release(float* p, int64_t capacity, int device);
// Frees every cached block of `device` (to the system or the driver), and every segment with nothing in use.
void trim(int device);

// What the cache hands out on one device, in bytes: in_use (acquired, not yet released), held (in use plus cached
// free blocks and the free parts of segments: what the cache has taken from the system or the driver) and
// peak_in_use since reset_peak. The peak is the memory the activations, tapes and scratch of a pass really
// needed; held adds the cache's slack.
struct Usage {
  int64_t in_use = 0, held = 0, peak_in_use = 0;
};
Usage usage(int device);
void reset_peak(int device);

}  // namespace ncp::model::activation_cache
