#include "model/unet_presets.h"

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/threads.h"

namespace ncp::model {

UNetConfig unet_preset(const std::string& name) {
  UNetConfig c;
  c.in_channels = c.out_channels = 4;
  c.layers_per_block = 2;
  c.norm_num_groups = 32;
  c.norm_eps = 1e-5;
  c.flip_sin_to_cos = true;
  c.freq_shift = 0;
  if (name == "sd15") {
    c.sample_size = 64;
    c.block_out_channels = {320, 640, 1280, 1280};
    c.down_block_types = {DownBlockType::CrossAttnDown, DownBlockType::CrossAttnDown, DownBlockType::CrossAttnDown,
                          DownBlockType::Down};
    c.up_block_types = {UpBlockType::Up, UpBlockType::CrossAttnUp, UpBlockType::CrossAttnUp, UpBlockType::CrossAttnUp};
    c.num_attention_heads = {8, 8, 8, 8};
    c.transformer_layers_per_block = {1, 1, 1, 1};
    c.cross_attention_dim = 768;
    c.use_linear_projection = false;
  } else if (name == "sdxl") {
    c.sample_size = 128;
    c.block_out_channels = {320, 640, 1280};
    c.down_block_types = {DownBlockType::Down, DownBlockType::CrossAttnDown, DownBlockType::CrossAttnDown};
    c.up_block_types = {UpBlockType::CrossAttnUp, UpBlockType::CrossAttnUp, UpBlockType::Up};
    c.num_attention_heads = {5, 10, 20};
    c.transformer_layers_per_block = {1, 2, 10};
    c.cross_attention_dim = 2048;
    c.use_linear_projection = true;
    c.text_time_embedding = true;
    c.addition_time_embed_dim = 256;
    c.projection_class_embeddings_input_dim = 2816;
  } else {
    throw Error("NCP_EINVAL", "unknown U-Net preset '" + name + "' (known: sd15, sdxl)");
  }
  return c;
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

WeightMap random_weights(const Manifest& manifest, uint64_t seed) {
  WeightMap map;
  for (size_t i = 0; i < manifest.size(); ++i) {
    const ParamSpec& p = manifest[i];
    Tensor32 t;
    t.shape = p.shape;
    int64_t n = 1;
    for (int64_t d : p.shape) n *= d;
    t.data.resize(size_t(n));
    const bool norm = p.shape.size() == 1 && (p.name.find("norm") != std::string::npos);
    const int64_t fan_in = p.shape.size() >= 2 ? n / p.shape[0] : 1;
    const float scale = p.shape.size() >= 2 ? float(1.0 / std::sqrt(double(fan_in))) : 0.02f;
    const float offset = norm && ends_with(p.name, ".weight") ? 1.0f : 0.0f;
    // Chunks get their own generator so the fill is parallel and still independent of the thread count.
    const int64_t chunk = 1 << 16;
    float* data = t.data.data();
    parallel_for((n + chunk - 1) / chunk, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        std::mt19937 rng(uint32_t(seed * 1000003u + i * 7919u + uint64_t(c)));
        std::uniform_real_distribution<float> u(-1.0f, 1.0f);
        for (int64_t j = c * chunk; j < std::min(n, (c + 1) * chunk); ++j) data[j] = offset + scale * u(rng);
      }
    });
    map.put(p.name, std::move(t));
  }
  return map;
}

}  // namespace ncp::model
