// Host side of the CUDA backend. The addon and the native tests never link libcudart: they open
// libncp_cuda.so with dlopen (like ggml's dynamically loaded backends) and call it through the function table
// of cuda/api.h. This file needs no CUDA headers and compiles in CPU-only builds, where it reports why the
// backend is not usable.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cuda/api.h"

namespace ncp::cuda {

struct Status {
  bool compiled = false;  // this build produced libncp_cuda.so (configured with NCP_CUDA on/auto and nvcc found)
  bool loadable = false;  // the library was found, opened, and speaks this host's ABI version
  bool usable = false;    // ... and the driver reported at least one device
  std::string library;    // path of the opened library
  std::string device;     // name of device 0
  int cc_major = 0, cc_minor = 0, device_count = 0, multiprocessors = 0;
  uint64_t total_memory = 0;
  int driver_version = 0, runtime_version = 0;  // 1000 major + 10 minor; driver 0 = no driver
  std::string gemm_provider;
  // The attention kernels NCP_CUDA_ATTENTION chose (NCP_CUDA_ATTENTION_* of cuda/api.h) and their description:
  // "fused (bf16 tensor cores, ...) ..." for the flash-style kernels, else "materialized (float)".
  int attention_mode = 0;
  std::string attention;
  bool attention_from_env = false;  // NCP_CUDA_ATTENTION named a mode: it then holds under mixed precision too
  std::string reason;  // why not usable: library not found (with the paths tried), no driver, no device
};

// What status().attention says of an attention mode.
std::string attention_mode_name(int mode);
// NCP_CUDA_ATTENTION_* for a mode's name (kAttentionModeNames), -1 for any other name.
int attention_mode_code(const std::string& name);
inline constexpr const char* kAttentionModeNames = "materialized, fused, fused-async, fused-async8, fused-wmma";

// Probes once, on first call (thread-safe); later calls return the same result. The search order for the
// library: $NCP_CUDA_LIB (a file, or a directory holding libncp_cuda.so), then the directory of the module
// containing this code (the addon or the test executable), then that directory's Release/ subdirectory.
const Status& status();

// The function table, or nullptr unless status().usable.
const ncp_cuda_api* api();

// One op's agreement between the GPU (through the table) and the CPU reference ops (ncp::cpu, float):
// the largest ||gpu - cpu|| / ||cpu|| over the op's outputs, and which output that was.
struct ParityResult {
  std::string op;
  double max_rel_error = 0;  // infinity when any value was NaN or infinite
  std::string worst_output;
  std::vector<std::pair<std::string, double>> outputs;  // every compared output and its error
  // The op passes when every output's error is below this: 1e-4 for float ops (summation order only); wider,
  // with the reason beside the case, for ops that round to bf16 inside.
  double bound = 1e-4;
};

// Runs every op of the table forward and backward on deterministic random inputs with odd shapes, on the CPU
// and on the GPU, and reports each op's error. Backward gradients start from random values on both sides and
// only the increments are compared, which also checks that backward adds. GEMM-based ops run once per GEMM
// provider available (cuBLAS with TF32 off, and ncp's own kernel). Throws ncp::Error("NCP_ECUDA") when the
// backend is not usable or a call fails.
std::vector<ParityResult> parity_check();

}  // namespace ncp::cuda
