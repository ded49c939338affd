#include "model/buffer.h"

#include "model/activation_cache.h"
#include "model/dev_ops.h"

namespace ncp::model {

Buffer::~Buffer() { activation_cache::release(data_, capacity_, device_); }

Buffer::Buffer(Buffer&& o) noexcept : data_(o.data_), size_(o.size_), capacity_(o.capacity_), device_(o.device_) {
  o.data_ = nullptr, o.size_ = o.capacity_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    activation_cache::release(data_, capacity_, device_);
    data_ = o.data_, size_ = o.size_, capacity_ = o.capacity_, device_ = o.device_;
    o.data_ = nullptr, o.size_ = o.capacity_ = 0;
  }
  return *this;
}

float* Buffer::ensure(int64_t n) {
  const int device = dev::current_device();
  if (n > capacity_ || device != device_) {
    activation_cache::release(data_, capacity_, device_);
    data_ = nullptr, capacity_ = 0;
    data_ = activation_cache::acquire(n, &capacity_);
    device_ = device;
  }
  size_ = n;
  return data_;
}

float* Buffer::zeros(int64_t n) {
  float* p = ensure(n);
  dev::zero(p, n);
  return p;
}

namespace {
thread_local bool g_tape_bf16 = false;
}

bool tape_bf16() { return g_tape_bf16; }
TapePrecision::TapePrecision(bool bf16) : previous_(g_tape_bf16) { g_tape_bf16 = bf16; }
TapePrecision::~TapePrecision() { g_tape_bf16 = previous_; }

float* KeptActivation::out(int64_t n, Buffer& scratch) {
  bf16_ = tape_bf16(), n_ = n;
  float* p = bf16_ ? scratch.ensure(n) : storage_.ensure(n);
  written_ = p;
  return p;
}

void KeptActivation::keep() {
  if (!bf16_) return;
  dev::round_to_bf16(reinterpret_cast<uint16_t*>(storage_.ensure((n_ + 1) / 2)), written_, n_);
}

const float* KeptActivation::get(Buffer& scratch) const {
  if (!bf16_) return storage_.data();
  float* p = scratch.ensure(n_);
  dev::widen_bf16(p, reinterpret_cast<const uint16_t*>(storage_.data()), n_);
  return p;
}

}  // namespace ncp::model
