#include "model/clip_text.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "model/config_reader.h"
#include "model/json.h"
#include "model/model_folder.h"
#include "model/safetensors.h"

namespace ncp::model {
namespace {

using cpu::Activation;

constexpr const char* kProjection = "text_projection.weight";
constexpr const char* kPositionIds = "text_model.embeddings.position_ids";

std::string layer_name(int64_t i) { return "text_model.encoder.layers." + std::to_string(i); }

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor32 zeros(std::vector<int64_t> shape) {
  Tensor32 t;
  t.data.resize(size_t(numel(shape)));
  t.shape = std::move(shape);
  return t;
}

// The config checks the parser makes, again for hand-built configs, before any size is derived from them.
void check_config(const ClipTextConfig& c) {
  auto fail = [](const std::string& what) { throw Error("NCP_ECONFIG", "CLIP text config: " + what); };
  if (c.vocab_size < 1 || c.hidden_size < 1 || c.intermediate_size < 1 || c.num_hidden_layers < 1 ||
      c.num_attention_heads < 1 || c.max_position_embeddings < 1 || (c.has_projection && c.projection_dim < 1))
    fail("every size must be >= 1");
  if (c.hidden_size % c.num_attention_heads != 0)
    fail("num_attention_heads (" + std::to_string(c.num_attention_heads) + ") does not divide hidden_size (" +
         std::to_string(c.hidden_size) + ")");
}

}  // namespace

ClipTextConfig parse_clip_text_config(const std::string& json_text, const std::string& source) {
  const json::Value root = json::parse(json_text, "NCP_ECONFIG", source);
  if (!root.is_object()) throw Error("NCP_ECONFIG", source + ": not a JSON object");
  // A whole CLIPModel's config nests the text tower's fields under "text_config".
  const json::Value* nested = root.find("text_config");
  const json::Value& fields = nested && nested->is_object() ? *nested : root;
  const ConfigReader r(fields, source);
  ClipTextConfig c;

  c.vocab_size = r.integer("vocab_size", c.vocab_size, 1);
  c.hidden_size = r.integer("hidden_size", c.hidden_size, 1);
  c.intermediate_size = r.integer("intermediate_size", c.intermediate_size, 1);
  c.num_hidden_layers = r.integer("num_hidden_layers", c.num_hidden_layers, 1);
  c.num_attention_heads = r.integer("num_attention_heads", c.num_attention_heads, 1);
  c.max_position_embeddings = r.integer("max_position_embeddings", c.max_position_embeddings, 1);
  c.projection_dim = r.integer("projection_dim", c.projection_dim, 1);
  c.layer_norm_eps = r.positive("layer_norm_eps", c.layer_norm_eps);
  // Informational only (pooling takes each row's largest id), so an odd form is not worth rejecting the model.
  if (const json::Value* v = r.get("eos_token_id"); v && v->is_integer()) c.eos_token_id = v->as_int();
  if (const json::Value* v = r.get("bos_token_id"); v && v->is_integer()) c.bos_token_id = v->as_int();
  if (c.hidden_size % c.num_attention_heads != 0)
    r.fail("num_attention_heads", *r.get("num_attention_heads"),
           "does not divide hidden_size = " + std::to_string(c.hidden_size));

  c.hidden_act = r.string("hidden_act", c.hidden_act);
  if (c.hidden_act == "quick_gelu") c.activation = Activation::QuickGelu;
  else if (c.hidden_act == "gelu") c.activation = Activation::GeluErf;
  else if (c.hidden_act == "gelu_new" || c.hidden_act == "gelu_pytorch_tanh") c.activation = Activation::GeluTanh;
  else
    r.fail("hidden_act", *r.get("hidden_act"),
           "unsupported activation (supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)");

  // transformers names the class in "architectures"; the loader also looks for the tensor itself.
  if (const json::Value* arch = root.find("architectures"); arch && arch->is_array())
    for (const auto& a : arch->items())
      if (a.is_string() && a.as_string() == "CLIPTextModelWithProjection") c.has_projection = true;
  return c;
}

Manifest TextEncoder::manifest(const ClipTextConfig& config) {
  Manifest m;
  const TextEncoder recorder(config, ParamSource(m));
  return m;
}

TextEncoder::TextEncoder(const ClipTextConfig& config, const WeightMap& weights)
    : TextEncoder(config, ParamSource(weights)) {}

TextEncoder::TextEncoder(const ClipTextConfig& c, ParamSource p) : config_(c) {
  check_config(c);
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  const double eps = c.layer_norm_eps;
  token_embedding_ = p.take("text_model.embeddings.token_embedding.weight", {c.vocab_size, D});
  position_embedding_ = p.take("text_model.embeddings.position_embedding.weight", {c.max_position_embeddings, D});
  if (c.has_position_ids_buffer) p.take(kPositionIds, c.position_ids_shape);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string pre = layer_name(i);
    Layer l;
    l.layer_norm1 = LayerNorm(p, pre + ".layer_norm1", D, eps);
    l.q_proj = Linear(p, pre + ".self_attn.q_proj", D, D);
    l.k_proj = Linear(p, pre + ".self_attn.k_proj", D, D);
    l.v_proj = Linear(p, pre + ".self_attn.v_proj", D, D);
    l.out_proj = Linear(p, pre + ".self_attn.out_proj", D, D);
    l.layer_norm2 = LayerNorm(p, pre + ".layer_norm2", D, eps);
    l.fc1 = Linear(p, pre + ".mlp.fc1", D, F);
    l.fc2 = Linear(p, pre + ".mlp.fc2", F, D);
    layers_.push_back(l);
  }
  final_layer_norm_ = LayerNorm(p, "text_model.final_layer_norm", D, eps);
  if (c.has_projection) text_projection_ = Linear(p, "text_projection", D, c.projection_dim, false);
}

