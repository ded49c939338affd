// Model weights as float32 tensors keyed by their diffusers state-dict names.
//
// A module first declares what it needs (a manifest of names and shapes); load_weights then reads exactly that
// from safetensors files, converting f16/bf16 to float32 once, and reports every missing, extra or mis-shaped
// tensor in one error. The module binds raw pointers from the resulting map; nothing is copied twice.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ncp::model {

struct ParamSpec {
  std::string name;            // e.g. "down_blocks.0.attentions.0.proj_in.weight"
  std::vector<int64_t> shape;  // as stored in the file
};
using Manifest = std::vector<ParamSpec>;

// The lookup check both weight maps (host WeightMap, DeviceWeights) apply: throws NCP_EMISSING naming the tensor
// when `stored` is null, NCP_ESHAPE naming both shapes when it differs from `want`.
void check_weight(const std::string& name, const std::vector<int64_t>* stored, const std::vector<int64_t>& want);

struct Tensor32 {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

class WeightMap {
 public:
  // Throws ncp::Error("NCP_EMISSING") naming the tensor when absent, ("NCP_ESHAPE") naming both shapes when the
  // stored shape differs (a 1x1 conv weight [o,i,1,1] and a linear weight [o,i] are NOT interchangeable here:
  // the module asks for what the config implies).
  const float* get(const std::string& name, const std::vector<int64_t>& shape) const;
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  void put(const std::string& name, Tensor32 t) { tensors_[name] = std::move(t); }
  const std::map<std::string, Tensor32>& all() const { return tensors_; }
  size_t bytes() const;

 private:
  std::map<std::string, Tensor32> tensors_;
};

// Reads the tensors of `manifest` from the given safetensors files (one file, or the shards of an index) with
// an optional name prefix stripped: with a prefix, only the files' tensors whose names start with it take part
// (the rest are neither loaded nor "extra"). Throws NCP_EWEIGHTS naming the files, with a summary line and one
// line per missing, mis-shaped, extra or duplicated tensor. Each tensor is converted straight from the mapped
// file into its float32 buffer and each file is unmapped when done, so the peak is one float32 copy.
WeightMap load_weights(const Manifest& manifest, const std::vector<std::string>& files,
                       const std::string& prefix = "");

}  // namespace ncp::model
