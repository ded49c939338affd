// The VAE (AutoencoderKL) against diffusers 0.25 (golden files computed in float64 by PyTorch): encoder mean and
// logvar, decoder output; batch slicing, non-square and odd image sizes through the exact transpose symmetry of
// the network, seeded sampling, the pre-0.14 attention names, the file path of `forward`, and the errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "model/blocks.h"
#include "model/component_io.h"
#include "model/safetensors.h"
#include "model/vae.h"
#include "tests/fixtures.h"
#include "tests/harness.h"
#include "tests/model_edit.h"

namespace {
using namespace ncp::test;
using namespace ncp::model;

constexpr double kGoldenTol = 1e-4;  // golden/README.md
constexpr double kSelfTol = 1e-5;    // same engine, other summation order

struct Golden {
  std::unique_ptr<LoadedVae> model;
  SafetensorsFile file;
  Tensor32 image, latent;
  Golden() : model(load_vae(golden_path("tiny-sd15"))), file(SafetensorsFile::open(golden_path("tiny-sd15/vae.safetensors"))) {
    image = {file.get("in.image").shape, file.read_f32("in.image")};
    latent = {file.get("in.latent").shape, file.read_f32("in.latent")};
  }
  std::vector<float> ref(const std::string& name) const { return file.read_f32(name); }
};


NCP_TEST("vae golden encoder mean and logvar") {
  Golden g;
  const auto& s = g.image.shape;
  const LatentDist d = g.model->vae->encode(g.image.data.data(), s[0], s[2], s[3]);
  NCP_EXPECT(d.mean.shape == g.file.get("out.mean").shape && d.logvar.shape == g.file.get("out.logvar").shape,
             ncp::shape_str(d.mean.shape));
  expect_close("out.mean", d.mean.data, g.ref("out.mean"), kGoldenTol);
  expect_close("out.logvar", d.logvar.data, g.ref("out.logvar"), kGoldenTol);
}

NCP_TEST("vae golden decoder") {
  Golden g;
  const Tensor32 y = g.model->vae->decode(g.latent);
  NCP_EXPECT(y.shape == g.file.get("out.decoded").shape, ncp::shape_str(y.shape));
  expect_close("out.decoded", y.data, g.ref("out.decoded"), kGoldenTol);
}

NCP_TEST("vae config from config.json") {
  Golden g;
  const VaeConfig& c = g.model->config;
  NCP_EXPECT(c.block_out_channels == (std::vector<int64_t>{16, 32}) && c.layers_per_block == 1 && c.norm_num_groups == 8);
  NCP_EXPECT(c.latent_channels == 4 && c.in_channels == 3 && c.out_channels == 3 && c.scaling_factor == 0.18215);
  NCP_EXPECT(c.use_quant_conv && c.use_post_quant_conv && c.mid_block_add_attention && c.shift_factor == 0);
  const VaeConfig xl = parse_vae_config(R"({"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512],
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
      "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "sample_size": 1024,
      "scaling_factor": 0.13025, "shift_factor": null, "latents_mean": null, "force_upcast": true})", "sdxl.json");
  NCP_EXPECT(xl.scaling_factor == 0.13025 && xl.levels() == 4 && xl.layers_per_block == 2 && xl.shift_factor == 0);
  // SDXL's VAE: 2 resnets per encoder level, 3 per decoder level, attention in both mid blocks.
  const Manifest m = Vae::manifest(xl);
  std::set<std::string> names;
  for (const auto& p : m) names.insert(p.name);
  NCP_EXPECT(names.count("encoder.down_blocks.3.resnets.1.conv2.weight") && !names.count("encoder.down_blocks.3.downsamplers.0.conv.weight"));
  NCP_EXPECT(names.count("decoder.up_blocks.3.resnets.2.conv2.weight") && names.count("decoder.up_blocks.2.upsamplers.0.conv.weight"));
  NCP_EXPECT(names.count("decoder.mid_block.attentions.0.to_out.0.bias") && names.count("encoder.down_blocks.1.resnets.0.conv_shortcut.weight"));
}

