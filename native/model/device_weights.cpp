#include "model/device_weights.h"

#include "core/dtype.h"
#include "core/error.h"
#include "model/dev_ops.h"

namespace ncp::model {

namespace {
int64_t aligned(int64_t n) { return (n + 63) / 64 * 64; }  // 256-byte starts for every tensor
}  // namespace

DeviceWeights::DeviceWeights(const WeightMap& host, int device, bool bf16_matrices)
    : device_(device) {
  check(device >= 0, "NCP_EINVAL", "DeviceWeights: device must be a CUDA device index");
  // Float slots each tensor takes: a bf16 tensor of n values fills (n + 1) / 2 of them.
  auto as_bf16 = [&](const Tensor32& t) { return bf16_matrices && t.shape.size() >= 2; };
  auto slots = [&](const Tensor32& t) {
    const int64_t n = int64_t(t.data.size());
    return aligned(as_bf16(t) ? (n + 1) / 2 : n);
  };
  for (const auto& [name, t] : host.all()) floats_ += slots(t);
  dev::DeviceScope scope(device);
  block_ = dev::alloc(floats_ > 0 ? floats_ : 1);
  int64_t at = 0;
  std::vector<uint16_t> half;
  for (const auto& [name, t] : host.all()) {
    const int64_t n = int64_t(t.data.size());
    if (as_bf16(t)) {
      half.resize(size_t(n + 1));
      half[size_t(n)] = 0;
      convert_from_f32(half.data(), t.data.data(), DType::BF16, n);
      dev::upload(block_ + at, reinterpret_cast<const float*>(half.data()), (n + 1) / 2);
    } else {
      dev::upload(block_ + at, t.data.data(), n);
    }
    tensors_[name] = Entry{t.shape, block_ + at, as_bf16(t)};
    at += slots(t);
  }
}

bool DeviceWeights::is_bf16(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it != tensors_.end() && it->second.bf16;
}

DeviceWeights::~DeviceWeights() {
  dev::DeviceScope scope(device_);
  dev::free(block_);
}

const float* DeviceWeights::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const auto it = tensors_.find(name);
  check_weight(name, it == tensors_.end() ? nullptr : &it->second.shape, shape);
  return it->second.data;
}

}  // namespace ncp::model
