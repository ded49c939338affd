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

// The precision of the activations blocks keep for backward, on the calling thread: float32 unless a
// TapePrecision scope (the U-Net's, under mixed precision) says bf16.
bool tape_bf16();
class TapePrecision {
 public:
  explicit TapePrecision(bool bf16);
  ~TapePrecision();
  TapePrecision(const TapePrecision&) = delete;
  TapePrecision& operator=(const TapePrecision&) = delete;

 private:
  bool previous_;
};

// An activation a block keeps for its backward: float32, or bf16 when tape_bf16() (half the memory, what PyTorch's
// bf16 autocast keeps). The forward writes the float32 values where out() points (the storage itself, or
// `scratch`, which the caller keeps while its forward still reads them) and then calls keep(), which rounds them
// into the storage; backward reads float32 values back through get().
class KeptActivation {
 public:
  float* out(int64_t n, Buffer& scratch);
  void keep();
  // The kept values as float32: the storage itself, or widened into scratch.
  const float* get(Buffer& scratch) const;
  int64_t size() const { return n_; }
  bool bf16() const { return bf16_; }

 private:
  Buffer storage_;  // float32 [n], or bf16 [n] two to a float slot
  const float* written_ = nullptr;
  int64_t n_ = 0;
  bool bf16_ = false;
};

}  // namespace ncp::model
