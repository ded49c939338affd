// Editing copies of the golden model folders for the error-path tests: read every tensor of a safetensors file as
// raw bytes, change, drop or rename some, write the result elsewhere.
#pragma once
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "model/safetensors.h"
#include "tests/fixtures.h"
#include "tests/harness.h"

namespace ncp::test {

struct StoredTensor {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
};
using StoredTensors = std::map<std::string, StoredTensor>;

inline StoredTensors read_stored(const std::string& path) {
  const auto f = ncp::model::SafetensorsFile::open(path);
  StoredTensors out;
  for (const auto& t : f.tensors()) out[t.name] = {t.dtype, t.shape, std::vector<unsigned char>(t.data, t.data + t.nbytes)};
  return out;
}

inline void write_stored(const std::string& path, const StoredTensors& tensors) {
  std::vector<ncp::model::TensorData> list;
  for (const auto& [name, t] : tensors) list.push_back({name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
  ncp::model::write_safetensors(path, list);
}

// A float32 tensor of the given shape (all zeros): a stand-in with the wrong shape.
inline StoredTensor zeros_f32(std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return {DType::F32, std::move(shape), std::vector<unsigned char>(size_t(n) * 4, 0)};
}

// The same values stored as float16 (round to nearest even).
inline StoredTensor to_f16(const StoredTensor& t) {
  const size_t n = t.bytes.size() / 4;
  StoredTensor h{DType::F16, t.shape, std::vector<unsigned char>(n * 2)};
  std::vector<float> v(n);
  std::memcpy(v.data(), t.bytes.data(), n * 4);
  convert_from_f32(h.bytes.data(), v.data(), DType::F16, int64_t(n));
  return h;
}

// A copy of golden component folder `component` ("tiny-sd15/vae") under dir/<its last name>, with its weights file
// and config edited; returns dir (the model folder to load from).
inline std::string edited_component(const std::string& dir, const std::string& component, const std::string& weights_file,
                                    const std::function<void(StoredTensors&)>& edit_weights,
                                    const std::function<void(std::string&)>& edit_config = nullptr) {
  const std::string src = golden_path(component) + "/";
  const std::string name = std::filesystem::path(component).filename().string();
  StoredTensors t = read_stored(src + weights_file);
  if (edit_weights) edit_weights(t);
  std::filesystem::create_directories(dir + "/" + name);
  write_stored(dir + "/" + name + "/" + weights_file, t);
  std::string config = read_file(src + "config.json");
  if (edit_config) edit_config(config);
  write_file(dir + "/" + name + "/config.json", config);
  return dir;
}

// Golden comparison and error checks shared by the component tests.
inline void expect_close(const std::string& what, const std::vector<float>& ours, const std::vector<float>& ref,
                         double tol) {
  NCP_EXPECT(ours.size() == ref.size(), what << ": " << ours.size() << " values vs " << ref.size());
  if (ours.size() != ref.size()) return;
  const double e = rel_error(ours.data(), ref.data(), int64_t(ref.size()));
  std::printf("    %-48s rel err %.3g\n", what.c_str(), e);
  NCP_EXPECT(e <= tol, what << ": relative error " << e << " > " << tol);
}

// The ncp::Error fn throws, or one with an empty code when it throws none.
template <class F>
ncp::Error error_of(F&& fn) {
  try {
    fn();
  } catch (const ncp::Error& e) {
    return e;
  }
  return ncp::Error("", "no error");
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

inline void copy_file(const std::string& from, const std::string& to) {
  std::filesystem::create_directories(std::filesystem::path(to).parent_path());
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

}  // namespace ncp::test
