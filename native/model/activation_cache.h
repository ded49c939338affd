// A caching allocator for activation and gradient buffers, in the spirit of PyTorch's CUDA caching allocator: a
// freed block is kept (by size and device) and handed to the next request it fits, so steady-state training
// steps and repeated forwards touch no fresh pages and make no cudaMalloc calls. Requests are rounded up to
// 1/8-octave size classes so that slightly different sizes share blocks; a cached block serves a request at
// most twice smaller than itself.
#pragma once
#include <cstdint>

namespace ncp::model::activation_cache {

// At least n floats on the calling thread's current device (dev_ops.h), 64-byte aligned; *capacity receives
// the usable size. When the device is out of memory, the cached blocks of that device are freed and the
// allocation tried again before NCP_ENOMEM is thrown.
float* acquire(int64_t n, int64_t* capacity);
// Returns a block from acquire (nullptr is ignored) to the cache of the device it came from.
void release(float* p, int64_t capacity, int device);
// Frees every cached block of `device` (to the system or the driver).
void trim(int device);

}  // namespace ncp::model::activation_cache
