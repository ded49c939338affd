// parse_unet_config on the two golden diffusers configs (SD1.5- and SDXL-style), diffusers' head-count rules, and
// one rejection per unsupported or malformed field, each checked to name the field and the offending value.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/json.h"
#include "model/unet_config.h"
#include "tests/fixtures.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using namespace ncp::model;
using V = std::vector<int64_t>;

UNetConfig golden_config(const std::string& model) {
  const std::string path = golden_path(model + "/unet/config.json");
  return parse_unet_config(read_file(path), path);
}

// The golden SD1.5 config with fields replaced (raw JSON text) or removed (empty text).
std::string sd15_with(const std::map<std::string, std::string>& changes) {
  const ncp::json::Value base =
      ncp::json::parse(read_file(golden_path("tiny-sd15/unet/config.json")), "NCP_EFORMAT", "sd15 config");
  std::map<std::string, std::string> fields;
  for (const auto& m : base.members()) fields[m.key] = ncp::json::to_string(m.value);
  for (const auto& c : changes) fields[c.first] = c.second;
  std::string text = "{";
  for (const auto& f : fields) {
    if (f.second.empty()) continue;
    text += (text.size() > 1 ? ",\n" : "") + ncp::json::quote(f.first) + ": " + f.second;
  }
  return text + "}";
}

NCP_TEST("unet_config: golden tiny-sd15 (attention_head_dim read as the head count)") {
  const UNetConfig c = golden_config("tiny-sd15");
  NCP_EXPECT(c.levels() == 3 && c.block_out_channels == V({32, 64, 64}), c.levels());
  NCP_EXPECT(c.down_block_types == std::vector<DownBlockType>({DownBlockType::CrossAttnDown,
                                                               DownBlockType::CrossAttnDown, DownBlockType::Down}),
             "down block types");
  NCP_EXPECT(c.up_block_types ==
                 std::vector<UpBlockType>({UpBlockType::Up, UpBlockType::CrossAttnUp, UpBlockType::CrossAttnUp}),
             "up block types");
  NCP_EXPECT(c.num_attention_heads == V({4, 4, 4}), ncp::shape_str(c.num_attention_heads));
  NCP_EXPECT(c.transformer_layers_per_block == V({1, 1, 1}), ncp::shape_str(c.transformer_layers_per_block));
  NCP_EXPECT(c.has_mid_block && !c.text_time_embedding && !c.use_linear_projection, "switches");
  NCP_EXPECT(c.cross_attention_dim == 48 && c.norm_num_groups == 8 && c.norm_eps == 1e-5 && c.layers_per_block == 2,
             c.cross_attention_dim << " " << c.norm_num_groups << " " << c.norm_eps);
  NCP_EXPECT(c.in_channels == 4 && c.out_channels == 4 && c.sample_size == 16 && c.time_embed_dim() == 128,
             c.sample_size);
  NCP_EXPECT(c.flip_sin_to_cos && c.freq_shift == 0 && !c.center_input_sample, "time embedding flags");
}

NCP_TEST("unet_config: golden tiny-sdxl (per-level heads and depth, text_time embedding)") {
  const UNetConfig c = golden_config("tiny-sdxl");
  NCP_EXPECT(c.block_out_channels == V({32, 48, 64}), ncp::shape_str(c.block_out_channels));
  NCP_EXPECT(c.down_block_types[0] == DownBlockType::Down && c.up_block_types[2] == UpBlockType::Up, "types");
  NCP_EXPECT(c.num_attention_heads == V({2, 3, 4}), ncp::shape_str(c.num_attention_heads));
  NCP_EXPECT(c.transformer_layers_per_block == V({1, 1, 2}), ncp::shape_str(c.transformer_layers_per_block));
  NCP_EXPECT(c.text_time_embedding && c.addition_time_embed_dim == 8 && c.projection_class_embeddings_input_dim == 88,
             c.addition_time_embed_dim << " " << c.projection_class_embeddings_input_dim);
  NCP_EXPECT(c.use_linear_projection && c.cross_attention_dim == 40, c.cross_attention_dim);
}

