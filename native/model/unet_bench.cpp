#include "model/unet_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "model/dev_ops.h"
#include "model/safetensors.h"
#include "model/unet.h"
#include "model/unet_presets.h"

namespace ncp::model {
namespace {

struct FlopCounter {
  int64_t B, T, cross;
  bool linear_proj;
  double total = 0;
  void conv(int64_t cin, int64_t cout, int64_t k, int64_t hw_out) { total += 2.0 * B * cin * cout * k * k * hw_out; }
  void linear(int64_t in, int64_t out, int64_t rows) { total += 2.0 * B * in * out * rows; }
  void resnet(int64_t cin, int64_t cout, int64_t hw) {
    conv(cin, cout, 3, hw);
    conv(cout, cout, 3, hw);
    if (cin != cout) conv(cin, cout, 1, hw);
  }
  void transformer(int64_t C, int64_t hw, int64_t depth) {
    linear(C, C, hw);  // proj_in (1x1 conv or linear: the same work)
    for (int64_t d = 0; d < depth; ++d) {
      linear(C, 3 * C, hw);                        // self-attention q, k, v
      total += 2.0 * B * 2 * hw * hw * C;          // scores and weighted sum
      linear(C, C, hw);                            // to_out
      linear(C, C, hw);                            // cross q
      linear(cross, 2 * C, T);                     // cross k, v from the text
      total += 2.0 * B * 2 * hw * T * C;
      linear(C, C, hw);
      linear(C, 8 * C, hw);                        // GEGLU projection to 2 x 4C
      linear(4 * C, C, hw);
    }
    linear(C, C, hw);  // proj_out
  }
};

}  // namespace

double unet_forward_flops(const UNetConfig& c, int64_t batch, int64_t height, int64_t width, int64_t text_len) {
  FlopCounter f{batch, text_len, c.cross_attention_dim, c.use_linear_projection};
  const int64_t L = c.levels();
  const auto& ch = c.block_out_channels;
  int64_t h = height, w = width;
  f.conv(c.in_channels, ch[0], 3, h * w);
  std::vector<int64_t> skips{ch[0]};
  int64_t cin = ch[0];
  for (int64_t i = 0; i < L; ++i) {
    for (int64_t r = 0; r < c.layers_per_block; ++r) {
      f.resnet(cin, ch[i], h * w);
      cin = ch[i];
      if (c.down_block_types[i] == DownBlockType::CrossAttnDown)
        f.transformer(ch[i], h * w, c.transformer_layers_per_block[i]);
      skips.push_back(cin);
    }
    if (i + 1 < L) {
      h = (h + 1) / 2;
      w = (w + 1) / 2;
      f.conv(cin, cin, 3, h * w);
      skips.push_back(cin);
    }
  }
  if (c.has_mid_block) {
    f.resnet(cin, cin, h * w);
    f.transformer(cin, h * w, c.transformer_layers_per_block[L - 1]);
    f.resnet(cin, cin, h * w);
  }
  for (int64_t u = 0; u < L; ++u) {
    const int64_t level = L - 1 - u, cout = ch[level];
    for (int64_t r = 0; r <= c.layers_per_block; ++r) {
      const int64_t skip = skips.back();
      skips.pop_back();
      f.resnet(cin + skip, cout, h * w);
      cin = cout;
      if (c.up_block_types[u] == UpBlockType::CrossAttnUp)
        f.transformer(cout, h * w, c.transformer_layers_per_block[level]);
    }
    if (u + 1 < L) {
      h *= 2;
      w *= 2;
      f.conv(cin, cin, 3, h * w);
    }
  }
  f.conv(ch[0], c.out_channels, 3, h * w);
  return f.total;
}

namespace {

// Text tokens of the benchmark's conditioning (CLIP's context length).
constexpr int64_t kTextLen = 77;

struct ForwardTimes {
  double first = 0, median = 0, best = 0;
};

// The first forward is timed on its own (it sizes the activation buffers and, after a load,
// shows whether any cost was deferred to it), then the median and best of `reps` more.
ForwardTimes time_forward(const UNet& unet, int64_t latent, int64_t batch, int reps) {
  using clock = std::chrono::steady_clock;
  const UNetConfig& config = unet.config();
  const int64_t text_len = kTextLen;
  const WeightMap inputs = random_weights(
      {{"sample", {batch, config.in_channels, latent, latent}},
       {"context", {batch, text_len, config.cross_attention_dim}},
       {"text_embeds", {batch, std::max<int64_t>(unet.pooled_dim(), 1)}},
       {"time_ids", {batch, 6}}},
      99);
  std::vector<float> timesteps(size_t(batch), 500.0f);
  UNetInputs in;
  in.batch = batch;
  in.height = in.width = latent;
  in.text_len = text_len;
  in.sample = inputs.all().at("sample").data.data();
  in.timesteps = timesteps.data();
  in.encoder_hidden_states = inputs.all().at("context").data.data();
  if (config.text_time_embedding) {
    in.text_embeds = inputs.all().at("text_embeds").data.data();
    in.time_ids = inputs.all().at("time_ids").data.data();
  }
  std::vector<int64_t> shape = unet.output_shape(in);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> out(static_cast<size_t>(n));

  ForwardTimes r;
  auto t0 = clock::now();
  unet.forward(in, out.data());
  r.first = std::chrono::duration<double>(clock::now() - t0).count();
  dev::restart_profile();
  std::vector<double> times;
  for (int i = 0; i < std::max(1, reps); ++i) {
    auto t = clock::now();
    unet.forward(in, out.data());
    times.push_back(std::chrono::duration<double>(clock::now() - t).count());
  }
  std::sort(times.begin(), times.end());
  r.median = times[times.size() / 2];
  r.best = times.front();
  return r;
}

// A field of /proc/self/status in bytes: "VmHWM" (the peak resident set since the last reset_peak_rss) or
// "VmRSS" (now); 0 where unreadable.
double status_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) * 1024.0;
  return 0;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); false where the kernel does not allow it.
bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return bool(clear);
}

}  // namespace

UNetBenchResult bench_unet(const std::string& preset, int64_t latent, int64_t batch, int reps, int device,
                           DType matrices) {
  using clock = std::chrono::steady_clock;
  check(device >= 0 || matrices == DType::F32, "NCP_EINVAL",
        std::string("bench unet: ") + dtype_name(matrices) + " weights (mixed precision) need a CUDA device");
  const UNetConfig config = unet_preset(preset);
  UNetBenchResult r;
  auto t0 = clock::now();
  WeightMap weights = random_weights(UNet::manifest(config), 1234);
  r.load_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  r.parameters = int64_t(weights.bytes() / sizeof(float));
  dev::reset_device_peak();
  const UNet unet = device < 0 ? UNet(config, weights)
                               : UNet(config, std::make_shared<const DeviceWeights>(weights, device, matrices));
  if (device >= 0) weights = WeightMap();
  const ForwardTimes t = time_forward(unet, latent, batch, reps);
  r.median_seconds = t.median;
  r.best_seconds = t.best;
  r.gflop = unet_forward_flops(config, batch, latent, latent, kTextLen) / 1e9;
  r.device_peak_bytes = double(dev::device_bytes_peak());
  return r;
}

void write_random_weights_file(const Manifest& manifest, DType dtype, const std::string& path) {
  // Converted one tensor at a time so the file's dtype copy is the only full copy held while writing.
  std::vector<std::vector<unsigned char>> stored;
  std::vector<TensorData> tensors;
  for (size_t i = 0; i < manifest.size(); ++i) {
    const WeightMap one = random_weights({manifest[i]}, 1234 + i);
    const Tensor32& t = one.all().begin()->second;
    stored.emplace_back(t.data.size() * dtype_size(dtype));
    convert_from_f32(stored.back().data(), t.data.data(), dtype, int64_t(t.data.size()));
  }
  for (size_t i = 0; i < manifest.size(); ++i)
    tensors.push_back({manifest[i].name, dtype, manifest[i].shape, stored[i].data(), stored[i].size()});
  write_safetensors(path, tensors);
}

UNetLoadBenchResult bench_unet_load(const std::string& preset, const std::string& dtype_name, const std::string& path,
                                    int64_t latent, int64_t batch, int reps) {
  using clock = std::chrono::steady_clock;
  DType dtype;
  if (!dtype_from_name(dtype_name, &dtype) || (dtype != DType::F16 && dtype != DType::BF16 && dtype != DType::F32))
    throw Error("NCP_EDTYPE", "bench load: dtype must be F16, BF16 or F32, got '" + dtype_name + "'");
  const UNetConfig config = unet_preset(preset);
  const Manifest manifest = UNet::manifest(config);
  write_random_weights_file(manifest, dtype, path);
  UNetLoadBenchResult r;
  r.peak_rss_is_load_only = reset_peak_rss();
  r.rss_before_bytes = status_bytes("VmRSS");
  // What load_unet does with a folder's weights file: the matrices stay mapped, the rest becomes float32.
  auto t0 = clock::now();
  const WeightMap weights = load_weights(manifest, {path}, "", LoadMode::MapMatrices);
  const UNet unet(config, weights);
  r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  r.peak_rss_bytes = status_bytes("VmHWM");
  r.weight_bytes = double(weights.bytes());
  r.copied_bytes = double(weights.copied_bytes());
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    std::fseek(f, 0, SEEK_END);
    r.file_bytes = double(std::ftell(f));
    std::fclose(f);
  }
  if (reps > 0) {
    const ForwardTimes t = time_forward(unet, latent, batch, reps);
    r.first_forward_seconds = t.first;
    r.forward_median_seconds = t.median;
    r.forward_gflop = unet_forward_flops(config, batch, latent, latent, kTextLen) / 1e9;
  }
  std::remove(path.c_str());
  return r;
}

}  // namespace ncp::model
