#include "model/component_io.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/unet_io.h"

namespace ncp::model {
namespace {

struct Named {
  Component c;
  const char* name;
  const char* folder;
};
constexpr Named kComponents[] = {{Component::UNet, "unet", "unet"},
                                 {Component::VaeEncoder, "vae-encoder", "vae"},
                                 {Component::VaeDecoder, "vae-decoder", "vae"},
                                 {Component::TextEncoder, "text-encoder", "text_encoder"},
                                 {Component::TextEncoder2, "text-encoder-2", "text_encoder_2"}};

// The named 4-d input [N, channels, H, W]; NCP_EMISSING / NCP_ESHAPE name the file, the tensor and both shapes.
Tensor32 read_nchw(const SafetensorsFile& f, const std::string& name, int64_t channels, const char* what) {
  const TensorInfo& t = f.get(name);  // NCP_EMISSING naming the tensor and the file
  if (t.shape.size() != 4 || t.shape[1] != channels || t.numel() == 0)
    throw Error("NCP_ESHAPE", f.path() + ": tensor '" + name + "' has shape " + shape_str(t.shape) + ", expected [" +
                                  what + ", " + std::to_string(channels) + ", height, width]");
  Tensor32 x;
  x.shape = t.shape;
  x.data = f.read_f32(name);
  return x;
}

using Outputs = std::vector<std::pair<std::string, const Tensor32*>>;

std::vector<std::string> write(const std::string& path, const Outputs& outs, const std::string& model_dir,
                               const char* component) {
  std::vector<TensorData> tensors;
  std::vector<std::string> names;
  for (const auto& [name, t] : outs) {
    tensors.push_back({name, DType::F32, t->shape, t->data.data(), t->data.size() * sizeof(float)});
    names.push_back(name);
  }
  write_safetensors(path, tensors,
                    {{"producer", "ncp-native forward"}, {"model", model_dir}, {"component", component}});
  return names;
}

}  // namespace

Component parse_component(const std::string& name) {
  std::string list;
  for (const Named& n : kComponents) {
    if (name == n.name) return n.c;
    list += std::string(list.empty() ? "" : ", ") + n.name;
  }
  throw Error("NCP_EINVAL", "unknown component '" + name + "' (choose one of " + list + ")");
}

const char* component_name(Component c) {
  for (const Named& n : kComponents)
    if (n.c == c) return n.name;
  return "?";
}

const char* component_folder(Component c) {
  for (const Named& n : kComponents)
    if (n.c == c) return n.folder;
  return "?";
}

std::vector<int64_t> read_token_ids(const SafetensorsFile& f, const std::string& name, std::vector<int64_t>* shape) {
  const TensorInfo& t = f.get(name);
  const int64_t n = t.numel();
  std::vector<int64_t> ids(static_cast<size_t>(n));
  if (t.dtype == DType::I64) {
    std::memcpy(ids.data(), t.data, size_t(n) * sizeof(int64_t));  // little-endian, as the engine's targets are
  } else if (t.dtype == DType::I32) {
    for (int64_t i = 0; i < n; ++i) {
      int32_t v;
      std::memcpy(&v, t.data + i * 4, 4);
      ids[size_t(i)] = v;
    }
  } else {
    const std::vector<float> v = f.read_f32(name);
    for (int64_t i = 0; i < n; ++i) {
      if (!(std::fabs(v[size_t(i)]) < 16777216.f) || v[size_t(i)] != std::floor(v[size_t(i)]))
        throw Error("NCP_EINVAL", f.path() + ": tensor '" + name + "' element " + std::to_string(i) + " = " +
                                      std::to_string(v[size_t(i)]) + " is not a token id (a whole number)");
      ids[size_t(i)] = int64_t(v[size_t(i)]);
    }
  }
  if (shape) *shape = t.shape;
  return ids;
}

std::vector<std::string> vae_encoder_forward_file(const LoadedVae& model, const std::string& input,
                                                  const std::string& output, int64_t slice) {
  Tensor32 image;
  {
    const SafetensorsFile f = SafetensorsFile::open(input);
    image = read_nchw(f, "in.image", model.config.in_channels, "batch");
  }
  const auto& s = image.shape;
  const LatentDist d = model.vae->encode(image.data.data(), s[0], s[2], s[3], slice);
  return write(output, {{"out.mean", &d.mean}, {"out.logvar", &d.logvar}}, model.model_dir, "vae-encoder");
}

std::vector<std::string> vae_decoder_forward_file(const LoadedVae& model, const std::string& input,
                                                  const std::string& output, int64_t slice) {
  Tensor32 latent;
  {
    const SafetensorsFile f = SafetensorsFile::open(input);
    latent = read_nchw(f, "in.latent", model.config.latent_channels, "batch");
  }
  const Tensor32 decoded = model.vae->decode(latent, slice);
  return write(output, {{"out.decoded", &decoded}}, model.model_dir, "vae-decoder");
}

std::vector<std::string> text_encoder_forward_file(const LoadedTextEncoder& model, const std::string& input,
                                                   const std::string& output) {
  std::vector<int64_t> shape, ids;
  {
    const SafetensorsFile f = SafetensorsFile::open(input);
    ids = read_token_ids(f, "in.input_ids", &shape);
    if (shape.size() != 2 || shape[0] < 1 || shape[1] < 1)
      throw Error("NCP_ESHAPE", input + ": tensor 'in.input_ids' has shape " + shape_str(shape) +
                                    ", expected [batch, tokens]");
  }
  const TextEncoderOutput o = model.encoder->encode(ids.data(), shape[0], shape[1]);
  Outputs outs = {{"out.last_hidden_state", &o.last_hidden_state},
                  {"out.penultimate_hidden_state", &o.penultimate_hidden_state},
                  {"out.pooled", &o.pooled}};
  if (!o.text_embeds.shape.empty()) outs.push_back({"out.text_embeds", &o.text_embeds});
  return write(output, outs, model.model_dir,
               model.component == "text_encoder_2" ? "text-encoder-2" : "text-encoder");
}

std::vector<std::string> forward_component_file(const ForwardJob& job) {
  const Component c = parse_component(job.component);
  if (job.trace && c != Component::UNet)
    throw Error("NCP_EINVAL", std::string("--trace is available for the unet only, not for ") + component_name(c));
  switch (c) {
    case Component::UNet:
      return unet_forward_file(*load_unet(job.model_dir, job.variant), job.input, job.output, job.trace);
    case Component::VaeEncoder:
      return vae_encoder_forward_file(*load_vae(job.model_dir, job.variant), job.input, job.output, job.slice);
    case Component::VaeDecoder:
      return vae_decoder_forward_file(*load_vae(job.model_dir, job.variant), job.input, job.output, job.slice);
    case Component::TextEncoder:
    case Component::TextEncoder2:
      return text_encoder_forward_file(*load_text_encoder(job.model_dir, component_folder(c), job.variant),
                                       job.input, job.output);
  }
  throw Error("NCP_EINTERNAL", "forward_component_file: unhandled component");
}

}  // namespace ncp::model
