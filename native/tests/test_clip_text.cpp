// The CLIP text encoder against transformers' CLIPTextModelWithProjection (golden files computed in float64 by
// PyTorch): every output of the tiny SD1.5 (quick_gelu) and SDXL (gelu) encoders, batch and causality invariants,
// the SDXL conditioning, the folder forms (fp16 variant, a stored position_ids buffer, no projection) and the
// errors for broken files and configs.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/clip_text.h"
#include "model/component_io.h"
#include "model/json.h"
#include "model/safetensors.h"
#include "tests/fixtures.h"
#include "tests/harness.h"
#include "tests/model_edit.h"

namespace {
using namespace ncp::test;
using namespace ncp::model;

constexpr double kGoldenTol = 1e-4;  // golden/README.md
constexpr double kSelfTol = 1e-5;    // same engine, another batch split or length

struct Golden {
  std::unique_ptr<LoadedTextEncoder> model;
  SafetensorsFile file;
  std::vector<int64_t> ids, shape;
  explicit Golden(const std::string& m)
      : model(load_text_encoder(golden_path(m))), file(SafetensorsFile::open(golden_path(m + "/text_encoder.safetensors"))) {
    ids = read_token_ids(file, "in.input_ids", &shape);
  }
  std::vector<float> ref(const std::string& name) const { return file.read_f32(name); }
};


void golden_parity(const std::string& m) {
  Golden g(m);
  NCP_EXPECT(g.shape.size() == 2);
  const TextEncoderOutput o = g.model->encoder->encode(g.ids.data(), g.shape[0], g.shape[1]);
  const std::pair<const char*, const Tensor32*> outs[] = {{"out.last_hidden_state", &o.last_hidden_state},
                                                          {"out.penultimate_hidden_state", &o.penultimate_hidden_state},
                                                          {"out.pooled", &o.pooled},
                                                          {"out.text_embeds", &o.text_embeds}};
  for (const auto& [name, t] : outs) {
    NCP_EXPECT(t->shape == g.file.get(name).shape, name << ": " << ncp::shape_str(t->shape));
    expect_close(m + " " + name, t->data, g.ref(name), kGoldenTol);
  }
}

NCP_TEST("clip text golden tiny-sd15 (quick_gelu)") { golden_parity("tiny-sd15"); }
NCP_TEST("clip text golden tiny-sdxl (gelu)") { golden_parity("tiny-sdxl"); }

NCP_TEST("clip text config from config.json") {
  Golden a("tiny-sd15"), b("tiny-sdxl");
  const ClipTextConfig& c = a.model->config;
  NCP_EXPECT(c.hidden_size == 48 && c.num_hidden_layers == 2 && c.num_attention_heads == 4 && c.intermediate_size == 192);
  NCP_EXPECT(c.activation == ncp::cpu::Activation::QuickGelu && c.has_projection && c.projection_dim == 48);
  NCP_EXPECT(b.model->config.activation == ncp::cpu::Activation::GeluErf && b.model->config.num_hidden_layers == 3);
  NCP_EXPECT(b.model->config.num_attention_heads == 5 && b.model->config.head_dim() == 8);
}

// The manifest names exactly the file's tensors, with the stored shapes.
NCP_TEST("clip text manifest matches the files") {
  for (const std::string m : {"tiny-sd15", "tiny-sdxl"}) {
    Golden g(m);
    const SafetensorsFile f = SafetensorsFile::open(g.model->weight_files.at(0));
    const Manifest manifest = TextEncoder::manifest(g.model->config);
    std::set<std::string> names;
    for (const ParamSpec& p : manifest) {
      names.insert(p.name);
      const TensorInfo* t = f.find(p.name);
      NCP_EXPECT(t && t->shape == p.shape, m << ": " << p.name);
    }
    NCP_EXPECT(names.size() == f.tensors().size(), m << ": " << names.size() << " vs " << f.tensors().size());
  }
}

// Each row alone gives that row of the batch; a prefix of the tokens gives the same states for those tokens
// (the causal mask: no token sees a later one), except the pooled row, which moves to the prefix's largest id.
NCP_TEST("clip text batch rows and causal prefix") {
  Golden g("tiny-sdxl");
  const int64_t B = g.shape[0], L = g.shape[1], D = g.model->config.hidden_size;
  const TextEncoderOutput full = g.model->encoder->encode(g.ids.data(), B, L);
  for (int64_t b = 0; b < B; ++b) {
    const TextEncoderOutput one = g.model->encoder->encode(g.ids.data() + b * L, 1, L);
    const std::vector<float> ref(full.last_hidden_state.data.begin() + b * L * D,
                                 full.last_hidden_state.data.begin() + (b + 1) * L * D);
    expect_close("batch-1 row " + std::to_string(b), one.last_hidden_state.data, ref, kSelfTol);
    expect_close("batch-1 row text_embeds " + std::to_string(b), one.text_embeds.data,
                 std::vector<float>(full.text_embeds.data.begin() + b * 40, full.text_embeds.data.begin() + (b + 1) * 40),
                 kSelfTol);
  }
  const int64_t P = L / 2;
  std::vector<int64_t> prefix;
  for (int64_t b = 0; b < B; ++b) prefix.insert(prefix.end(), g.ids.begin() + b * L, g.ids.begin() + b * L + P);
  const TextEncoderOutput part = g.model->encoder->encode(prefix.data(), B, P);
  std::vector<float> ref, ref_pen;
  for (int64_t b = 0; b < B; ++b) {
    ref.insert(ref.end(), full.last_hidden_state.data.begin() + b * L * D, full.last_hidden_state.data.begin() + (b * L + P) * D);
    ref_pen.insert(ref_pen.end(), full.penultimate_hidden_state.data.begin() + b * L * D,
                   full.penultimate_hidden_state.data.begin() + (b * L + P) * D);
  }
  expect_close("causal prefix last_hidden_state", part.last_hidden_state.data, ref, kSelfTol);
  expect_close("causal prefix penultimate", part.penultimate_hidden_state.data, ref_pen, kSelfTol);
  // A later token changed: earlier states must not move at all.
  std::vector<int64_t> changed = g.ids;
  changed[L - 1] = (changed[L - 1] + 7) % g.model->config.vocab_size;
  const TextEncoderOutput c = g.model->encoder->encode(changed.data(), B, L);
  NCP_EXPECT(std::equal(c.last_hidden_state.data.begin(), c.last_hidden_state.data.begin() + (L - 1) * D,
                        full.last_hidden_state.data.begin()));
  NCP_EXPECT(!std::equal(c.last_hidden_state.data.begin() + (L - 1) * D, c.last_hidden_state.data.begin() + L * D,
                         full.last_hidden_state.data.begin() + (L - 1) * D));
}

NCP_TEST("clip text SD1.5 and SDXL conditioning") {
  Golden a("tiny-sd15"), b("tiny-sdxl");
  const TextEncoderOutput o1 = a.model->encoder->encode(a.ids.data(), 2, 16);
  const TextEncoderOutput o2 = b.model->encoder->encode(a.ids.data(), 2, 16);
  const TextConditioning sd15 = sd15_conditioning(o1);
  NCP_EXPECT(sd15.encoder_hidden_states.data == o1.last_hidden_state.data && sd15.text_embeds.shape.empty());
  const TextConditioning xl = sdxl_conditioning(o1, o2);
  NCP_EXPECT(xl.encoder_hidden_states.shape == (std::vector<int64_t>{2, 16, 88}));
  bool ok = true;
  for (int64_t r = 0; r < 32; ++r)
    for (int64_t j = 0; j < 88; ++j)
      ok = ok && xl.encoder_hidden_states.data[r * 88 + j] == (j < 48 ? o1.penultimate_hidden_state.data[r * 48 + j]
                                                                      : o2.penultimate_hidden_state.data[r * 40 + j - 48]);
  NCP_EXPECT(ok, "concat(penultimate 1, penultimate 2) on the feature dim");
  NCP_EXPECT(xl.text_embeds.data == o2.text_embeds.data && xl.text_embeds.shape == (std::vector<int64_t>{2, 40}));
  TextEncoderOutput no_proj = o2;
  no_proj.text_embeds = Tensor32{};
  NCP_EXPECT(error_of([&] { sdxl_conditioning(o1, no_proj); }).code() == "NCP_EINVAL");
  const TextEncoderOutput short_one = b.model->encoder->encode(a.ids.data(), 2, 8);
  NCP_EXPECT(error_of([&] { sdxl_conditioning(o1, short_one); }).code() == "NCP_ESHAPE");
}

// A CLIPTextModel (no projection) stored only as the fp16 variant, with transformers' old position_ids buffer,
// as text_encoder_2 of a folder: loads, and matches the golden states to fp16 weight precision.
NCP_TEST("clip text fp16 variant, position_ids buffer, no projection, text_encoder_2") {
  TempDir dir;
  const std::string src = golden_path("tiny-sd15/text_encoder/");
  StoredTensors t = read_stored(src + "model.safetensors");
  for (auto& [name, x] : t) x = to_f16(x);
  t.erase("text_projection.weight");
  std::vector<int64_t> pos(16);
  for (int64_t i = 0; i < 16; ++i) pos[size_t(i)] = i;
  t["text_model.embeddings.position_ids"] = {ncp::DType::I64, {1, 16},
                                             std::vector<unsigned char>((unsigned char*)pos.data(), (unsigned char*)(pos.data() + 16))};
  std::filesystem::create_directories(dir / "text_encoder_2");
  write_stored(dir / "text_encoder_2/model.fp16.safetensors", t);
  std::string config = read_file(src + "config.json");
  config.replace(config.find("CLIPTextModelWithProjection"), 27, "CLIPTextModel");
  write_file(dir / "text_encoder_2/config.json", config);

  const auto m = load_text_encoder(dir.path(), "text_encoder_2");
  NCP_EXPECT(!m->config.has_projection && m->config.has_position_ids_buffer);
  NCP_EXPECT(contains(m->weight_files.at(0), "model.fp16.safetensors"));
  Golden g("tiny-sd15");
  const TextEncoderOutput o = m->encoder->encode(g.ids.data(), 2, 16);
  NCP_EXPECT(o.text_embeds.shape.empty() && o.text_embeds.data.empty());
  expect_close("fp16 weights last_hidden_state", o.last_hidden_state.data, g.ref("out.last_hidden_state"), 1e-2);
  expect_close("fp16 weights pooled", o.pooled.data, g.ref("out.pooled"), 1e-2);
  // The matrices stay fp16 in the mapped file (the token embedding is copied) and compute exactly as float32 copies.
  size_t matrices = 0;
  for (const auto& p : TextEncoder::manifest(m->config)) matrices += p.matrix;
  NCP_EXPECT(matrices == 12 && m->weights.mapped().size() == matrices &&
                 m->weights.mapped().begin()->second.values.dtype == ncp::DType::F16,
             matrices << " " << m->weights.mapped().size());
  NCP_EXPECT(!m->weights.has("text_model.embeddings.token_embedding.weight") ||
             m->weights.all().count("text_model.embeddings.token_embedding.weight"));
  const WeightMap copied = load_weights(TextEncoder::manifest(m->config), m->weight_files);
  const TextEncoderOutput r = TextEncoder(m->config, copied).encode(g.ids.data(), 2, 16);
  NCP_EXPECT(r.last_hidden_state.data == o.last_hidden_state.data && r.pooled.data == o.pooled.data,
             "fp16 matrices used in place differ from their float32 copies");

  // Through the file path of `forward --component text-encoder-2`: no out.text_embeds without a projection.
  write_stored(dir / "in.safetensors", {{"in.input_ids", read_stored(golden_path("tiny-sd15/text_encoder.safetensors")).at("in.input_ids")}});
  ForwardJob job;
  job.model_dir = dir.path(), job.component = "text-encoder-2", job.input = dir / "in.safetensors", job.output = dir / "out.safetensors";
  const auto names = forward_component_file(job);
  NCP_EXPECT(names == (std::vector<std::string>{"out.last_hidden_state", "out.penultimate_hidden_state", "out.pooled"}));
  const SafetensorsFile out = SafetensorsFile::open(job.output);
  NCP_EXPECT(out.get("out.pooled").shape == (std::vector<int64_t>{2, 48}));
  job.component = "text-encoder";  // this folder has no text_encoder/
  NCP_EXPECT(contains(error_of([&] { forward_component_file(job); }).what(), "text_encoder"));
}

NCP_TEST("clip text file path writes the golden names") {
  TempDir dir;
  ForwardJob job;
  job.model_dir = golden_path("tiny-sdxl"), job.component = "text-encoder";
  job.input = golden_path("tiny-sdxl/text_encoder.safetensors"), job.output = dir / "out.safetensors";
  const auto names = forward_component_file(job);
  NCP_EXPECT(names.size() == 4);
  const SafetensorsFile out = SafetensorsFile::open(job.output), ref = SafetensorsFile::open(job.input);
  for (const auto& n : names) expect_close("file " + n, out.read_f32(n), ref.read_f32(n), kGoldenTol);
  job.trace = true;
  NCP_EXPECT(error_of([&] { forward_component_file(job); }).code() == "NCP_EINVAL");
  job.trace = false, job.component = "text-encoder-3";
  const ncp::Error e = error_of([&] { forward_component_file(job); });
  NCP_EXPECT(e.code() == "NCP_EINVAL" && contains(e.what(), "text-encoder-2"), e.what());
}

// A copy of tiny-sd15's text encoder with its weights or config edited.
std::string broken(const TempDir& dir, const std::function<void(StoredTensors&)>& edit_weights,
                   const std::function<void(std::string&)>& edit_config = nullptr) {
  return edited_component(dir.path(), "tiny-sd15/text_encoder", "model.safetensors", edit_weights, edit_config);
}

NCP_TEST("clip text errors name the tensor, the shape and the field") {
  {
    TempDir d;
    const ncp::Error e = error_of([&] {
      load_text_encoder(broken(d, [](StoredTensors& t) { t.erase("text_model.encoder.layers.1.mlp.fc2.weight"); }));
    });
    NCP_EXPECT(e.code() == "NCP_EWEIGHTS" && contains(e.what(), "missing: text_model.encoder.layers.1.mlp.fc2.weight"), e.what());
  }
  {
    TempDir d;
    const ncp::Error e = error_of([&] {
      load_text_encoder(broken(d, [](StoredTensors& t) { t["text_model.final_layer_norm.bias"] = zeros_f32({40}); }));
    });
    NCP_EXPECT(e.code() == "NCP_EWEIGHTS" && contains(e.what(), "text_model.final_layer_norm.bias file [40] expected [48]"),
               e.what());
  }
  {
    TempDir d;
    const ncp::Error e = error_of([&] {
      load_text_encoder(broken(d, nullptr, [](std::string& c) { c.replace(c.find("quick_gelu"), 10, "swish"); }));
    });
    NCP_EXPECT(e.code() == "NCP_ECONFIG" && contains(e.what(), "hidden_act = \"swish\"") && contains(e.what(), "config.json"),
               e.what());
  }
  {
    TempDir d;
    const ncp::Error e = error_of([&] {
      load_text_encoder(broken(d, nullptr, [](std::string& c) {
        c.replace(c.find("\"num_attention_heads\": 4"), 24, "\"num_attention_heads\": 5");
      }));
    });
    NCP_EXPECT(e.code() == "NCP_ECONFIG" && contains(e.what(), "num_attention_heads = 5"), e.what());
  }
  {
    TempDir d;
    const ncp::Error e = error_of([&] { load_text_encoder(d.path()); });
    NCP_EXPECT(e.code() == "NCP_EIO" && contains(e.what(), "text_encoder"), e.what());
  }
  Golden g("tiny-sd15");
  std::vector<int64_t> ids = g.ids;
  ids[17] = 300;
  ncp::Error e = error_of([&] { g.model->encoder->encode(ids.data(), 2, 16); });
  NCP_EXPECT(e.code() == "NCP_EINVAL" && contains(e.what(), "input_ids[1, 1] = 300"), e.what());
  std::vector<int64_t> long_ids(17, 5);
  e = error_of([&] { g.model->encoder->encode(long_ids.data(), 1, 17); });
  NCP_EXPECT(e.code() == "NCP_ESHAPE" && contains(e.what(), "max_position_embeddings = 16"), e.what());
}

}  // namespace
