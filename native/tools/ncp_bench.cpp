// ncp_bench: the U-Net forward and training-step benchmarks without Node, for GPU machines that have a compiler
// but no Node.js (the same functions `ncp-native bench unet|step` call).
//
//   ncp_bench unet --config sd15|sdxl --latent 64 --batch 2 [--device cuda] [--reps 5] [--peak-tflops 989]
//   ncp_bench step --config sd15|sdxl --latent 64 --pairs 1 --objective dpo --space ncp [--device cuda] [--reps 3]
//             [--gradient-checkpointing on] [--recompute feedforward,qkv] [--weights f32|bf16|fp16] [--tape f32|bf16]
//   --profile on|gpu: also print the time per op kind over the timed runs. on: each op synchronised (slower than the
//             plain figures); gpu: device events around each op, nothing synchronised (device time, host time and
//             launches per op kind, and how long the device sat idle between ops)
//   ncp_bench attention --batch 2 --tokens 4096 [--keys N] --heads 10 --head-dim 64 --device cuda [--reps 10]
//             [--modes materialized,fused,fused-async,fused-async8,fused-wmma]: the attention op alone under
//             each CUDA attention mode (default: all)
//   ncp_bench lora --rows 8192 --in 640 --out 640 --rank 4 [--device cuda] [--reps 20]: one LoRA adapter's
//             forward and backward alone, fused kernels and GEMM chain (on the CPU: its GEMMs), with the GB/s of
//             the least traffic each pass needs
//
// Prints one JSON line per run: seconds (median and best), TFLOP/s of the U-Net forward (for steps, of the
// forward-equivalents a step does: see below), MFU against --peak-tflops when given, and peak device memory.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/cuda_backend.h"
#include "core/error.h"
#include "model/dev_ops.h"
#include "model/unet_bench.h"
#include "model/attention_bench.h"
#include "model/lora_bench.h"
#include "train/step_bench.h"

