#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "model/json.h"

namespace ncp::model {

namespace {

// The reference implementation refuses larger headers; so do we, before parsing anything that big.
constexpr uint64_t kMaxHeader = 100u << 20;

[[noreturn]] void corrupt(const std::string& path, const std::string& what) {
  throw Error("NCP_EFORMAT", path + ": " + what);
}

std::string sys_error() { return std::strerror(errno); }

// numel of shape, or -1 when a dimension is negative or the product overflows.
int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (const int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return -1;
  return n;
}

std::vector<int64_t> read_shape(const std::string& path, const std::string& name, const json::Value* v) {
  const std::string where = "tensor " + json::quote(name) + ": ";
  if (!v) corrupt(path, where + "no \"shape\"");
  if (!v->is_array()) corrupt(path, where + "shape " + json::to_string(*v) + " is not an array");
  std::vector<int64_t> shape;
  for (const auto& d : v->items()) {
    if (!d.is_integer() || d.as_int() < 0)
      corrupt(path, where + "shape " + json::to_string(*v) + " has a dimension that is not a non-negative integer");
    shape.push_back(d.as_int());
  }
  return shape;
}

TensorInfo read_entry(const std::string& path, const std::string& name, const json::Value& entry,
                      const unsigned char* data, uint64_t data_size) {
  const std::string where = "tensor " + json::quote(name) + ": ";
  if (!entry.is_object()) corrupt(path, where + "entry is not an object");
  TensorInfo t;
  t.name = name;

  const json::Value* dtype = entry.find("dtype");
  if (!dtype || !dtype->is_string()) corrupt(path, where + "no \"dtype\" string");
  if (!dtype_from_name(dtype->as_string(), &t.dtype))
    throw Error("NCP_EDTYPE", path + ": " + where + "unsupported dtype " + json::quote(dtype->as_string()) +
                                  " (supported: F32, F16, BF16, F64, I64, I32)");

  t.shape = read_shape(path, name, entry.find("shape"));

  const json::Value* offsets = entry.find("data_offsets");
  if (!offsets) corrupt(path, where + "no \"data_offsets\"");
  const auto& o = offsets->items();
  if (!offsets->is_array() || o.size() != 2 || !o[0].is_integer() || !o[1].is_integer() || o[0].as_int() < 0 ||
      o[1].as_int() < 0)
    corrupt(path, where + "data_offsets " + json::to_string(*offsets) + " is not [begin, end] in bytes");
  const auto begin = uint64_t(o[0].as_int()), end = uint64_t(o[1].as_int());
  if (end < begin) corrupt(path, where + "data_offsets " + json::to_string(*offsets) + " end before begin");
  if (end > data_size)
    corrupt(path, where + "data_offsets " + json::to_string(*offsets) + " exceed the data section of " +
                      std::to_string(data_size) + " bytes (truncated file?)");

  const int64_t numel = checked_numel(t.shape);
  uint64_t want = 0;
  const bool overflow = numel < 0 || __builtin_mul_overflow(uint64_t(numel), uint64_t(dtype_size(t.dtype)), &want);
  if (overflow || want != end - begin)
    corrupt(path, where + "shape " + shape_str(t.shape) + " of " + dtype_name(t.dtype) + " needs " +
                      (overflow ? std::string("too many") : std::to_string(want)) + " bytes but data_offsets " +
                      json::to_string(*offsets) + " span " + std::to_string(end - begin));
  t.data = data + begin;
  t.nbytes = size_t(end - begin);
  return t;
}

// False with errno set on failure; retries short writes and EINTR.
bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("NCP_EIO", "cannot open " + path + ": " + sys_error());
  struct stat st;
  const bool stat_ok = ::fstat(fd, &st) == 0;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    const std::string why = !stat_ok ? sys_error() : S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file";
    ::close(fd);
    throw Error("NCP_EIO", "cannot read " + path + ": " + why);
  }
  const auto size = uint64_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    corrupt(path, "file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  }
  void* map = ::mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw Error("NCP_EIO", "cannot map " + path + ": " + std::strerror(map_errno));
  f.map_ = map;
  f.map_size_ = size_t(size);
  ::madvise(map, f.map_size_, MADV_SEQUENTIAL);  // loads walk the file front to back

  const auto* bytes = static_cast<const unsigned char*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8)
    corrupt(path, "header length " + std::to_string(header_len) + " exceeds file size " + std::to_string(size));
  if (header_len > kMaxHeader)
    corrupt(path, "header length " + std::to_string(header_len) + " exceeds the 100 MiB limit");

  const json::Value header = json::parse(
      std::string_view(reinterpret_cast<const char*>(bytes + 8), size_t(header_len)), "NCP_EFORMAT",
      path + " header");
  if (!header.is_object()) corrupt(path, "header is not a JSON object");
  const unsigned char* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  for (const auto& m : header.members()) {
    if (m.key == "__metadata__") {
      if (!m.value.is_object()) corrupt(path, "__metadata__ is not an object");
      for (const auto& kv : m.value.members()) {
        if (!kv.value.is_string())
          corrupt(path, "__metadata__ value " + json::quote(kv.key) + " is not a string");
        f.metadata_[kv.key] = kv.value.as_string();
      }
      continue;
    }
    f.tensors_.push_back(read_entry(path, m.key, m.value, data, data_size));
  }
  std::stable_sort(f.tensors_.begin(), f.tensors_.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.data < b.data; });
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    map_ = other.map_;
    map_size_ = other.map_size_;
    tensors_ = std::move(other.tensors_);
    index_ = std::move(other.index_);
    metadata_ = std::move(other.metadata_);
    other.map_ = nullptr;
    other.map_size_ = 0;
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { close(); }