NCP_TEST("vae manifest matches the file") {
  Golden g;
  const SafetensorsFile f = SafetensorsFile::open(g.model->weight_files.at(0));
  const Manifest manifest = Vae::manifest(g.model->config);
  std::set<std::string> names;
  for (const ParamSpec& p : manifest) {
    NCP_EXPECT(names.insert(p.name).second, p.name << " twice");
    const TensorInfo* t = f.find(p.name);
    NCP_EXPECT(t && t->shape == p.shape, p.name);
  }
  NCP_EXPECT(names.size() == f.tensors().size(), names.size() << " vs " << f.tensors().size());
}

// Slicing the batch (the memory bound for big images) gives the same numbers as one pass.
NCP_TEST("vae batch slicing") {
  Golden g;
  const auto& s = g.image.shape;
  const LatentDist all = g.model->vae->encode(g.image.data.data(), s[0], s[2], s[3], 0);
  const LatentDist one = g.model->vae->encode(g.image.data.data(), s[0], s[2], s[3], 1);
  expect_close("encode slice 1 vs whole batch", one.mean.data, all.mean.data, kSelfTol);
  const Tensor32 d0 = g.model->vae->decode(g.latent, 0), d1 = g.model->vae->decode(g.latent, 1);
  expect_close("decode slice 1 vs whole batch", d1.data, d0.data, kSelfTol);
  NCP_EXPECT(error_of([&] { g.model->vae->decode(g.latent, -1); }).code() == "NCP_EINVAL");
}

// The (0, 1, 0, 1) padding of the downsamplers is symmetric under a transpose, and nothing else in the network
// tells height from width except the 3x3 kernels: VAE_{W^T}(x^T) = VAE_W(x)^T exactly. A 24x40 (and an odd 21x34)
// image through both catches any mix-up of H and W, and of the padded side.
void transpose_symmetry(int64_t H, int64_t W) {
  Golden g;
  WeightMap transposed;
  // Every tensor as float32: the copies, and the matrices the loader kept in the mapped file.
  std::map<std::string, Tensor32> all = g.model->weights.all();
  for (const auto& [key, m] : g.model->weights.mapped()) {
    Tensor32& t = all[key];
    t.shape = m.shape;
    t.data.resize(size_t(m.numel()));
    ncp::convert_to_f32(t.data.data(), m.values.data, m.values.dtype, m.numel());
  }
  NCP_EXPECT(!g.model->weights.mapped().empty());
  for (const auto& [key, t] : all) {
    Tensor32 u = t;
    if (t.shape.size() == 4 && t.shape[2] > 1)
      transpose_batched(u.data.data(), t.data.data(), t.shape[0] * t.shape[1], t.shape[2], t.shape[3]);
    transposed.put(key, std::move(u));
  }
  const Vae vae_t(g.model->config, transposed);
  const Vae& vae = *g.model->vae;
  const int64_t N = 2;
  std::vector<float> x(N * 3 * H * W), xt(x.size());
  fill_uniform(x, 7);
  transpose_batched(xt.data(), x.data(), N * 3, H, W);
  const LatentDist d = vae.encode(x.data(), N, H, W), dt = vae_t.encode(xt.data(), N, W, H);
  const int64_t h = vae.latent_size(H), w = vae.latent_size(W);
  NCP_EXPECT(d.mean.shape == (std::vector<int64_t>{N, 4, H / 2, W / 2}), ncp::shape_str(d.mean.shape));
  std::vector<float> back(d.mean.data.size());
  transpose_batched(back.data(), dt.mean.data.data(), N * 4, w, h);
  expect_close("encode " + std::to_string(H) + "x" + std::to_string(W) + " vs transposed", back, d.mean.data, kSelfTol);

  const Tensor32 y = vae.decode(d.mean.data.data(), N, h, w), yt = vae_t.decode(dt.mean.data.data(), N, w, h);
  NCP_EXPECT(y.shape == (std::vector<int64_t>{N, 3, 2 * h, 2 * w}), ncp::shape_str(y.shape));
  back.resize(y.data.size());
  transpose_batched(back.data(), yt.data.data(), N * 3, 2 * w, 2 * h);
  expect_close("decode " + std::to_string(h) + "x" + std::to_string(w) + " vs transposed", back, y.data, kSelfTol);
}

