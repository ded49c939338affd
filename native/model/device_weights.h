// A WeightMap's tensors copied once to a CUDA device, in one allocation. ParamSource binds a module's weight
// pointers from it exactly as from the host map (same names, same shape checks), so the module's forward and
// backward run on the device without a line of their own. The host map may be dropped afterwards.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/weights.h"

namespace ncp::model {

class DeviceWeights {
 public:
  // Uploads every tensor of `host` to `device` (a CUDA device index). NCP_ENOMEM names the size when the device
  // cannot hold them; NCP_ENOCUDA when the backend is not usable.
  DeviceWeights(const WeightMap& host, int device);
  ~DeviceWeights();
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  // A device pointer; the errors of WeightMap::get.
  const float* get(const std::string& name, const std::vector<int64_t>& shape) const;
  int device() const { return device_; }
  size_t bytes() const { return size_t(floats_) * sizeof(float); }

 private:
  struct Entry {
    std::vector<int64_t> shape;
    const float* data;
  };
  std::map<std::string, Entry> tensors_;
  float* block_ = nullptr;
  int64_t floats_ = 0;
  int device_ = 0;
};

}  // namespace ncp::model