NCP_TEST("unet_config: num_attention_heads wins over attention_head_dim; scalars broadcast; defaults") {
  UNetConfig c = parse_unet_config(sd15_with({{"num_attention_heads", "[8, 2, 16]"}}), "c.json");
  NCP_EXPECT(c.num_attention_heads == V({8, 2, 16}), ncp::shape_str(c.num_attention_heads));
  c = parse_unet_config(sd15_with({{"num_attention_heads", "2"}, {"attention_head_dim", "[1, 1]"}}), "c.json");
  NCP_EXPECT(c.num_attention_heads == V({2, 2, 2}), ncp::shape_str(c.num_attention_heads));
  c = parse_unet_config(sd15_with({{"attention_head_dim", "[2, 4, 8]"}, {"transformer_layers_per_block", "[1, 2, 3]"}}),
                        "c.json");
  NCP_EXPECT(c.num_attention_heads == V({2, 4, 8}) && c.transformer_layers_per_block == V({1, 2, 3}),
             ncp::shape_str(c.num_attention_heads) << " " << ncp::shape_str(c.transformer_layers_per_block));
  // Without either field diffusers' default attention_head_dim = 8 applies; without mid_block_type the
  // cross-attention mid block does. null removes the mid block. dropout does not matter.
  c = parse_unet_config(sd15_with({{"num_attention_heads", ""}, {"attention_head_dim", ""}, {"mid_block_type", ""},
                                   {"transformer_layers_per_block", ""}, {"dropout", "0.1"}}),
                        "c.json");
  NCP_EXPECT(c.num_attention_heads == V({8, 8, 8}) && c.has_mid_block && c.transformer_layers_per_block == V({1, 1, 1}),
             ncp::shape_str(c.num_attention_heads));
  c = parse_unet_config(sd15_with({{"mid_block_type", "null"}, {"resnet_out_scale_factor", "1"}}), "c.json");
  NCP_EXPECT(!c.has_mid_block, "mid_block_type null");
}