namespace {

std::string arg(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 2; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return fallback;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = std::min(s.find(',', at), s.size());
    if (comma > at) out.push_back(s.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

int attention_main(int argc, char** argv) {
  ncp::model::AttentionBenchOptions o;
  o.batch = std::atoll(arg(argc, argv, "--batch", "2").c_str());
  o.queries = std::atoll(arg(argc, argv, "--tokens", "4096").c_str());
  o.keys = std::atoll(arg(argc, argv, "--keys", std::to_string(o.queries).c_str()).c_str());
  o.heads = std::atoll(arg(argc, argv, "--heads", "10").c_str());
  o.head_dim = std::atoll(arg(argc, argv, "--head-dim", "64").c_str());
  o.reps = std::atoi(arg(argc, argv, "--reps", "10").c_str());
  o.device = ncp::dev::parse_device(arg(argc, argv, "--device", "cuda"));
  if (const std::string modes = arg(argc, argv, "--modes", ""); !modes.empty()) o.modes = split_commas(modes);
  for (const auto& r : ncp::model::bench_attention(o))
    std::printf("{\"bench\":\"attention\",\"device\":\"%s\",\"mode\":\"%s\",\"batch\":%lld,\"queries\":%lld,"
                "\"keys\":%lld,\"heads\":%lld,\"head_dim\":%lld,\"forward_ms\":%.3f,\"forward_tflops\":%.1f,"
                "\"backward_ms\":%.3f,\"backward_tflops\":%.1f}\n",
                ncp::cuda::status().device.c_str(), r.mode.c_str(), (long long)o.batch, (long long)o.queries,
                (long long)o.keys, (long long)o.heads, (long long)o.head_dim, r.forward_s * 1e3,
                r.forward_gflop / 1e3 / r.forward_s, r.backward_s * 1e3, r.backward_gflop / 1e3 / r.backward_s);
  return 0;
}

int lora_main(int argc, char** argv) {
  ncp::model::LoraBenchOptions o;
  o.rows = std::atoll(arg(argc, argv, "--rows", "8192").c_str());
  o.in = std::atoll(arg(argc, argv, "--in", "640").c_str());
  o.out = std::atoll(arg(argc, argv, "--out", std::to_string(o.in).c_str()).c_str());
  o.rank = std::atoll(arg(argc, argv, "--rank", "4").c_str());
  o.reps = std::atoi(arg(argc, argv, "--reps", "20").c_str());
  o.device = ncp::dev::parse_device(arg(argc, argv, "--device", "cuda"));
  const std::string device = o.device < 0 ? "cpu" : ncp::cuda::status().device;
  for (const auto& r : ncp::model::bench_lora(o))
    std::printf("{\"bench\":\"lora\",\"device\":\"%s\",\"path\":\"%s\",\"rows\":%lld,\"in\":%lld,\"out\":%lld,"
                "\"rank\":%lld,\"forward_ms\":%.4f,\"forward_gbps\":%.0f,\"backward_ms\":%.4f,\"backward_gbps\":%.0f}\n",
                device.c_str(), r.path.c_str(), (long long)o.rows, (long long)o.in, (long long)o.out,
                (long long)o.rank, r.forward_s * 1e3, r.forward_bytes / 1e9 / r.forward_s, r.backward_s * 1e3,
                r.backward_bytes / 1e9 / r.backward_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || (std::strcmp(argv[1], "unet") != 0 && std::strcmp(argv[1], "step") != 0 &&
                   std::strcmp(argv[1], "attention") != 0 && std::strcmp(argv[1], "lora") != 0)) {
    std::fprintf(stderr, "usage: ncp_bench unet|step --config sd15|sdxl --latent N [--batch N | --pairs N "
                         "--objective dpo --space ncp --tape f32|bf16] [--device cpu|cuda[:N]] [--reps N] [--peak-tflops X]\n"
                         "       ncp_bench attention --batch 2 --tokens 4096 [--keys N] --heads 10 --head-dim 64 "
                         "[--device cuda[:N]] [--reps 10] [--modes materialized,fused,fused-async,fused-async8,fused-wmma]\n"
                         "       ncp_bench lora --rows 8192 --in 640 --out 640 --rank 4 [--device cpu|cuda[:N]] [--reps 20]\n");
    return 2;
  }
  try {
    if (std::strcmp(argv[1], "attention") == 0) return attention_main(argc, argv);
    if (std::strcmp(argv[1], "lora") == 0) return lora_main(argc, argv);
    const std::string what = argv[1], preset = arg(argc, argv, "--config", "sd15");
    const int64_t latent = std::atoll(arg(argc, argv, "--latent", "64").c_str());
    const int reps = std::atoi(arg(argc, argv, "--reps", "3").c_str());
    const int device = ncp::dev::parse_device(arg(argc, argv, "--device", "cpu"));
    const double peak = std::atof(arg(argc, argv, "--peak-tflops", "0").c_str());
    const std::string weights = arg(argc, argv, "--weights", "f32");
    if (weights != "f32" && weights != "bf16" && weights != "fp16")
      throw ncp::Error("NCP_EINVAL", "--weights must be f32, bf16 or fp16");
    const bool bf16 = weights == "bf16";
    const ncp::DType matrices = bf16 ? ncp::DType::BF16 : weights == "fp16" ? ncp::DType::F16 : ncp::DType::F32;
    ncp::dev::require_device(device);
    const ncp::dev::ProfileMode profile_mode = ncp::dev::parse_profile_mode(arg(argc, argv, "--profile", "off"));
    const bool profiling = profile_mode != ncp::dev::ProfileMode::Off;
    if (profiling) ncp::dev::set_profiling(profile_mode);
    const std::string dev_name = device < 0 ? "cpu" : ncp::cuda::status().device;
    // Which attention kernels a CUDA run's U-Net calls used (NCP_CUDA_ATTENTION, else what the weights' precision
    // chooses: dev::PrecisionScope), so logs say what was measured.
    const std::string attention =
        device < 0 ? "cpu" : ncp::dev::unet_attention(matrices);
    if (what == "unet") {
      const int64_t batch = std::atoll(arg(argc, argv, "--batch", "2").c_str());
      const auto r = ncp::model::bench_unet(preset, latent, batch, reps, device, matrices);
      const double tflops = r.gflop / 1e3 / r.median_seconds;
      std::printf("{\"bench\":\"unet\",\"config\":\"%s\",\"latent\":%lld,\"batch\":%lld,\"device\":\"%s\","
                  "\"weights\":\"%s\",\"attention\":\"%s\",\"median_s\":%.4f,\"best_s\":%.4f,\"gflop\":%.1f,\"tflops\":%.2f,\"mfu\":%.3f,"
                  "\"device_peak_gib\":%.2f}\n",
                  preset.c_str(), (long long)latent, (long long)batch, dev_name.c_str(), weights.c_str(), attention.c_str(),
                  r.median_seconds,
                  r.best_seconds, r.gflop, tflops, peak > 0 ? tflops / peak : 0.0, r.device_peak_bytes / (1 << 30));
    } else {
      const int64_t pairs = std::atoll(arg(argc, argv, "--pairs", "1").c_str());
      const std::string objective = arg(argc, argv, "--objective", "dpo"), space = arg(argc, argv, "--space", "ncp");
      const bool ckpt = arg(argc, argv, "--gradient-checkpointing", "off") == "on";
      const std::string tape = arg(argc, argv, "--tape", bf16 ? "bf16" : "f32");
      if (tape != "f32" && tape != "bf16") throw ncp::Error("NCP_EINVAL", "--tape must be f32 or bf16");
      if (bf16 && tape != "bf16") throw ncp::Error("NCP_EINVAL", "--weights bf16 keeps a bf16 tape (mixed precision)");
      const std::string recompute = arg(argc, argv, "--recompute", "");
      ncp::train::StepBenchOptions so;
      so.preset = preset, so.latent = latent, so.pairs = pairs, so.objective = objective, so.space = space;
      so.reps = reps, so.device = device, so.checkpointing = ckpt, so.recompute = ncp::model::parse_selective_recompute(recompute);
      so.weight_matrices = matrices, so.tape_bf16 = tape == "bf16";
      const auto r = ncp::train::bench_step(so);
      // A step runs the policy forward and backward (about 3 forwards: the backward's input gradients cost
      // about twice a forward) and the reference forward over the 2P rows: 4 forward-equivalents. The NCP
      // encoder passes come on top and are not counted, so for ncp this understates the work done.
      const double tflops = 4 * r.forward_gflop / 1e3 / r.median_seconds;
      std::printf("{\"bench\":\"step\",\"config\":\"%s\",\"latent\":%lld,\"pairs\":%lld,\"objective\":\"%s\","
                  "\"space\":\"%s\",\"checkpointing\":%s,\"recompute\":\"%s\",\"tape\":\"%s\",\"device\":\"%s\",\"weights\":\"%s\",\"attention\":\"%s\",\"median_s\":%.4f,\"best_s\":%.4f,"
                  "\"tflops_4fwd\":%.2f,"
                  "\"mfu\":%.3f,\"device_peak_gib\":%.2f,\"peak_rss_gib\":%.2f,\"activations_peak_gib\":%.3f,"
                  "\"activations_held_gib\":%.3f,\"lora_params\":%lld}\n",
                  preset.c_str(), (long long)latent, (long long)pairs, objective.c_str(), space.c_str(),
                  ckpt ? "true" : "false", recompute.c_str(), tape.c_str(), dev_name.c_str(), weights.c_str(), attention.c_str(), r.median_seconds, r.best_seconds, tflops, peak > 0 ? tflops / peak : 0.0,
                  r.device_peak_bytes / (1 << 30), r.peak_rss_bytes / (1 << 30), r.activation_peak_bytes / (1 << 30),
                  r.activation_held_bytes / (1 << 30), (long long)r.lora_parameters);
    }
    if (profiling) std::printf("timed runs only (the warm-up is not counted); %s", ncp::dev::profile_report().c_str());
  } catch (const ncp::Error& e) {
    std::fprintf(stderr, "ncp_bench: %s: %s\n", e.code().c_str(), e.what());
    return 1;
  }
  return 0;
}
