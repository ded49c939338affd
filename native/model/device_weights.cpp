#include "model/device_weights.h"

#include "core/error.h"
#include "model/dev_ops.h"

namespace ncp::model {

namespace {
int64_t aligned(int64_t n) { return (n + 63) / 64 * 64; }  // 256-byte starts for every tensor
}  // namespace

DeviceWeights::DeviceWeights(const WeightMap& host, int device) : device_(device) {
  check(device >= 0, "NCP_EINVAL", "DeviceWeights: device must be a CUDA device index");
  for (const auto& [name, t] : host.all()) floats_ += aligned(int64_t(t.data.size()));
  dev::DeviceScope scope(device);
  block_ = dev::alloc(floats_ > 0 ? floats_ : 1);
  int64_t at = 0;
  for (const auto& [name, t] : host.all()) {
    dev::upload(block_ + at, t.data.data(), int64_t(t.data.size()));
    tensors_[name] = Entry{t.shape, block_ + at};
    at += aligned(int64_t(t.data.size()));
  }
}

DeviceWeights::~DeviceWeights() {
  dev::DeviceScope scope(device_);
  dev::free(block_);
}

const float* DeviceWeights::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error("NCP_EMISSING", "weight " + name + " " + shape_str(shape) + " is not loaded");
  if (it->second.shape != shape)
    throw Error("NCP_ESHAPE", "weight " + name + " is " + shape_str(it->second.shape) + ", the model expects " +
                                  shape_str(shape));
  return it->second.data;
}

}  // namespace ncp::model