void SafetensorsFile::close() {
  if (map_) ::munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw Error("NCP_EMISSING", path_ + ": no tensor " + json::quote(name));
  return *t;
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const TensorInfo& t = get(name);
  std::vector<float> out(size_t(t.numel()));
  read_f32_into(t, out.data());
  return out;
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = get(name);
  if (t.shape != shape)
    throw Error("NCP_ESHAPE", path_ + ": tensor " + json::quote(name) + " is " + shape_str(t.shape) +
                                  ", expected " + shape_str(shape));
  return read_f32(name);
}

void SafetensorsFile::read_f32_into(const TensorInfo& t, float* dst) const {
  const size_t width = dtype_size(t.dtype);
  parallel_for(t.numel(), int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    convert_to_f32(dst + begin, t.data + size_t(begin) * width, t.dtype, end - begin);
  });
}

void SafetensorsFile::release(const TensorInfo& t) const {
  if (!map_ || t.nbytes == 0) return;
  const auto page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const auto base = uintptr_t(map_);
  const uintptr_t from = (uintptr_t(t.data) - base) / page * page;
  const uintptr_t to = std::min<uintptr_t>(uintptr_t(t.data) - base + t.nbytes, map_size_);
  ::madvise(reinterpret_cast<void*>(base + from), size_t(to - from), MADV_DONTNEED);
}

void SafetensorsFile::prefault() const {
  if (!map_) return;
  ::madvise(map_, map_size_, MADV_NORMAL);
#ifdef MADV_POPULATE_READ
  if (::madvise(map_, map_size_, MADV_POPULATE_READ) == 0) return;
#endif
  // Kernels before 5.14: touch one byte per page, on both cores (the faults are the cost).
  const auto page = int64_t(::sysconf(_SC_PAGESIZE));
  const auto* bytes = static_cast<const volatile unsigned char*>(map_);
  parallel_for(int64_t((map_size_ + size_t(page) - 1) / size_t(page)), 4096, [&](int64_t p0, int64_t p1) {
    unsigned sum = 0;
    for (int64_t p = p0; p < p1; ++p) sum += bytes[p * page];
    (void)sum;
  });
}

void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Validate everything before touching the disk.
  std::map<std::string, const TensorData*> by_name;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      throw Error("NCP_EINVAL", "cannot write " + path + ": reserved tensor name " + json::quote(t.name));
    if (!by_name.emplace(t.name, &t).second)
      throw Error("NCP_EINVAL", "cannot write " + path + ": duplicate tensor " + json::quote(t.name));
    const int64_t numel = checked_numel(t.shape);
    uint64_t want = 0;
    if (numel < 0 || __builtin_mul_overflow(uint64_t(numel), uint64_t(dtype_size(t.dtype)), &want) ||
        want != t.nbytes || (t.nbytes && !t.data))
      throw Error("NCP_ESHAPE", "cannot write " + path + ": tensor " + json::quote(t.name) + " " +
                                    shape_str(t.shape) + " of " + dtype_name(t.dtype) + " given " +
                                    std::to_string(t.nbytes) + " bytes");
  }
  std::vector<const TensorData*> layout;
  for (const auto& kv : by_name) layout.push_back(kv.second);
  std::stable_sort(layout.begin(), layout.end(), [](const TensorData* a, const TensorData* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });
  std::map<std::string, std::pair<uint64_t, uint64_t>> offsets;
  uint64_t at = 0;
  for (const TensorData* t : layout) {
    offsets[t->name] = {at, at + t->nbytes};
    at += t->nbytes;
  }

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& kv : metadata) {
      header += (first ? "" : ",") + json::quote(kv.first) + ":" + json::quote(kv.second);
      first = false;
    }
    header += "}";
  }
  for (const auto& kv : by_name) {
    const TensorData& t = *kv.second;
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(t.shape[i]);
    const auto& o = offsets[t.name];
    header += (header.size() > 1 ? "," : "") + json::quote(t.name) + ":{\"dtype\":\"" + dtype_name(t.dtype) +
              "\",\"shape\":[" + shape + "],\"data_offsets\":[" + std::to_string(o.first) + "," +
              std::to_string(o.second) + "]}";
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(header.size()) >> (8 * i));

  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("NCP_EIO", "cannot write " + path + ": cannot create " + tmp + ": " + sys_error());
  bool ok = write_all(fd, len, 8) && write_all(fd, header.data(), header.size());
  for (size_t i = 0; ok && i < layout.size(); ++i) ok = write_all(fd, layout[i]->data, layout[i]->nbytes);
  ok = ok && ::fsync(fd) == 0;
  int err = ok ? 0 : errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    throw Error("NCP_EIO", "cannot write " + path + ": " + std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw Error("NCP_EIO", "cannot write " + path + ": rename from " + tmp + " failed: " + std::strerror(e));
  }
  // Make the rename itself durable.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace ncp::model