TextEncoderOutput TextEncoder::encode(const int64_t* ids, int64_t B, int64_t L) const {
  const ClipTextConfig& c = config_;
  check(B >= 1 && L >= 1, "NCP_ESHAPE",
        "text encoder: input_ids [" + std::to_string(B) + ", " + std::to_string(L) + "] must not be empty");
  check(L <= c.max_position_embeddings, "NCP_ESHAPE",
        "text encoder: input_ids has " + std::to_string(L) + " tokens per row, more than max_position_embeddings = " +
            std::to_string(c.max_position_embeddings));
  check(ids != nullptr, "NCP_EINVAL", "text encoder: input_ids is null");
  for (int64_t i = 0; i < B * L; ++i)
    if (ids[i] < 0 || ids[i] >= c.vocab_size)
      throw Error("NCP_EINVAL", "text encoder: input_ids[" + std::to_string(i / L) + ", " + std::to_string(i % L) +
                                    "] = " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                                    std::to_string(c.vocab_size) + ")");

  const int64_t D = c.hidden_size, F = c.intermediate_size, rows = B * L, n = rows * D;
  TextEncoderOutput out;
  out.penultimate_hidden_state = zeros({B, L, D});
  out.last_hidden_state = zeros({B, L, D});

  // Embeddings: token row plus position row.
  std::vector<float> h(size_t(n), 0.f);
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* tok = token_embedding_ + ids[r] * D;
      const float* pos = position_embedding_ + (r % L) * D;
      float* y = h.data() + r * D;
      for (int64_t j = 0; j < D; ++j) y[j] = tok[j] + pos[j];
    }
  });

  NormStats stats;
  Buffer normed, q, k, v, attn, branch, hidden;
  const cpu::AttentionShape shape{B, L, L, c.num_attention_heads, c.head_dim(), /*causal=*/true};
  const int64_t nl = int64_t(layers_.size());
  for (int64_t i = 0; i < nl; ++i) {
    if (i == nl - 1) std::copy(h.begin(), h.end(), out.penultimate_hidden_state.data.begin());
    const Layer& l = layers_[size_t(i)];
    // Pre-norm self-attention under the causal mask, then the residual.
    l.layer_norm1.forward(normed.ensure(n), stats, h.data(), rows);
    l.q_proj.forward(q.ensure(n), normed.data(), rows);
    l.k_proj.forward(k.ensure(n), normed.data(), rows);
    l.v_proj.forward(v.ensure(n), normed.data(), rows);
    cpu::attention_forward<float>(attn.ensure(n), nullptr, q.data(), k.data(), v.data(), shape);
    l.out_proj.forward(branch.ensure(n), attn.data(), rows);
    cpu::add_forward(h.data(), h.data(), branch.data(), n);
    // Pre-norm MLP: fc1 -> activation -> fc2, then the residual.
    l.layer_norm2.forward(normed.ensure(n), stats, h.data(), rows);
    l.fc1.forward(hidden.ensure(rows * F), normed.data(), rows);
    cpu::activation_forward(c.activation, hidden.data(), hidden.data(), rows * F);
    l.fc2.forward(branch.ensure(n), hidden.data(), rows);
    cpu::add_forward(h.data(), h.data(), branch.data(), n);
  }
  final_layer_norm_.forward(out.last_hidden_state.data.data(), stats, h.data(), rows);

  // Pooled: each row's state at its largest id (the first such position, as torch.argmax).
  out.pooled = zeros({B, D});
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = ids + b * L;
    const int64_t at = std::max_element(row, row + L) - row;
    std::memcpy(out.pooled.data.data() + b * D, out.last_hidden_state.data.data() + (b * L + at) * D,
                size_t(D) * sizeof(float));
  }
  if (c.has_projection) {
    out.text_embeds = zeros({B, c.projection_dim});
    text_projection_.forward(out.text_embeds.data.data(), out.pooled.data.data(), B);
  }
  return out;
}