NCP_TEST("vae non-square image 24x40") { transpose_symmetry(24, 40); }
NCP_TEST("vae odd image 21x34") { transpose_symmetry(21, 34); }

NCP_TEST("vae seeded sampling") {
  const int64_t n = 1 << 16;
  Tensor32 mean{{1, 4, 128, 128}, std::vector<float>(n)}, logvar = mean;
  for (int64_t i = 0; i < n; ++i) mean.data[i] = float(i % 7) - 3.f, logvar.data[i] = float(i % 5) - 2.f;
  const Tensor32 a = Vae::sample(mean, logvar, 42), b = Vae::sample(mean, logvar, 42), c = Vae::sample(mean, logvar, 43);
  NCP_EXPECT(a.data == b.data, "same seed, same sample");
  NCP_EXPECT(a.data != c.data, "another seed, another sample");
  NCP_EXPECT(a.shape == mean.shape);
  // (z - mean) / std is standard normal.
  double s1 = 0, s2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = (a.data[i] - mean.data[i]) / std::exp(0.5 * logvar.data[i]);
    s1 += e, s2 += e * e;
  }
  const double m = s1 / n, var = s2 / n - m * m;
  std::printf("    eps mean %.4f var %.4f\n", m, var);
  NCP_EXPECT(std::fabs(m) < 0.02 && std::fabs(var - 1) < 0.03, m << " " << var);
  // logvar is clamped to [-30, 20] here too.
  Tensor32 big{{1, 1, 1, 2}, {0.f, 0.f}}, huge{{1, 1, 1, 2}, {100.f, 100.f}}, at20{{1, 1, 1, 2}, {20.f, 20.f}};
  NCP_EXPECT(Vae::sample(big, huge, 1).data == Vae::sample(big, at20, 1).data);
  NCP_EXPECT(error_of([&] { Vae::sample(mean, big, 1); }).code() == "NCP_ESHAPE");
}

// Weights saved by diffusers < 0.14 (query/key/value/proj_attn) load as the current names.
NCP_TEST("vae pre-0.14 attention names") {
  Golden g;
  TempDir dir;
  StoredTensors t = read_stored(golden_path("tiny-sd15/vae/diffusion_pytorch_model.safetensors"));
  StoredTensors renamed;
  for (auto& [name, x] : t) {
    std::string n = name;
    for (const auto& [now, before] : {std::pair<std::string, std::string>{".to_q.", ".query."}, {".to_k.", ".key."},
                                      {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}})
      if (const size_t at = n.find(now); at != std::string::npos) n = n.substr(0, at) + before + n.substr(at + now.size());
    renamed[n] = x;
  }
  NCP_EXPECT(renamed.count("decoder.mid_block.attentions.0.proj_attn.weight"));
  std::filesystem::create_directories(dir / "vae");
  write_stored(dir / "vae/diffusion_pytorch_model.safetensors", renamed);
  copy_file(golden_path("tiny-sd15/vae/config.json"), dir / "vae/config.json");
  const auto old = load_vae(dir.path());
  NCP_EXPECT(old->vae->decode(g.latent).data == g.model->vae->decode(g.latent).data);
}

