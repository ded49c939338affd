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
  // Uploads every tensor of `host` (float32 copies and mapped F32/F16/BF16 matrices, widened on the way) to
  // `device` (a CUDA device index). With bf16_matrices, every tensor of two or
  // more dimensions (the Linear and conv weights: all but a sliver of the bytes) is stored as bf16, rounded to
  // nearest even: half the memory, and the GEMMs run on bf16 tensor cores with float accumulation. Biases and
  // norm parameters stay float32. NCP_ENOMEM names the size when the device cannot hold them; NCP_ENOCUDA when
  // the backend is not usable.
  DeviceWeights(const WeightMap& host, int device, bool bf16_matrices = false);
  ~DeviceWeights();
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  // A device pointer; the errors of WeightMap::get (NCP_EDTYPE for a bf16 matrix).
  const float* get(const std::string& name, const std::vector<int64_t>& shape) const;
  // A Linear or conv weight: float32, or bf16 with bf16_matrices.
  cpu::WeightRef get_matrix(const std::string& name, const std::vector<int64_t>& shape) const;
  int device() const { return device_; }
  size_t bytes() const { return size_t(floats_) * sizeof(float); }

 private:
  struct Entry {
    std::vector<int64_t> shape;
    const float* data;
    bool bf16;
  };
  std::map<std::string, Entry> tensors_;
  float* block_ = nullptr;
  int64_t floats_ = 0;
  int device_ = 0;
};

}  // namespace ncp::model