NCP_TEST("unet_config: each unsupported or malformed field is NCP_ECONFIG naming the field and its value") {
  struct Case {
    std::map<std::string, std::string> changes;
    std::vector<std::string> says;
  };
  const std::vector<Case> cases = {
      {{{"down_block_types", R"(["CrossAttnDownBlock2D", "FooBlock2D", "DownBlock2D"])"}},
       {"down_block_types[1]", "\"FooBlock2D\"", "unknown block type"}},
      {{{"up_block_types", R"(["UpBlock2D", "CrossAttnUpBlock2D", "FooBlock2D"])"}},
       {"up_block_types[2]", "\"FooBlock2D\""}},
      {{{"down_block_types", R"(["CrossAttnDownBlock2D", "DownBlock2D"])"}}, {"down_block_types", "2 entries", "3 levels"}},
      {{{"up_block_types", R"(["UpBlock2D"])"}}, {"up_block_types", "1 entries"}},
      {{{"attention_head_dim", "[4, 4]"}}, {"attention_head_dim = [4, 4]", "2 entries"}},
      {{{"num_attention_heads", "[4, 4, 4, 4]"}}, {"num_attention_heads = [4, 4, 4, 4]", "4 entries"}},
      {{{"transformer_layers_per_block", "[1, 1]"}}, {"transformer_layers_per_block = [1, 1]"}},
      {{{"transformer_layers_per_block", "0"}}, {"transformer_layers_per_block = 0", "at least 1"}},
      {{{"num_attention_heads", "3"}}, {"num_attention_heads = 3", "does not divide block_out_channels[0] = 32"}},
      {{{"attention_head_dim", "[4, 6, 4]"}}, {"attention_head_dim[1] = 6", "block_out_channels[1] = 64"}},
      {{{"attention_head_dim", "null"}}, {"attention_head_dim = null"}},
      {{{"act_fn", "\"gelu\""}}, {"act_fn = \"gelu\"", "only \"silu\""}},
      {{{"time_embedding_type", "\"fourier\""}}, {"time_embedding_type = \"fourier\""}},
      {{{"class_embed_type", "\"timestep\""}}, {"class_embed_type = \"timestep\"", "must be null"}},
      {{{"encoder_hid_dim_type", "\"text_proj\""}}, {"encoder_hid_dim_type = \"text_proj\""}},
      {{{"time_cond_proj_dim", "256"}}, {"time_cond_proj_dim = 256"}},
      {{{"resnet_time_scale_shift", "\"scale_shift\""}}, {"resnet_time_scale_shift = \"scale_shift\""}},
      {{{"conv_in_kernel", "5"}}, {"conv_in_kernel = 5", "only 3"}},
      {{{"conv_out_kernel", "1"}}, {"conv_out_kernel = 1"}},
      {{{"dual_cross_attention", "true"}}, {"dual_cross_attention = true"}},
      {{{"only_cross_attention", "true"}}, {"only_cross_attention = true"}},
      {{{"only_cross_attention", "[false, true, false]"}}, {"only_cross_attention = [false, true, false]"}},
      {{{"reverse_transformer_layers_per_block", "[[1, 1, 1], [1, 1, 1], [1, 1, 1]]"}},
       {"reverse_transformer_layers_per_block = [[1, 1, 1]"}},
      {{{"mid_block_scale_factor", "2"}}, {"mid_block_scale_factor = 2"}},
      {{{"resnet_out_scale_factor", "0.5"}}, {"resnet_out_scale_factor = 0.5"}},
      {{{"attention_type", "\"gated\""}}, {"attention_type = \"gated\""}},
      {{{"mid_block_type", "\"UNetMidBlock2DSimpleCrossAttn\""}}, {"mid_block_type = \"UNetMidBlock2DSimpleCrossAttn\""}},
      {{{"addition_embed_type", "\"text\""}}, {"addition_embed_type = \"text\""}},
      {{{"addition_embed_type", "\"text_time\""}, {"projection_class_embeddings_input_dim", "88"}},
       {"addition_time_embed_dim"}},  // still null in the sd15 config
      {{{"addition_embed_type", "\"text_time\""}, {"addition_time_embed_dim", "8"}},
       {"projection_class_embeddings_input_dim = null"}},
      {{{"addition_embed_type", "\"text_time\""}, {"addition_time_embed_dim", "8"},
        {"projection_class_embeddings_input_dim", "48"}},
       {"projection_class_embeddings_input_dim = 48", "6 time ids"}},
      {{{"norm_num_groups", "6"}}, {"norm_num_groups = 6", "block_out_channels[0] = 32"}},
      {{{"layers_per_block", "1.5"}}, {"layers_per_block = 1.5", "integer"}},
      {{{"layers_per_block", "[2, 2, 2]"}}, {"layers_per_block = [2, 2, 2]"}},
      {{{"cross_attention_dim", "[48, 48, 48]"}}, {"cross_attention_dim = [48, 48, 48]"}},
      {{{"block_out_channels", "[32, -64, 64]"}}, {"block_out_channels[1] = -64"}},
      {{{"block_out_channels", "[]"}}, {"block_out_channels = []"}},
      {{{"downsample_padding", "0"}}, {"downsample_padding = 0"}},
      {{{"num_class_embeds", "10"}}, {"num_class_embeds = 10"}},
      {{{"time_embedding_dim", "256"}}, {"time_embedding_dim = 256"}},
      {{{"cross_attention_norm", "\"group_norm\""}}, {"cross_attention_norm = \"group_norm\""}},
      {{{"use_linear_projection", "1"}}, {"use_linear_projection = 1"}},
      {{{"norm_eps", "0"}}, {"norm_eps = 0"}},
      {{{"_class_name", "\"UNet2DModel\""}}, {"_class_name = \"UNet2DModel\""}},
      {{{"block_out_channels", ""}}, {"missing required field \"block_out_channels\""}},
      {{{"down_block_types", ""}}, {"missing required field \"down_block_types\""}},
      {{{"up_block_types", ""}}, {"missing required field \"up_block_types\""}},
      {{{"cross_attention_dim", ""}}, {"missing required field \"cross_attention_dim\""}},
  };
  for (const auto& c : cases) {
    std::string label;
    for (const auto& kv : c.changes) label += kv.first + "=" + (kv.second.empty() ? "(removed)" : kv.second) + " ";
    std::string code = "(parsed)", message;
    try {
      parse_unet_config(sd15_with(c.changes), "m/unet/config.json");
    } catch (const ncp::Error& e) {
      code = e.code();
      message = e.what();
    }
    NCP_EXPECT(code == "NCP_ECONFIG", label << ": " << code << " " << message);
    NCP_EXPECT(message.rfind("m/unet/config.json: ", 0) == 0, label << ": does not name the file: " << message);
    for (const auto& s : c.says)
      NCP_EXPECT(message.find(s) != std::string::npos, label << ": no '" << s << "' in: " << message);
  }
}

NCP_TEST("unet_config: text that is not JSON is NCP_ECONFIG with the byte offset") {
  std::string message;
  try {
    parse_unet_config("{\"block_out_channels\": [32,]}", "bad.json");
  } catch (const ncp::Error& e) {
    NCP_EXPECT(e.code() == "NCP_ECONFIG", e.code());
    message = e.what();
  }
  NCP_EXPECT(message == "bad.json: invalid JSON at byte 27: unexpected character", message);
}

}  // namespace

NCP_TEST("unet_config: upcast_attention (SD2.x) is accepted: attention is float32 throughout") {
  const UNetConfig c = parse_unet_config(sd15_with({{"upcast_attention", "true"}}), "sd2-style config");
  NCP_EXPECT(c.num_attention_heads == V({4, 4, 4}), ncp::shape_str(c.num_attention_heads));
}
