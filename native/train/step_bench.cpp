#include "train/step_bench.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "model/activation_cache.h"
#include "model/dev_ops.h"
#include "model/unet_bench.h"
#include "model/unet_presets.h"
#include "train/trainer.h"

namespace ncp::train {

StepBenchResult bench_step(const StepBenchOptions& o) {
  const std::string& preset = o.preset;
  const std::string& file_dtype = o.file_dtype;
  const int64_t latent = o.latent, pairs = o.pairs;
  const int device = o.device;
  auto m = std::make_shared<model::LoadedUNet>();
  m->model_dir = "<random " + preset + ">";
  m->config = model::unet_preset(preset);
  const model::Manifest manifest = model::UNet::manifest(m->config);
  if (file_dtype.empty()) {
    m->weights = model::random_weights(manifest, 1234);
  } else {
    DType dtype;
    check(dtype_from_name(file_dtype, &dtype) && (dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16),
          "NCP_EDTYPE", "bench step: weights file dtype must be F32, F16 or BF16, got '" + file_dtype + "'");
    const char* tmp = std::getenv("TMPDIR");
    const std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/ncp-step-bench-" +
                             std::to_string(::getpid()) + "." + file_dtype + ".safetensors";
    model::write_random_weights_file(manifest, dtype, path);
    m->weights = model::load_weights(manifest, {path}, "", model::LoadMode::MapMatrices);
    std::remove(path.c_str());  // the mapping stays valid after the name is gone
  }
  m->unet = std::make_unique<model::UNet>(m->config, m->weights);

  TrainerConfig c;
  c.lora_rank = 4;
  c.objective.objective = parse_objective(o.objective);
  c.objective.space = parse_space(o.space);
  c.objective.beta = 2500;
  c.optimizer.schedule = LrSchedule::Constant;
  c.device = device;
  c.gradient_checkpointing = o.checkpointing;
  c.recompute = o.recompute;
  c.weight_matrices = o.weight_matrices;
  dev::reset_device_peak();
  Trainer trainer(c, m);
  if (o.tape_bf16) m->unet->set_tape_bf16(true);
  // B starts at zero, which makes the policy equal the reference; a non-zero B exercises the real arithmetic.
  for (const auto& a : trainer.lora().adapters()) std::fill(a->B.begin(), a->B.end(), 1e-3f);

  const int64_t text_len = 77;
  const model::WeightMap data = model::random_weights(
      {{"x0_w", {pairs, m->config.in_channels, latent, latent}},
       {"x0_l", {pairs, m->config.in_channels, latent, latent}},
       {"context", {pairs, text_len, m->config.cross_attention_dim}},
       {"text_embeds", {pairs, std::max<int64_t>(m->unet->pooled_dim(), 1)}}},
      77);
  PairData d;
  d.pairs = pairs, d.channels = m->config.in_channels, d.height = d.width = latent, d.text_len = text_len;
  d.x0_w = data.all().at("x0_w").data, d.x0_l = data.all().at("x0_l").data;
  d.encoder_hidden_states = data.all().at("context").data;
  if (m->config.text_time_embedding) {
    d.text_embeds = data.all().at("text_embeds").data;
    d.time_ids.assign(size_t(pairs * 6), 0.0f);
    for (int64_t p = 0; p < pairs; ++p) {
      float* t = d.time_ids.data() + p * 6;
      t[0] = t[1] = t[4] = t[5] = float(latent * 8);
    }
  }

  StepBenchResult r;
  r.lora_parameters = trainer.lora().num_params();
  trainer.step({d});  // warm-up: size every buffer once
  dev::restart_profile();
  model::activation_cache::reset_peak(device);
  struct rusage before {};
  getrusage(RUSAGE_SELF, &before);
  std::vector<double> times;
  for (int i = 0; i < std::max(1, o.reps); ++i) times.push_back(trainer.step({d}).seconds);
  std::sort(times.begin(), times.end());
  r.median_seconds = times[times.size() / 2];
  r.best_seconds = times.front();
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  r.peak_rss_bytes = double(usage.ru_maxrss) * 1024.0;
  r.page_faults_per_step = double(usage.ru_minflt - before.ru_minflt) / double(times.size());
  r.device_peak_bytes = double(dev::device_bytes_peak());
  const model::activation_cache::Usage cache = model::activation_cache::usage(device);
  r.activation_peak_bytes = double(cache.peak_in_use);
  r.activation_held_bytes = double(cache.held);
  r.forward_gflop = model::unet_forward_flops(m->config, 2 * pairs, latent, latent, text_len) / 1e9;
  return r;
}

}  // namespace ncp::train
