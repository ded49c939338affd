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

}  // namespace ncp::model
