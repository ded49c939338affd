// `ncp-native bench step`: one full optimiser step (policy forward + backward, reference forward, for ncp the
// encoder passes, AdamW) on random weights of a real architecture with LoRA r4 on the attention projections.
#pragma once
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "model/blocks.h"

namespace ncp::train {

struct StepBenchResult {
  double median_seconds = 0, best_seconds = 0;
  double peak_rss_bytes = 0;  // of the process after the steps (weights included)
  int64_t lora_parameters = 0;
  double page_faults_per_step = 0;  // minor faults: fresh memory touched per steady-state step
  double device_peak_bytes = 0;     // CUDA memory held at most (weights + cached activations); 0 on the CPU
  // The activation cache over the timed steps (activation_cache.h): the most its tapes, activations, gradients
  // and scratch had in use at once, and what it held at the end (in use + cached free blocks). Weights excluded.
  double activation_peak_bytes = 0, activation_held_bytes = 0;
  double forward_gflop = 0;         // one U-Net forward over the 2P rows, for throughput figures
};

struct StepBenchOptions {
  std::string preset = "sd15";  // unet_presets.h
  int64_t latent = 32, pairs = 1;
  std::string objective = "dpo", space = "ncp";
  int reps = 3;
  int device = -1;  // -1 the CPU, N CUDA device N
  bool checkpointing = false;           // TrainerConfig's
  model::SelectiveRecompute recompute;  // TrainerConfig's
  DType weight_matrices = DType::F32;  // BF16 or F16: mixed precision on a device (TrainerConfig's)
  // "" keeps random float32 weights in memory; "F32", "F16" or "BF16" writes them as such a safetensors file and
  // loads it as load_unet does (matrices kept in the mapped file: the figures of training from an fp16 checkpoint).
  std::string file_dtype;
  bool tape_bf16 = false;  // keep activations in bf16 (UNet::set_tape_bf16; bf16 weights imply it), also on the CPU
};

StepBenchResult bench_step(const StepBenchOptions& options);

}  // namespace ncp::train
