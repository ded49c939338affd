// A caching allocator for activation and gradient buffers, in the spirit of PyTorch's CUDA caching allocator: a
// freed block is kept (by size) and handed to the next request it fits, so steady-state training steps and
// repeated forwards touch no fresh pages. Requests are rounded up to 1/8-octave size classes so that slightly
// different sizes share blocks; a cached block serves a request at most twice smaller than itself.
#pragma once
#include <cstdint>

namespace ncp::model::activation_cache {

// At least n floats, 64-byte aligned; *capacity receives the usable size. Throws std::bad_alloc.
float* acquire(int64_t n, int64_t* capacity);
// Returns a block from acquire (nullptr is ignored) to the cache.
void release(float* p, int64_t capacity);

}  // namespace ncp::model::activation_cache
