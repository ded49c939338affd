// safetensors files (the format of huggingface/safetensors): an 8-byte little-endian header length N, N bytes of
// JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {string: string}}, then the
// data section the offsets index into.
//
// Reading maps the file read-only and checks every header field against the file before any pointer is made,
// since model files come from elsewhere: a corrupt file is an NCP_EFORMAT error naming the file and the field,
// never a read out of bounds. Writing is atomic (temp file, fsync, rename), so a crash never leaves a half file
// under the final name.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"

namespace ncp::model {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;  // inside the mapping; generally unaligned
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Throws NCP_EIO (cannot open or map: names the path and the system's reason), NCP_EFORMAT (corrupt: names the
  // file and what is wrong), NCP_EDTYPE (a dtype this engine does not read).
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data-section order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;
  // Throws NCP_EMISSING naming the tensor and the file.
  const TensorInfo& get(const std::string& name) const;

  // The tensor converted to float32 (F32/F16/BF16, and F64/I64/I32 for inputs such as int64 timesteps).
  std::vector<float> read_f32(const std::string& name) const;
  // As above; throws NCP_ESHAPE naming both shapes unless the stored shape is `shape`.
  std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& shape) const;
  // Converts t (one of this file's tensors) into dst[0, numel) straight from the mapping, in parallel.
  void read_f32_into(const TensorInfo& t, float* dst) const;
  // Lets the kernel drop t's mapped pages from this process (they refault from the page cache if read again),
  // so loading a model does not keep the whole file resident next to its float32 copy.
  void release(const TensorInfo& t) const;
  // Faults the whole mapping in now (reading the file where it is not cached), for tensors that will be used in
  // place: the load then pays its I/O, not the first forward pass. The advice turns to random access.
  void prefault() const;
  // Unmaps the file; the tensors' data pointers are invalid afterwards.
  void close();

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

struct TensorData {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // nbytes of little-endian values, row-major
  size_t nbytes = 0;
};

// Writes a safetensors file: header keys sorted ("__metadata__" first, omitted when empty), header padded with
// spaces to a multiple of 8 bytes, data laid out widest dtype first so every tensor is naturally aligned.
// Written to path + ".tmp-<pid>", fsynced and renamed over path. Throws NCP_ESHAPE when a tensor's byte count
// does not match its shape, NCP_EINVAL for a duplicate or reserved name, NCP_EIO naming the path on I/O errors.
void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace ncp::model
