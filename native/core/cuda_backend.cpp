// Finds, opens and probes libncp_cuda.so. The library is never closed: it holds the CUDA runtime's state
// (contexts, allocations) for the life of the process.
#include "core/cuda_backend.h"

#include <dlfcn.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <string>
#include <vector>

namespace ncp::cuda {
namespace {

constexpr const char* kLibraryName = "libncp_cuda.so";

#ifdef NCP_CUDA_COMPILED
constexpr bool kCompiled = true;
#else
constexpr bool kCompiled = false;
#endif

static_assert(NCP_CUDA_ACT_SILU == 0 && NCP_CUDA_ACT_QUICK_GELU == 3, "activation codes follow ncp::cpu::Activation");

// The directory of the module (shared object or executable) this function was linked into.
std::string module_dir() {
  Dl_info info;
  link_map* map = nullptr;
  std::string path;
  if (dladdr1(reinterpret_cast<void*>(&module_dir), &info, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) &&
      map && map->l_name && map->l_name[0]) {
    path = map->l_name;
  } else {
    // The main executable's link map has an empty name.
    char buf[PATH_MAX];
    const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return "";
    path.assign(buf, size_t(n));
  }
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved)) path = resolved;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

bool is_directory(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("NCP_CUDA_LIB"); env && *env)
    out.push_back(is_directory(env) ? std::string(env) + "/" + kLibraryName : std::string(env));
  const std::string dir = module_dir();
  if (!dir.empty()) {
    out.push_back(dir + "/" + kLibraryName);
    out.push_back(dir + "/Release/" + kLibraryName);
  }
  return out;
}

// Opens the first candidate that loads and speaks our ABI; `tried` collects why each other one did not.
const ncp_cuda_api* open_library(std::string& library, std::string& tried) {
  for (const std::string& path : candidates()) {
    if (!tried.empty()) tried += "; ";
    if (access(path.c_str(), F_OK) != 0) {
      tried += path + " (not found)";
      continue;
    }
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* why = dlerror();
      tried += path + " (" + (why ? why : "dlopen failed") + ")";
      continue;
    }
    auto get_api = reinterpret_cast<ncp_cuda_get_api_fn>(dlsym(handle, NCP_CUDA_GET_API_SYMBOL));
    const ncp_cuda_api* table = get_api ? get_api(NCP_CUDA_ABI_VERSION) : nullptr;
    if (!table || table->abi_version != NCP_CUDA_ABI_VERSION || table->struct_size < sizeof(ncp_cuda_api)) {
      tried += path + (get_api ? " (built for another ABI version; this host needs " +
                                     std::to_string(NCP_CUDA_ABI_VERSION) + ")"
                               : std::string(" (no ") + NCP_CUDA_GET_API_SYMBOL + " symbol)");
      dlclose(handle);
      continue;
    }
    library = path;
    return table;
  }
  return nullptr;
}

struct Probe {
  Status status;
  const ncp_cuda_api* table = nullptr;
};

}  // namespace

int attention_mode_code(const std::string& name) {
  if (name == "materialized") return NCP_CUDA_ATTENTION_MATERIALIZED;
  if (name == "fused") return NCP_CUDA_ATTENTION_FUSED;
  if (name == "fused-async") return NCP_CUDA_ATTENTION_FUSED_ASYNC;
  if (name == "fused-async8") return NCP_CUDA_ATTENTION_FUSED_ASYNC8;
  if (name == "fused-wmma") return NCP_CUDA_ATTENTION_FUSED_WMMA;
  return -1;
}

