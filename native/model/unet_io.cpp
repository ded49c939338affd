#include "model/unet_io.h"

#include "core/error.h"
#include "model/model_folder.h"
#include "model/safetensors.h"

namespace ncp::model {

std::unique_ptr<LoadedUNet> load_unet(const std::string& model_dir, const std::string& variant) {
  ComponentFiles files = resolve_unet_files(model_dir, variant);
  auto m = std::make_unique<LoadedUNet>();
  m->model_dir = model_dir;
  m->weight_files = files.weight_files;
  m->config = parse_unet_config(files.config_text, files.config_path);
  m->weights = load_weights(UNet::manifest(m->config), files.weight_files, "", model_load_mode());
  m->unet = std::make_unique<UNet>(m->config, m->weights);
  return m;
}

void LoadedUNet::to_device(int d, DType matrices) {
  check(d >= 0 || matrices == DType::F32, "NCP_EINVAL",
        std::string(dtype_name(matrices)) + " weights (mixed precision) need a CUDA device");
  if (d < 0 || d == device) return;
  check(device < 0, "NCP_EINVAL", "U-Net of " + model_dir + " is already on another device");
  auto w = std::make_shared<const DeviceWeights>(weights, d, matrices);
  unet = std::make_unique<UNet>(config, std::move(w));
  // bf16 mixed precision keeps bf16 activations too, as autocast does. fp16 keeps a float32 tape: its point is
  // precision (NCP-prev gradients), and --recompute or checkpointing trim the tape instead.
  unet->set_tape_bf16(matrices == DType::BF16);
  unet->set_weight_matrices(matrices);
  weights = WeightMap();
  device = d;
}

namespace {

void expect(bool ok, const std::string& source, const std::string& name, const Tensor32& t, const std::string& want) {
  if (!ok)
    throw Error("NCP_ESHAPE", source + ": tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected " + want);
}

Tensor32 read(const SafetensorsFile& f, const std::string& name, bool required) {
  Tensor32 t;
  const TensorInfo* info = f.find(name);
  if (!info) {
    if (required) f.get(name);  // throws NCP_EMISSING naming the tensor and file
    return t;
  }
  t.shape = info->shape;
  t.data = f.read_f32(name);
  return t;
}

}  // namespace

UNetInputs bind_inputs(const UNet& unet, const UNetInputTensors& t, const std::string& source) {
  const UNetConfig& c = unet.config();
  const std::string& s = source;
  expect(t.sample.shape.size() == 4 && t.sample.shape[1] == c.in_channels, s, "in.sample", t.sample,
         "[batch, " + std::to_string(c.in_channels) + ", height, width]");
  const int64_t B = t.sample.shape[0];
  expect(t.timestep.shape == std::vector<int64_t>{B} || (t.timestep.shape.empty() && B == 1), s, "in.timestep",
         t.timestep, "[" + std::to_string(B) + "]");
  expect(t.encoder_hidden_states.shape.size() == 3 && t.encoder_hidden_states.shape[0] == B &&
             t.encoder_hidden_states.shape[2] == c.cross_attention_dim,
         s, "in.encoder_hidden_states", t.encoder_hidden_states,
         "[" + std::to_string(B) + ", tokens, " + std::to_string(c.cross_attention_dim) + "]");
  UNetInputs in;
  in.batch = B;
  in.height = t.sample.shape[2];
  in.width = t.sample.shape[3];
  in.text_len = t.encoder_hidden_states.shape[1];
  in.sample = t.sample.data.data();
  in.timesteps = t.timestep.data.data();
  in.encoder_hidden_states = t.encoder_hidden_states.data.data();
  if (c.text_time_embedding) {
    if (t.text_embeds.shape.empty()) throw Error("NCP_EMISSING", s + ": SDXL U-Net needs tensor 'in.text_embeds'");
    if (t.time_ids.shape.empty()) throw Error("NCP_EMISSING", s + ": SDXL U-Net needs tensor 'in.time_ids'");
    expect(t.text_embeds.shape == std::vector<int64_t>{B, unet.pooled_dim()}, s, "in.text_embeds", t.text_embeds,
           shape_str({B, unet.pooled_dim()}));
    expect(t.time_ids.shape == std::vector<int64_t>{B, 6}, s, "in.time_ids", t.time_ids, shape_str({B, 6}));
    in.text_embeds = t.text_embeds.data.data();
    in.time_ids = t.time_ids.data.data();
  }
  return in;
}

std::vector<std::string> unet_forward_file(const LoadedUNet& model, const std::string& input,
                                           const std::string& output, bool trace) {
  UNetInputTensors t;
  {
    SafetensorsFile f = SafetensorsFile::open(input);
    const bool sdxl = model.config.text_time_embedding;
    t.sample = read(f, "in.sample", true);
    t.timestep = read(f, "in.timestep", true);
    t.encoder_hidden_states = read(f, "in.encoder_hidden_states", true);
    t.text_embeds = read(f, "in.text_embeds", sdxl);
    t.time_ids = read(f, "in.time_ids", sdxl);
  }
  const UNetInputs in = bind_inputs(*model.unet, t, input);
  Tensor32 out;
  out.shape = model.unet->output_shape(in);
  int64_t n = 1;
  for (int64_t d : out.shape) n *= d;
  out.data.resize(size_t(n));
  Trace tr;
  model.unet->forward(in, out.data.data(), trace ? &tr : nullptr);

  std::vector<TensorData> tensors;
  auto add = [&](const std::string& name, const Tensor32& x) {
    tensors.push_back({name, DType::F32, x.shape, x.data.data(), x.data.size() * sizeof(float)});
  };
  add("out.sample", out);
  for (const auto& [name, x] : tr) add("trace." + name, x);
  write_safetensors(output, tensors, {{"producer", "ncp-native forward"}, {"model", model.model_dir}});
  std::vector<std::string> names;
  for (const auto& x : tensors) names.push_back(x.name);
  return names;
}

}  // namespace ncp::model
