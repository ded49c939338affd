// `ncp_bench lora`: one LoRA adapter's forward and backward (cuda/lora.cu) alone, on the fused kernels and on the
// GEMM chain (NCP_CUDA_LORA=fused, =gemm) of a CUDA device, or the CPU's GEMMs, in device time and in GB/s of the least
// traffic the op needs, so that a GPU session can put them against the device's memory bandwidth.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ncp::model {

struct LoraBenchOptions {
  int64_t rows = 8192, in = 640, out = 640, rank = 4;  // SDXL 1024²'s first transformer level, batch 2
  int reps = 20, device = 0;
};

struct LoraBenchResult {
  std::string path;       // "fused" or "gemm" on a CUDA device, "cpu" on the CPU
  double forward_s = 0;   // per call, median of reps of 10 calls back to back on cold rows: y += s (x A^T) B^T
  double backward_s = 0;  // the same: dx, dA and dB
  // The least traffic each pass needs, in bytes: forward reads x and y and writes y; backward reads x and dy and
  // reads and writes dx (the weights and their gradients are small beside them).
  double forward_bytes = 0, backward_bytes = 0;
};

// Throws ncp::Error when a size is out of range or the device cannot run.
std::vector<LoraBenchResult> bench_lora(const LoraBenchOptions& o);

}  // namespace ncp::model