std::string attention_mode_name(int mode) {
  switch (mode) {
    case NCP_CUDA_ATTENTION_FUSED:
      return "fused (bf16 tensor cores: mma.sync kernels; WMMA backward past head dim 128) for >= 128 keys, else "
             "materialized";
    case NCP_CUDA_ATTENTION_FUSED_ASYNC:
    case NCP_CUDA_ATTENTION_FUSED_ASYNC8:
      return std::string(mode == NCP_CUDA_ATTENTION_FUSED_ASYNC ? "fused-async" : "fused-async8") +
             " (bf16 tensor cores: mma.sync kernels, their tiles by cp.async into two buffers, " +
             (mode == NCP_CUDA_ATTENTION_FUSED_ASYNC ? "4" : "8") +
             " warps a forward block, for head dims that are multiples of 8; WMMA backward past head dim 128) for >= 128 "
             "keys, else materialized";
    case NCP_CUDA_ATTENTION_FUSED_WMMA:
      return "fused-wmma (bf16 tensor cores: WMMA forward and backward) for >= 128 keys, else materialized";
    default:
      return "materialized (float)";
  }
}

namespace {

Probe probe() {
  Probe p;
  Status& s = p.status;
  s.compiled = kCompiled;
  std::string tried;
  const ncp_cuda_api* t = open_library(s.library, tried);
  if (!t) {
    s.reason = kCompiled ? std::string(kLibraryName) + " not found or not loadable; tried: " + tried
                         : "not compiled in this build (configured with NCP_CUDA=off or without nvcc) and no " +
                               std::string(kLibraryName) + " found; tried: " + tried;
    return p;
  }
  s.loadable = true;
  int32_t driver = 0, runtime = 0;
  t->versions(&driver, &runtime);
  s.driver_version = driver;
  s.runtime_version = runtime;
  int32_t count = 0;
  if (t->device_count(&count) != NCP_CUDA_OK) {
    s.reason = std::string(t->last_error()) + " [" + s.library + "]";
    return p;
  }
  ncp_cuda_device_info info{};
  if (t->device_info(0, &info) != NCP_CUDA_OK) {
    s.reason = std::string("device 0: ") + t->last_error();
    return p;
  }
  s.device_count = count;
  s.device = info.name;
  s.cc_major = info.cc_major;
  s.cc_minor = info.cc_minor;
  s.multiprocessors = info.multiprocessors;
  s.total_memory = info.total_memory;
  if (info.cc_major < 8) {  // CMAKE_CUDA_ARCHITECTURES starts at 80; older chips cannot run its code
    s.reason = s.device + " has compute capability " + std::to_string(info.cc_major) + "." +
               std::to_string(info.cc_minor) + "; the backend is built for 8.0 and newer";
    return p;
  }
  // NCP_CUDA_TF32=1: TF32 tensor cores for the float GEMMs (10-bit mantissa inputs, float accumulation), as
  // PyTorch's allow_tf32. Off by default so that the GPU matches the CPU to float32 rounding.
  if (const char* tf32 = std::getenv("NCP_CUDA_TF32"); tf32 && std::string(tf32) == "1") t->set_tf32(1);
  // NCP_CUDA_ATTENTION=fused: flash-style attention kernels (cuda/flash_attention.h) for self-attention shapes,
  // the register-level (mma.sync) ones; fused-async / fused-async8: the same, double-buffered;
  // fused-wmma: the WMMA ones. bf16 products, so off by default like TF32 (mixed precision turns fused-async8 on
  // for its U-Net calls when this is unset: dev::PrecisionScope).
  const std::string attention = std::getenv("NCP_CUDA_ATTENTION") ? std::getenv("NCP_CUDA_ATTENTION") : "";
  const int code = attention_mode_code(attention);
  s.attention_mode = code >= 0 ? code : NCP_CUDA_ATTENTION_MATERIALIZED;
  s.attention_from_env = code >= 0;
  t->set_fused_attention(s.attention_mode);
  s.attention = attention_mode_name(s.attention_mode);
  if (!attention.empty() && code < 0)
    s.attention += " (NCP_CUDA_ATTENTION=" + attention + " not recognised: " + kAttentionModeNames + ")";
  s.gemm_provider = t->gemm_provider();
  s.usable = true;
  p.table = t;
  return p;
}

const Probe& probed() {
  static const Probe p = probe();
  return p;
}

}  // namespace

const Status& status() { return probed().status; }

const ncp_cuda_api* api() { return probed().table; }

}  // namespace ncp::cuda
