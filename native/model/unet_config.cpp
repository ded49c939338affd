// Reads diffusers' UNet2DConditionModel config.json with diffusers 0.25's semantics and defaults. Fields that
// would change the architecture in a way the U-Net module does not implement are rejected rather than ignored:
// silently building a different network would only show up as wrong images much later.
#include "model/unet_config.h"

#include "core/error.h"
#include "model/config_reader.h"
#include "model/json.h"

namespace ncp::model {

namespace {

// The shared config reader (errors, typed access), with this file's stricter rules: a field written as null is an
// error unless the caller handles null itself, as diffusers would fail on most of them too.
class Reader : public ConfigReader {
 public:
  using ConfigReader::ConfigReader;
  using ConfigReader::integer;

  const json::Value& required(const char* field) const {
    const json::Value* v = get(field);
    if (!v) fail(std::string("missing required field \"") + field + "\"");
    return *v;
  }

  int64_t integer(const char* field, int64_t fallback, int64_t min) const {
    const json::Value* v = get(field);
    return v ? integer(field, *v, min) : fallback;
  }

  double number(const char* field, double fallback) const {
    const json::Value* v = get(field);
    if (!v) return fallback;
    if (!v->is_number()) fail(field, *v, "must be a number");
    return v->as_double();
  }

  bool boolean(const char* field, bool fallback) const {
    const json::Value* v = get(field);
    if (!v) return fallback;
    if (!v->is_bool()) fail(field, *v, "must be true or false");
    return v->as_bool();
  }

  // Positive integers, one per level: a scalar is broadcast, a list must have `levels` entries.
  std::vector<int64_t> per_level(const char* field, const json::Value& v, int64_t levels) const {
    if (v.is_array()) {
      if (int64_t(v.items().size()) != levels)
        fail(field, v, "has " + std::to_string(v.items().size()) + " entries but block_out_channels has " +
                           std::to_string(levels) + " levels");
      std::vector<int64_t> out;
      for (size_t i = 0; i < v.items().size(); ++i)
        out.push_back(integer(std::string(field) + "[" + std::to_string(i) + "]", v.items()[i], 1));
      return out;
    }
    return std::vector<int64_t>(size_t(levels), integer(field, v, 1));
  }

  std::vector<std::string> string_list(const char* field, int64_t levels) const {
    const json::Value& v = required(field);
    if (!v.is_array()) fail(field, v, "must be a list of block type names");
    if (int64_t(v.items().size()) != levels)
      fail(field, v, "has " + std::to_string(v.items().size()) + " entries but block_out_channels has " +
                         std::to_string(levels) + " levels");
    std::vector<std::string> out;
    for (size_t i = 0; i < v.items().size(); ++i) {
      if (!v.items()[i].is_string()) fail(std::string(field) + "[" + std::to_string(i) + "]", v.items()[i],
                                          "must be a block type name");
      out.push_back(v.items()[i].as_string());
    }
    return out;
  }

