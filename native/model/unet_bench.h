// `ncp-native bench unet`: the U-Net forward on random weights of a real architecture, no file needed.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "model/unet_config.h"
#include "model/weights.h"

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
// matrices: the weight matrices' type on a device (F32, or BF16/F16 mixed precision).
UNetBenchResult bench_unet(const std::string& preset, int64_t latent, int64_t batch, int reps, int device = -1,
                           DType matrices = DType::F32);

// Writes random weights for `manifest` (the values of random_weights, one seed per tensor) as one `dtype`
// safetensors file at `path`.
void write_random_weights_file(const Manifest& manifest, DType dtype, const std::string& path);

struct UNetLoadBenchResult {
  double file_bytes = 0, seconds = 0;
  double peak_rss_bytes = 0;         // peak resident set during the load (mapped file pages included)
  double rss_before_bytes = 0;       // resident set just before the load (the process and the file writer's rest)
  bool peak_rss_is_load_only = true;  // false: the kernel kept the writer's peak, so the figure includes it
  double weight_bytes = 0;           // the weights as held: mapped matrices at their stored size
  double copied_bytes = 0;           // float32 copies the load made (biases, norms)
  double first_forward_seconds = 0, forward_median_seconds = 0, forward_gflop = 0;  // reps > 0
};

// Writes random weights of `preset` as one `dtype` (F16, BF16 or F32) safetensors file at `path`, then times
// what load_unet does with it (LoadMode::MapMatrices, then binding the U-Net) and the peak RSS of that load.
// With reps > 0, then times forwards at latent x latent, batch `batch` on the loaded weights: the first one on
// its own (no cost deferred by the load) and the median of `reps` more.
UNetLoadBenchResult bench_unet_load(const std::string& preset, const std::string& dtype, const std::string& path,
                                    int64_t latent = 32, int64_t batch = 2, int reps = 0);

}  // namespace ncp::model
