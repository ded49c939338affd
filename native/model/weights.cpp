#include "model/weights.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "model/safetensors.h"

namespace ncp::model {

namespace {

// A model's worth of float32 is ~10^6 fresh 4 KiB pages, and on virtual machines their faults cost more than the
// conversion itself. Asking for transparent huge pages before the first touch cuts the faults 512-fold where the
// kernel allows it (THP "madvise" mode): a 1.7 GB fp16 U-Net loaded in 14-26 s instead of 42 s on a 2-core VM.
void allocate(std::vector<float>& v, size_t n) {
  v.reserve(n);
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const auto begin = (uintptr_t(v.data()) + kHuge - 1) & ~(kHuge - 1);
  const auto end = (uintptr_t(v.data()) + n * sizeof(float)) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), size_t(end - begin), MADV_HUGEPAGE);
  v.resize(n);
}

}  // namespace

void check_weight(const std::string& name, const std::vector<int64_t>* stored, const std::vector<int64_t>& want) {
  if (!stored) throw Error("NCP_EMISSING", "weight " + name + " " + shape_str(want) + " is not loaded");
  if (*stored != want)
    throw Error("NCP_ESHAPE", "weight " + name + " is " + shape_str(*stored) + ", the model expects " + shape_str(want));
}

LoadMode model_load_mode() {
  const char* env = std::getenv("NCP_MMAP");
  return env && std::string(env) == "0" ? LoadMode::Float32 : LoadMode::MapMatrices;
}

double parameter_count(const Manifest& manifest) {
  double total = 0;
  for (const auto& p : manifest) total += double(shape_numel(p.shape));
  return total;
}

int64_t MappedTensor::numel() const { return shape_numel(shape); }

cpu::WeightRef WeightMap::get_matrix(const std::string& name, const std::vector<int64_t>& shape) const {
  const auto m = mapped_.find(name);
  if (m != mapped_.end()) {
    check_weight(name, &m->second.shape, shape);
    return m->second.values;
  }
  const auto it = tensors_.find(name);
  check_weight(name, it == tensors_.end() ? nullptr : &it->second.shape, shape);
  return it->second.data.data();
}

const float* WeightMap::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const cpu::WeightRef w = get_matrix(name, shape);
  check(w.dtype == DType::F32, "NCP_EDTYPE",
        "weight " + name + " is held as " + dtype_name(w.dtype) + "; only a Linear or conv weight may be");
  return static_cast<const float*>(w.data);
}

size_t WeightMap::copied_bytes() const {
  size_t n = 0;
  for (const auto& kv : tensors_) n += kv.second.data.size() * sizeof(float);
  return n;
}

size_t WeightMap::bytes() const {
  size_t n = copied_bytes();
  for (const auto& kv : mapped_) n += size_t(kv.second.numel()) * dtype_size(kv.second.values.dtype);
  return n;
}

namespace {
// Whether load_weights keeps t, a matrix of the manifest, in place rather than copying it (LoadMode::MapMatrices).
bool keep_mapped(const TensorInfo& t) {
  if (t.numel() == 0) return false;
  if (t.dtype == DType::F16 || t.dtype == DType::BF16) return true;
  return t.dtype == DType::F32 && uintptr_t(t.data) % alignof(float) == 0;
}
}  // namespace

WeightMap load_weights(const Manifest& manifest, const std::vector<std::string>& files, const std::string& prefix,
                       LoadMode mode) {
  if (files.empty()) throw Error("NCP_EINVAL", "load_weights: no weight files given");
  std::unordered_set<std::string> wanted;
  for (const auto& p : manifest)
    if (!wanted.insert(p.name).second) throw Error("NCP_EINVAL", "load_weights: manifest lists " + p.name + " twice");

  std::vector<SafetensorsFile> opened;
  for (const auto& f : files) opened.push_back(SafetensorsFile::open(f));
  struct Found {
    size_t file;
    const TensorInfo* info;
  };
  std::unordered_map<std::string, Found> available;
  std::vector<std::string> duplicates, extras;
  for (size_t f = 0; f < opened.size(); ++f) {
    for (const auto& t : opened[f].tensors()) {
      if (t.name.compare(0, prefix.size(), prefix) != 0) continue;
      const std::string name = t.name.substr(prefix.size());
      const auto ins = available.emplace(name, Found{f, &t});
      if (!ins.second)
        duplicates.push_back("duplicate: " + name + " in " + files[ins.first->second.file] + " and " + files[f]);
      else if (!wanted.count(name))
        extras.push_back("extra: " + name + " " + shape_str(t.shape));
    }
  }

  // What to convert, per file, in file order.
  std::vector<std::vector<std::pair<const TensorInfo*, const ParamSpec*>>> jobs(opened.size());
  std::vector<std::string> missing, misshaped;
  for (const auto& p : manifest) {
    const auto it = available.find(p.name);
    if (it == available.end()) {
      missing.push_back("missing: " + p.name + " " + shape_str(p.shape));
    } else if (it->second.info->shape != p.shape) {
      misshaped.push_back("shape: " + p.name + " file " + shape_str(it->second.info->shape) + " expected " +
                          shape_str(p.shape));
    } else {
      jobs[it->second.file].push_back({it->second.info, &p});
    }
  }

  if (!missing.empty() || !misshaped.empty() || !extras.empty() || !duplicates.empty()) {
    std::string names;
    for (const auto& f : files) names += (names.empty() ? "" : ", ") + f;
    std::string msg = "weights in " + names + " do not match the model: " + std::to_string(missing.size()) +
                      " missing, " + std::to_string(misshaped.size()) + " with the wrong shape, " +
                      std::to_string(extras.size()) + " extra";
    if (!duplicates.empty()) msg += ", " + std::to_string(duplicates.size()) + " duplicated";
    for (const auto* lines : {&missing, &misshaped, &extras, &duplicates})
      for (const auto& line : *lines) msg += "\n" + line;
    throw Error("NCP_EWEIGHTS", msg);
  }

  WeightMap out;
  for (size_t f = 0; f < opened.size(); ++f) {
    auto& list = jobs[f];
    std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.first->data < b.first->data; });
    auto file = std::make_shared<SafetensorsFile>(std::move(opened[f]));
    bool keep = false;
    for (const auto& job : list) {
      if (mode == LoadMode::MapMatrices && job.second->matrix && keep_mapped(*job.first)) {
        out.put_mapped(job.second->name, MappedTensor{job.second->shape, {job.first->data, job.first->dtype}});
        keep = true;
        continue;
      }
      Tensor32 t;
      t.shape = job.second->shape;
      allocate(t.data, size_t(job.first->numel()));
      file->read_f32_into(*job.first, t.data.data());
      if (mode == LoadMode::Float32) file->release(*job.first);
      out.put(job.second->name, std::move(t));
    }
    if (keep) {
      file->prefault();
      out.keep_open(std::move(file));
    }
  }
  return out;
}

}  // namespace ncp::model
