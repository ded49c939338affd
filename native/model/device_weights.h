// A WeightMap's tensors copied once to a CUDA device, in one allocation. ParamSource binds a module's weight
// pointers from it exactly as from the host map (same names, same shape checks), so the module's forward and
// backward run on the device without a line of their own. The host map may be dropped afterwards.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/weights.h"

namespace ncp::model {

class DeviceWeights {
 public:
  // Uploads every tensor of `host` (float32 copies and mapped F32/F16/BF16 matrices, widened on the way) to
  // `device` (a CUDA device index). With matrices BF16 or F16, every tensor of two or more dimensions (the Linear
  // and conv weights: all but a sliver of the bytes) is stored in that type, rounded to nearest even: half the
  // memory, and the GEMMs run on half tensor cores with float accumulation. Biases and norm parameters stay
  // float32. NCP_ENOMEM names the size when the device cannot hold them; NCP_ENOCUDA when the backend is not
  // usable; NCP_EDTYPE for another type, or an fp16 weight beyond fp16's range (65504), naming the tensor.
  DeviceWeights(const WeightMap& host, int device, DType matrices = DType::F32);
  ~DeviceWeights();
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  // A device pointer; the errors of WeightMap::get (NCP_EDTYPE for a half matrix).
  const float* get(const std::string& name, const std::vector<int64_t>& shape) const;
  // A Linear or conv weight: float32, or the half type `matrices` named.
  cpu::WeightRef get_matrix(const std::string& name, const std::vector<int64_t>& shape) const;
  int device() const { return device_; }
  size_t bytes() const { return size_t(floats_) * sizeof(float); }

 private:
  struct Entry {
    std::vector<int64_t> shape;
    const float* data;
    DType dtype;  // F32, or the half type of the matrices
  };
  std::map<std::string, Entry> tensors_;
  float* block_ = nullptr;
  int64_t floats_ = 0;
  int device_ = 0;
};

}  // namespace ncp::model
