#include "model/device_weights.h"

#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "model/dev_ops.h"

namespace ncp::model {

namespace {
int64_t aligned(int64_t n) { return (n + 63) / 64 * 64; }  // 256-byte starts for every tensor
}  // namespace

DeviceWeights::DeviceWeights(const WeightMap& host, int device, DType matrices)
    : device_(device) {
  check(device >= 0, "NCP_EINVAL", "DeviceWeights: device must be a CUDA device index");
  check(matrices == DType::F32 || matrices == DType::BF16 || matrices == DType::F16, "NCP_EDTYPE",
        std::string("DeviceWeights: weight matrices can be held as F32, BF16 or F16, not ") + dtype_name(matrices));
  // Every host tensor, copied or mapped, with a way to get its values as float32 (mapped halves are widened
  // one tensor at a time, so the host never holds a float32 copy of the model).
  struct Source {
    const std::string* name;
    const std::vector<int64_t>* shape;
    int64_t n;
    const Tensor32* copy;
    const MappedTensor* mapped;
  };
  std::vector<Source> sources;
  for (const auto& [name, t] : host.all()) sources.push_back({&name, &t.shape, int64_t(t.data.size()), &t, nullptr});
  for (const auto& [name, t] : host.mapped()) sources.push_back({&name, &t.shape, t.numel(), nullptr, &t});
  // Float slots each tensor takes: a half tensor of n values fills (n + 1) / 2 of them.
  auto as_half = [&](const Source& t) { return matrices != DType::F32 && t.shape->size() >= 2; };
  auto slots = [&](const Source& t) { return aligned(as_half(t) ? (t.n + 1) / 2 : t.n); };
  for (const auto& t : sources) floats_ += slots(t);
  dev::DeviceScope scope(device);
  block_ = dev::alloc(floats_ > 0 ? floats_ : 1);
  int64_t at = 0;
  std::vector<uint16_t> half;
  std::vector<float> widened;
  for (const auto& t : sources) {
    const float* values = t.copy ? t.copy->data.data() : nullptr;
    if (t.mapped) {
      widened.resize(size_t(t.n));
      convert_to_f32(widened.data(), t.mapped->values.data, t.mapped->values.dtype, t.n);
      values = widened.data();
    }
    if (as_half(t)) {
      half.resize(size_t(t.n + 1));
      half[size_t(t.n)] = 0;
      if (matrices == DType::F16)  // fp16 tops out at 65504: a larger weight would turn into infinity
        for (int64_t i = 0; i < t.n; ++i)
          check(std::fabs(values[i]) <= 65504.0f, "NCP_EDTYPE",
                "weight " + *t.name + " holds " + std::to_string(values[i]) +
                    ", beyond fp16's range: use --mixed-precision bf16 for this model");
      convert_from_f32(half.data(), values, matrices, t.n);
      dev::upload(block_ + at, reinterpret_cast<const float*>(half.data()), (t.n + 1) / 2);
    } else {
      dev::upload(block_ + at, values, t.n);
    }
    tensors_[*t.name] = Entry{*t.shape, block_ + at, as_half(t) ? matrices : DType::F32};
    at += slots(t);
  }
}

cpu::WeightRef DeviceWeights::get_matrix(const std::string& name, const std::vector<int64_t>& shape) const {
  const auto it = tensors_.find(name);
  check_weight(name, it == tensors_.end() ? nullptr : &it->second.shape, shape);
  return {it->second.data, it->second.dtype};
}

DeviceWeights::~DeviceWeights() {
  dev::DeviceScope scope(device_);
  dev::free(block_);
}

const float* DeviceWeights::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const cpu::WeightRef w = get_matrix(name, shape);
  check(w.dtype == DType::F32, "NCP_EDTYPE",
        "weight " + name + " is held as " + dtype_name(w.dtype) + "; only a Linear or conv weight may be");
  return static_cast<const float*>(w.data);
}

}  // namespace ncp::model