NCP_TEST("vae file path writes the golden names") {
  TempDir dir;
  ForwardJob job;
  job.model_dir = golden_path("tiny-sd15"), job.input = golden_path("tiny-sd15/vae.safetensors");
  job.component = "vae-encoder", job.output = dir / "enc.safetensors";
  NCP_EXPECT(forward_component_file(job) == (std::vector<std::string>{"out.mean", "out.logvar"}));
  job.component = "vae-decoder", job.output = dir / "dec.safetensors";
  NCP_EXPECT(forward_component_file(job) == (std::vector<std::string>{"out.decoded"}));
  const SafetensorsFile ref = SafetensorsFile::open(job.input), enc = SafetensorsFile::open(dir / "enc.safetensors"),
                        dec = SafetensorsFile::open(dir / "dec.safetensors");
  expect_close("file out.mean", enc.read_f32("out.mean"), ref.read_f32("out.mean"), kGoldenTol);
  expect_close("file out.logvar", enc.read_f32("out.logvar"), ref.read_f32("out.logvar"), kGoldenTol);
  expect_close("file out.decoded", dec.read_f32("out.decoded"), ref.read_f32("out.decoded"), kGoldenTol);

  // An image with 4 channels, a latent file without in.latent.
  StoredTensors in = read_stored(job.input);
  StoredTensor img = in.at("in.image");
  img.shape = {4, 2, 32, 24};
  write_stored(dir / "bad.safetensors", {{"in.image", img}});
  job.component = "vae-encoder", job.input = dir / "bad.safetensors";
  ncp::Error e = error_of([&] { forward_component_file(job); });
  NCP_EXPECT(e.code() == "NCP_ESHAPE" && contains(e.what(), "in.image") && contains(e.what(), "[4, 2, 32, 24]"), e.what());
  job.component = "vae-decoder";
  e = error_of([&] { forward_component_file(job); });
  NCP_EXPECT(e.code() == "NCP_EMISSING" && contains(e.what(), "in.latent"), e.what());
}

// A copy of tiny-sd15's VAE with its weights or config edited.
std::string broken(const TempDir& dir, const std::function<void(StoredTensors&)>& edit_weights,
                   const std::function<void(std::string&)>& edit_config = nullptr) {
  return edited_component(dir.path(), "tiny-sd15/vae", "diffusion_pytorch_model.safetensors", edit_weights, edit_config);
}

NCP_TEST("vae errors name the tensor, the shape and the field") {
  {
    TempDir d;
    const ncp::Error e = error_of([&] {
      load_vae(broken(d, [](StoredTensors& t) { t.erase("decoder.mid_block.attentions.0.to_k.bias"); }));
    });
    NCP_EXPECT(e.code() == "NCP_EWEIGHTS" && contains(e.what(), "missing: decoder.mid_block.attentions.0.to_k.bias"), e.what());
  }
  {
    TempDir d;
    const ncp::Error e = error_of([&] {
      load_vae(broken(d, [](StoredTensors& t) { t["encoder.down_blocks.0.downsamplers.0.conv.weight"] = zeros_f32({16, 16, 1, 1}); }));
    });
    NCP_EXPECT(e.code() == "NCP_EWEIGHTS" &&
                   contains(e.what(), "encoder.down_blocks.0.downsamplers.0.conv.weight file [16, 16, 1, 1] expected [16, 16, 3, 3]"),
               e.what());
  }
  {
    TempDir d;
    const ncp::Error e = error_of([&] {
      load_vae(broken(d, nullptr, [](std::string& c) { c.replace(c.find("\"UpDecoderBlock2D\""), 18, "\"AttnUpDecoderBlock2D\""); }));
    });
    NCP_EXPECT(e.code() == "NCP_ECONFIG" && contains(e.what(), "up_block_types[0] = \"AttnUpDecoderBlock2D\""), e.what());
  }
  {
    TempDir d;
    const ncp::Error e = error_of([&] { load_vae(broken(d, nullptr, [](std::string& c) { c.replace(c.find("\"silu\""), 6, "\"gelu\""); })); });
    NCP_EXPECT(e.code() == "NCP_ECONFIG" && contains(e.what(), "act_fn = \"gelu\""), e.what());
  }
  {
    TempDir d;
    const ncp::Error e = error_of([&] {
      load_vae(broken(d, nullptr, [](std::string& c) { c.replace(c.find("\"norm_num_groups\": 8"), 20, "\"norm_num_groups\": 12"); }));
    });
    NCP_EXPECT(e.code() == "NCP_ECONFIG" && contains(e.what(), "norm_num_groups = 12"), e.what());
  }
  Golden g;
  std::vector<float> x(3 * 1 * 8);
  const ncp::Error e = error_of([&] { g.model->vae->encode(x.data(), 1, 1, 8); });
  NCP_EXPECT(e.code() == "NCP_ESHAPE" && contains(e.what(), "image side of 1"), e.what());
  NCP_EXPECT(error_of([&] { g.model->vae->decode(Tensor32{{2, 3, 16, 16}, std::vector<float>(2 * 3 * 256)}); }).code() == "NCP_ESHAPE");
}

}  // namespace
