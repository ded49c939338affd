// `ncp-native bench unet`: the U-Net forward on random weights of a real architecture, no file needed.
#pragma once
#include <cstdint>
#include <string>

#include "model/unet_config.h"

namespace ncp::model {

// Multiply-add work of one forward pass, counted as 2 FLOPs per multiply-add over every convolution, linear
// layer and attention product (norms, activations and copies are left out, as is usual for GFLOP/s figures).
double unet_forward_flops(const UNetConfig& c, int64_t batch, int64_t height, int64_t width, int64_t text_len);

struct UNetBenchResult {
  double median_seconds = 0, best_seconds = 0, gflop = 0;
  int64_t parameters = 0;
  double load_seconds = 0;  // building random weights
  double device_peak_bytes = 0;  // CUDA memory held at most (weights + cached activations); 0 on the CPU
};

// Median over `reps` timed forwards after one warm-up, latent side `latent`, 77 text tokens.
// device: -1 the CPU, N CUDA device N.
UNetBenchResult bench_unet(const std::string& preset, int64_t latent, int64_t batch, int reps, int device = -1,
                           bool bf16_weights = false);

struct UNetLoadBenchResult {
  double file_bytes = 0, seconds = 0;
  double peak_rss_bytes = 0;     // of the whole process, after the load
  double float32_bytes = 0;      // what one float32 copy of the weights takes
};

// Writes random weights of `preset` as one `dtype` (F16, BF16 or F32) safetensors file at `path`, then times
// load_weights of it into float32 and reports the process' peak RSS (one float32 copy is the floor).
UNetLoadBenchResult bench_unet_load(const std::string& preset, const std::string& dtype, const std::string& path);

}  // namespace ncp::model
