// Model weights keyed by their diffusers state-dict names.
//
// A module first declares what it needs (a manifest of names and shapes); load_weights then reads exactly that
// from safetensors files and reports every missing, extra or mis-shaped tensor in one error. The module binds
// raw pointers from the resulting map; nothing is copied twice.
//
// Tensors are float32 copies, or (LoadMode::MapMatrices) weight matrices used in place from the mapped file in
// their stored F32/F16/BF16: the GEMM packers widen half values as they go (cpu::WeightRef). A 1.7 GB fp16
// U-Net then loads in the time it takes to read the file, with no float32 copy at all: on a virtual machine
// fresh memory costs more to fault in than the conversion itself (3.4 GB of float32 took 9-15 s here).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu/ops.h"

namespace ncp::model {

struct ParamSpec {
  std::string name;            // e.g. "down_blocks.0.attentions.0.proj_in.weight"
  std::vector<int64_t> shape;  // as stored in the file
  bool matrix = false;         // a Linear or conv weight, which the module can read in F16/BF16 (take_matrix)
};
using Manifest = std::vector<ParamSpec>;

// Values a manifest declares (the model's parameter count, however its weights are held).
double parameter_count(const Manifest& manifest);

// The lookup check both weight maps (host WeightMap, DeviceWeights) apply: throws NCP_EMISSING naming the tensor
// when `stored` is null, NCP_ESHAPE naming both shapes when it differs from `want`.
void check_weight(const std::string& name, const std::vector<int64_t>* stored, const std::vector<int64_t>& want);

struct Tensor32 {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

class SafetensorsFile;

// A tensor used in place inside a mapped safetensors file, in its stored dtype (F32, F16 or BF16).
struct MappedTensor {
  std::vector<int64_t> shape;
  cpu::WeightRef values;  // points into the mapping, which the WeightMap holding this keeps open
  int64_t numel() const;
};

class WeightMap {
 public:
  // A float32 tensor (a copy, or F32 used in place). Throws ncp::Error("NCP_EMISSING") naming the tensor when
  // absent, ("NCP_ESHAPE") naming both shapes when the stored shape differs (a 1x1 conv weight [o,i,1,1] and a
  // linear weight [o,i] are NOT interchangeable here: the module asks for what the config implies), and
  // ("NCP_EDTYPE") when it is a matrix kept in F16/BF16, which only get_matrix serves.
  const float* get(const std::string& name, const std::vector<int64_t>& shape) const;
  // A Linear or conv weight in whatever form it is held; the errors of get but NCP_EDTYPE.
  cpu::WeightRef get_matrix(const std::string& name, const std::vector<int64_t>& shape) const;
  bool has(const std::string& name) const { return tensors_.count(name) != 0 || mapped_.count(name) != 0; }
  void put(const std::string& name, Tensor32 t) { tensors_[name] = std::move(t); }
  // Keeps `file` open for as long as this map (or a copy of it) lives; its tensors may then be put_mapped.
  void keep_open(std::shared_ptr<const SafetensorsFile> file) { files_.push_back(std::move(file)); }
  void put_mapped(const std::string& name, MappedTensor t) { mapped_[name] = std::move(t); }
  const std::map<std::string, Tensor32>& all() const { return tensors_; }  // the float32 copies
  const std::map<std::string, MappedTensor>& mapped() const { return mapped_; }
  // Bytes of weight data: float32 copies plus mapped tensors at their stored size.
  size_t bytes() const;
  // Float32 copies only: the memory this map allocated.
  size_t copied_bytes() const;

 private:
  std::map<std::string, Tensor32> tensors_;
  std::map<std::string, MappedTensor> mapped_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
};

enum class LoadMode {
  Float32,      // every tensor converted into a float32 copy, each file unmapped when done
  MapMatrices,  // the manifest's matrices stored as F16/BF16 (or 4-byte aligned F32) stay in the mapped file
};

// How the model loaders (U-Net, text encoders) read weights: MapMatrices, or Float32 when the environment has
// NCP_MMAP=0. A mapped file must not be rewritten in place while the model is in use (a truncating copy over it
// makes the next read of a dropped page a SIGBUS, as with any mmap); replacing it by rename, as every safetensors
// writer does, is safe. NCP_MMAP=0 is for file systems where that cannot be promised.
LoadMode model_load_mode();

// Reads the tensors of `manifest` from the given safetensors files (one file, or the shards of an index) with
// an optional name prefix stripped: with a prefix, only the files' tensors whose names start with it take part
// (the rest are neither loaded nor "extra"). Throws NCP_EWEIGHTS naming the files, with a summary line and one
// line per missing, mis-shaped, extra or duplicated tensor. Float32: each tensor is converted straight from the
// mapped file into its float32 buffer and each file is unmapped when done, so the peak is one float32 copy.
// MapMatrices: the files holding kept matrices stay mapped (faulted in before returning); only the small
// tensors (biases, norms) are converted.
WeightMap load_weights(const Manifest& manifest, const std::vector<std::string>& files,
                       const std::string& prefix = "", LoadMode mode = LoadMode::Float32);

}  // namespace ncp::model