  // The field, when present, must equal `supported` (its diffusers default).
  void only_string(const char* field, const char* supported) const {
    const json::Value* v = get(field);
    if (v && !(v->is_string() && v->as_string() == supported))
      fail(field, *v, std::string("not supported (only \"") + supported + "\")");
  }
  void only_null(const char* field) const {
    const json::Value* v = get(field);
    if (v && !v->is_null()) fail(field, *v, "not supported (must be null)");
  }
  // false, or a per-block list of false.
  void only_false(const char* field) const {
    const json::Value* v = get(field);
    if (!v) return;
    bool ok = v->is_bool() && !v->as_bool();
    if (v->is_array()) {
      ok = true;
      for (const auto& x : v->items()) ok = ok && x.is_bool() && !x.as_bool();
    }
    if (!ok) fail(field, *v, "not supported (must be false)");
  }
  void only_number(const char* field, int supported) const {
    const json::Value* v = get(field);
    if (v && !(v->is_number() && v->as_double() == supported))
      fail(field, *v, "not supported (only " + std::to_string(supported) + ")");
  }
};

}  // namespace

UNetConfig parse_unet_config(const std::string& json_text, const std::string& source) {
  const json::Value root = json::parse(json_text, "NCP_ECONFIG", source);
  if (!root.is_object()) throw Error("NCP_ECONFIG", source + ": not a JSON object");
  const Reader r(root, source);
  UNetConfig c;

  r.only_string("_class_name", "UNet2DConditionModel");

  const json::Value& channels = r.required("block_out_channels");
  if (!channels.is_array() || channels.items().empty())
    r.fail("block_out_channels", channels, "must be a non-empty list of channel counts");
  for (size_t i = 0; i < channels.items().size(); ++i)
    c.block_out_channels.push_back(r.integer("block_out_channels[" + std::to_string(i) + "]", channels.items()[i], 1));
  const int64_t levels = c.levels();

  const auto down = r.string_list("down_block_types", levels);
  for (size_t i = 0; i < down.size(); ++i) {
    if (down[i] == "CrossAttnDownBlock2D") c.down_block_types.push_back(DownBlockType::CrossAttnDown);
    else if (down[i] == "DownBlock2D") c.down_block_types.push_back(DownBlockType::Down);
    else r.fail("down_block_types[" + std::to_string(i) + "]", r.get("down_block_types")->items()[i],
                "unknown block type (supported: CrossAttnDownBlock2D, DownBlock2D)");
  }
  const auto up = r.string_list("up_block_types", levels);
  for (size_t i = 0; i < up.size(); ++i) {
    if (up[i] == "CrossAttnUpBlock2D") c.up_block_types.push_back(UpBlockType::CrossAttnUp);
    else if (up[i] == "UpBlock2D") c.up_block_types.push_back(UpBlockType::Up);
    else r.fail("up_block_types[" + std::to_string(i) + "]", r.get("up_block_types")->items()[i],
                "unknown block type (supported: CrossAttnUpBlock2D, UpBlock2D)");
  }

  const json::Value* mid = r.get("mid_block_type");
  if (mid && !mid->is_null() && !(mid->is_string() && mid->as_string() == "UNetMidBlock2DCrossAttn"))
    r.fail("mid_block_type", *mid, "not supported (only \"UNetMidBlock2DCrossAttn\" or null)");
  c.has_mid_block = !(mid && mid->is_null());

  const json::Value& cross = r.required("cross_attention_dim");
  if (cross.is_array()) r.fail("cross_attention_dim", cross, "per-block cross attention widths are not supported");
  c.cross_attention_dim = r.integer("cross_attention_dim", cross, 1);

  c.in_channels = r.integer("in_channels", c.in_channels, 1);
  c.out_channels = r.integer("out_channels", c.out_channels, 1);
  const json::Value* sample = r.get("sample_size");
  if (sample && !sample->is_null()) c.sample_size = r.integer("sample_size", *sample, 1);
  const json::Value* layers = r.get("layers_per_block");
  if (layers && layers->is_array()) r.fail("layers_per_block", *layers, "per-block layer counts are not supported");
  c.layers_per_block = r.integer("layers_per_block", c.layers_per_block, 1);

  // diffusers: num_attention_heads = num_attention_heads or attention_head_dim (default 8); the SD1.x configs
  // store the head count under attention_head_dim.
  const json::Value* heads = r.get("num_attention_heads");
  const char* heads_field = "num_attention_heads";
  if (!heads || heads->is_null()) {
    heads = r.get("attention_head_dim");
    heads_field = "attention_head_dim";
  }
  if (heads) {
    if (heads->is_null()) r.fail(heads_field, *heads, "must give the attention head count");
    c.num_attention_heads = r.per_level(heads_field, *heads, levels);
  } else {
    c.num_attention_heads.assign(size_t(levels), 8);
  }
  const json::Value* depth = r.get("transformer_layers_per_block");
  c.transformer_layers_per_block =
      depth ? r.per_level("transformer_layers_per_block", *depth, levels) : std::vector<int64_t>(size_t(levels), 1);

  // A level's transformer splits its channels evenly over the heads (diffusers would otherwise shrink the inner
  // width to heads * (channels / heads), which the module does not build).
  const auto check_heads = [&](int64_t level) {
    const int64_t ch = c.block_out_channels[size_t(level)], h = c.num_attention_heads[size_t(level)];
    if (ch % h != 0) {
      const json::Value& v = heads->is_array() ? heads->items()[size_t(level)] : *heads;
      r.fail(std::string(heads_field) + (heads->is_array() ? "[" + std::to_string(level) + "]" : ""), v,
             "does not divide block_out_channels[" + std::to_string(level) + "] = " + std::to_string(ch));
    }
  };
  for (int64_t i = 0; i < levels; ++i) {
    if (c.down_block_types[size_t(i)] == DownBlockType::CrossAttnDown) check_heads(i);
    if (c.up_block_types[size_t(levels - 1 - i)] == UpBlockType::CrossAttnUp) check_heads(i);
  }
  if (c.has_mid_block) check_heads(levels - 1);

  c.use_linear_projection = r.boolean("use_linear_projection", c.use_linear_projection);
  c.norm_num_groups = r.integer("norm_num_groups", c.norm_num_groups, 1);
  for (int64_t i = 0; i < levels; ++i)
    if (c.block_out_channels[size_t(i)] % c.norm_num_groups != 0)
      r.fail("norm_num_groups", *r.get("norm_num_groups"),
             "does not divide block_out_channels[" + std::to_string(i) + "] = " +
                 std::to_string(c.block_out_channels[size_t(i)]));
  c.norm_eps = r.number("norm_eps", c.norm_eps);
  if (!(c.norm_eps > 0)) r.fail("norm_eps", *r.get("norm_eps"), "must be positive");
  c.flip_sin_to_cos = r.boolean("flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = r.number("freq_shift", c.freq_shift);
  c.center_input_sample = r.boolean("center_input_sample", c.center_input_sample);

  const json::Value* add = r.get("addition_embed_type");
  if (add && !add->is_null()) {
    if (!(add->is_string() && add->as_string() == "text_time"))
      r.fail("addition_embed_type", *add, "not supported (only \"text_time\" or null)");
    c.text_time_embedding = true;
    const json::Value& time_dim = r.required("addition_time_embed_dim");
    c.addition_time_embed_dim = r.integer("addition_time_embed_dim", time_dim, 1);
    const json::Value& proj = r.required("projection_class_embeddings_input_dim");
    c.projection_class_embeddings_input_dim = r.integer("projection_class_embeddings_input_dim", proj, 1);
    if (c.projection_class_embeddings_input_dim <= 6 * c.addition_time_embed_dim)
      r.fail("projection_class_embeddings_input_dim", proj,
             "leaves no room for the pooled text embeds next to 6 time ids of addition_time_embed_dim = " +
                 std::to_string(c.addition_time_embed_dim));
  }

  // Architecture switches this U-Net does not implement: each must hold its diffusers default.
  r.only_string("act_fn", "silu");
  r.only_string("time_embedding_type", "positional");
  r.only_string("resnet_time_scale_shift", "default");
  r.only_string("attention_type", "default");
  for (const char* f : {"class_embed_type", "num_class_embeds", "encoder_hid_dim_type", "time_cond_proj_dim",
                        "reverse_transformer_layers_per_block", "time_embedding_dim", "time_embedding_act_fn",
                        "timestep_post_act", "cross_attention_norm"})
    r.only_null(f);
  // upcast_attention (SD2.x) asks for float32 attention scores: every score here is float32 already, so accept it.
  for (const char* f : {"dual_cross_attention", "only_cross_attention"}) r.only_false(f);
  r.only_number("conv_in_kernel", 3);
  r.only_number("conv_out_kernel", 3);
  r.only_number("downsample_padding", 1);
  r.only_number("mid_block_scale_factor", 1);
  r.only_number("resnet_out_scale_factor", 1);
  return c;
}

}  // namespace ncp::model
