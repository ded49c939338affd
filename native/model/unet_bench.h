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
};

// Median over `reps` timed forwards after one warm-up, latent side `latent`, 77 text tokens.
UNetBenchResult bench_unet(const std::string& preset, int64_t latent, int64_t batch, int reps);

}  // namespace ncp::model
