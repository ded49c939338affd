// An activation buffer on the device that was current when it was allocated (dev_ops.h): host memory on the
// CPU, device memory under a CUDA DeviceScope. Uninitialised: every op fully writes what it produces, so
// zero-filling would be a wasted pass over memory. ensure(n) keeps the allocation when it is already large
// enough and on the current device; zeros(n) is ensure + fill, for gradient buffers that backward passes add into.
//
// Storage comes from a process-wide cache (activation_cache.h) and goes back to it, not to the system or the
// driver, when the Buffer dies or grows: a training step allocates the same sizes every time, fresh pages are
// expensive to fault in (on the VMs we measure, first-touching memory runs at a fraction of memset speed), and
// cudaMalloc synchronises the device.
#pragma once
#include <cstdint>

namespace ncp::model {

class Buffer {
 public:
  Buffer() = default;
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* ensure(int64_t n);
  float* zeros(int64_t n);
  float* data() { return data_; }
  const float* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  float* data_ = nullptr;
  int64_t size_ = 0, capacity_ = 0;
  int device_ = -1;
};

}  // namespace ncp::model