std::unique_ptr<LoadedTextEncoder> load_text_encoder(const std::string& model_dir, const std::string& component,
                                                     const std::string& variant) {
  const ComponentFiles files = resolve_component_files(model_dir, component, "model", variant);
  auto m = std::make_unique<LoadedTextEncoder>();
  m->model_dir = model_dir;
  m->component = component;
  m->weight_files = files.weight_files;
  m->config = parse_clip_text_config(files.config_text, files.config_path);
  // Which optional tensors the files hold (headers only; the data is read once, by load_weights).
  for (const auto& path : files.weight_files) {
    const SafetensorsFile f = SafetensorsFile::open(path);
    if (f.find(kProjection)) m->config.has_projection = true;
    if (const TensorInfo* t = f.find(kPositionIds)) {
      m->config.has_position_ids_buffer = true;
      m->config.position_ids_shape = t->shape;
    }
  }
  // The projection and MLP matrices stay in the mapped file (the token embedding is copied: it is gathered, not
  // multiplied): CLIP-G's 1.4 GB of fp16 loads without a 2.8 GB float32 copy.
  m->weights = load_weights(TextEncoder::manifest(m->config), files.weight_files, "", model_load_mode());
  m->encoder = std::make_unique<TextEncoder>(m->config, m->weights);
  return m;
}

TextConditioning sd15_conditioning(const TextEncoderOutput& te) {
  TextConditioning c;
  c.encoder_hidden_states = te.last_hidden_state;
  return c;
}

TextConditioning sdxl_conditioning(const TextEncoderOutput& te1, const TextEncoderOutput& te2) {
  const auto& a = te1.penultimate_hidden_state.shape;
  const auto& b = te2.penultimate_hidden_state.shape;
  check(a.size() == 3 && b.size() == 3 && a[0] == b[0] && a[1] == b[1], "NCP_ESHAPE",
        "sdxl_conditioning: penultimate hidden states " + shape_str(a) + " and " + shape_str(b) +
            " must agree in batch and length");
  check(!te2.text_embeds.shape.empty(), "NCP_EINVAL",
        "sdxl_conditioning: the second text encoder has no text_projection (SDXL's text_encoder_2 is a "
        "CLIPTextModelWithProjection)");
  const int64_t rows = a[0] * a[1], D1 = a[2], D2 = b[2];
  TextConditioning c;
  c.encoder_hidden_states = zeros({a[0], a[1], D1 + D2});
  for (int64_t r = 0; r < rows; ++r) {
    float* y = c.encoder_hidden_states.data.data() + r * (D1 + D2);
    std::memcpy(y, te1.penultimate_hidden_state.data.data() + r * D1, size_t(D1) * sizeof(float));
    std::memcpy(y + D1, te2.penultimate_hidden_state.data.data() + r * D2, size_t(D2) * sizeof(float));
  }
  c.text_embeds = te2.text_embeds;
  return c;
}

}  // namespace ncp::model
