#include "train/grad_io.h"

#include <algorithm>

#include "core/error.h"
#include "model/lora.h"

namespace ncp::train {
namespace {

using model::SafetensorsFile;
using model::Tensor32;

const std::string kLoraPrefix = "lora.", kA = ".lora_A.weight", kB = ".lora_B.weight";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Tensor32 read(const SafetensorsFile& f, const std::string& name, const std::vector<int64_t>& shape) {
  const model::TensorInfo* t = f.find(name);
  check(t != nullptr, "NCP_EMISSING", f.path() + ": tensor '" + name + "' is missing");
  check(t->shape == shape, "NCP_ESHAPE",
        f.path() + ": tensor '" + name + "' has shape " + shape_str(t->shape) + ", expected " + shape_str(shape));
  return Tensor32{t->shape, f.read_f32(name)};
}

std::vector<int64_t> read_timesteps(const SafetensorsFile& f, const std::string& name, int64_t P) {
  const std::vector<float> v = read(f, name, {P}).data;
  std::vector<int64_t> out;
  for (float x : v) {
    check(x == std::floor(x), "NCP_EINVAL", f.path() + ": tensor '" + name + "' holds a non-integer timestep");
    out.push_back(int64_t(x));
  }
  return out;
}

}  // namespace

std::map<std::string, Tensor32> grad_case(model::LoadedUNet& m, const SafetensorsFile& f, const GradOptions& o) {
  const model::UNetConfig& c = m.config;
  const model::TensorInfo* xw = f.find("in.x0_w");
  check(xw != nullptr, "NCP_EMISSING", f.path() + ": tensor 'in.x0_w' is missing");
  check(xw->shape.size() == 4 && xw->shape[1] == c.in_channels, "NCP_ESHAPE",
        f.path() + ": tensor 'in.x0_w' has shape " + shape_str(xw->shape) + ", expected [pairs, " +
            std::to_string(c.in_channels) + ", height, width]");
  const std::vector<int64_t> lat = xw->shape;
  const int64_t P = lat[0];
  const Tensor32 x0_w = read(f, "in.x0_w", lat), x0_l = read(f, "in.x0_l", lat), noise = read(f, "in.noise", lat);
  const model::TensorInfo* ctx = f.find("in.encoder_hidden_states");
  check(ctx != nullptr, "NCP_EMISSING", f.path() + ": tensor 'in.encoder_hidden_states' is missing");
  check(ctx->shape.size() == 3 && ctx->shape[0] == P && ctx->shape[2] == c.cross_attention_dim, "NCP_ESHAPE",
        f.path() + ": tensor 'in.encoder_hidden_states' has shape " + shape_str(ctx->shape) + ", expected [" +
            std::to_string(P) + ", tokens, " + std::to_string(c.cross_attention_dim) + "]");
  const Tensor32 context = read(f, "in.encoder_hidden_states", ctx->shape);

  PairBatch b;
  b.pairs = P, b.channels = lat[1], b.height = lat[2], b.width = lat[3], b.text_len = ctx->shape[1];
  b.x0_w = x0_w.data.data(), b.x0_l = x0_l.data.data(), b.noise = noise.data.data();
  b.encoder_hidden_states = context.data.data();
  b.timestep = read_timesteps(f, "in.timestep", P);
  const ObjectiveConfig& oc = o.objective;
  Tensor32 z, text_embeds, time_ids;
  if (oc.space == Space::Ncp && oc.ncp_timestep == NcpTimestep::Prev) {
    z = read(f, "in.variance_noise", lat);
    b.variance_noise = z.data.data();
  }
  if (oc.space == Space::Ncp && oc.ncp_timestep == NcpTimestep::Uniform)
    b.timestep_uniform = read_timesteps(f, "in.timestep_uniform", P);
  if (c.text_time_embedding) {
    text_embeds = read(f, "in.text_embeds", {P, m.unet->pooled_dim()});
    time_ids = read(f, "in.time_ids", {P, 6});
    b.text_embeds = text_embeds.data.data(), b.time_ids = time_ids.data.data();
  }

  NoiseSchedule schedule = NoiseSchedule::from_model_folder(m.model_dir);
  if (const model::TensorInfo* ac = f.find("in.alphas_cumprod")) {
    check(ac->shape.size() == 1 && ac->shape[0] >= 2, "NCP_ESHAPE",
          f.path() + ": tensor 'in.alphas_cumprod' must be 1-D with >= 2 entries, got " + shape_str(ac->shape));
    const std::vector<float> v = f.read_f32("in.alphas_cumprod");
    schedule.alphas_cumprod.assign(v.begin(), v.end());
  }

  // LoRA adapters from lora.<module>.lora_A/B.weight pairs. A 1x1-conv layer's adapter (SD1.x proj_in/proj_out in
  // PEFT) is stored [r, in, 1, 1] / [out, r, 1, 1]: the same numbers as the Linear form, and its gradient is written
  // back in the stored shape.
  auto squeeze_1x1 = [](std::vector<int64_t> s) {
    if (s.size() == 4 && s[2] == 1 && s[3] == 1) s.resize(2);
    return s;
  };
  model::LoraSet lora;
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<int64_t>>> stored_shapes;
  for (const model::TensorInfo& t : f.tensors()) {
    if (t.name.compare(0, kLoraPrefix.size(), kLoraPrefix) != 0 || !ends_with(t.name, kA)) continue;
    const std::string module = t.name.substr(kLoraPrefix.size(), t.name.size() - kLoraPrefix.size() - kA.size());
    const std::string bname = kLoraPrefix + module + kB;
    const model::TensorInfo* tb = f.find(bname);
    check(tb != nullptr, "NCP_EMISSING", f.path() + ": tensor '" + bname + "' is missing (its lora_A is there)");
    const std::vector<int64_t> sa = squeeze_1x1(t.shape), sb = squeeze_1x1(tb->shape);
    check(sa.size() == 2 && sb.size() == 2 && sb[1] == sa[0], "NCP_ESHAPE",
          f.path() + ": LoRA " + module + ": lora_A " + shape_str(t.shape) + " and lora_B " + shape_str(tb->shape) +
              " are not [r, in] and [out, r]");
    const int64_t r = sa[0];
    const float alpha = std::isnan(o.lora_alpha) ? float(r) : float(o.lora_alpha);
    model::LoraAdapter& a = lora.add(module, r, sa[1], sb[0], alpha);
    a.A = f.read_f32(t.name), a.B = f.read_f32(bname);
    stored_shapes[module] = {t.shape, tb->shape};
  }
  for (const model::TensorInfo& t : f.tensors())
    if (t.name.compare(0, kLoraPrefix.size(), kLoraPrefix) == 0 && ends_with(t.name, kB)) {
      const std::string module = t.name.substr(kLoraPrefix.size(), t.name.size() - kLoraPrefix.size() - kB.size());
      check(lora.find(module) != nullptr, "NCP_EMISSING",
            f.path() + ": tensor '" + kLoraPrefix + module + kA + "' is missing (its lora_B is there)");
    }
  check(!lora.adapters().empty(), "NCP_EMISSING", f.path() + ": no lora.<module>.lora_A.weight tensors");

  struct Detach {
    model::UNet& u;
    ~Detach() { u.detach_lora(); }
  } detach{*m.unet};
  m.unet->attach_lora(lora);
  ObjectiveRunner runner(*m.unet, std::move(schedule));
  runner.set_checkpointing(o.gradient_checkpointing);
  runner.set_recompute(o.recompute);
  const ObjectiveResult r = runner.run(b, oc, true);

  std::map<std::string, Tensor32> out;
  auto vec = [](const std::vector<double>& v) {
    return Tensor32{{int64_t(v.size())}, std::vector<float>(v.begin(), v.end())};
  };
  out["out.loss"] = vec({r.loss});
  out["out.policy_losses"] = vec(r.policy_losses);
  out["out.ref_losses"] = vec(r.ref_losses);
  out["out.implicit_acc"] = vec({r.implicit_acc});
  out["out.reward_w"] = vec({r.reward_w});
  out["out.reward_l"] = vec({r.reward_l});
  for (const auto& a : lora.adapters()) {
    const auto& [shape_a, shape_b] = stored_shapes.at(a->module);
    out["grad." + a->module + kA] = Tensor32{shape_a, a->dA};
    out["grad." + a->module + kB] = Tensor32{shape_b, a->dB};
  }
  return out;
}

std::vector<std::string> grad_file(model::LoadedUNet& m, const std::string& input, const std::string& output,
                                   const GradOptions& o) {
  std::map<std::string, Tensor32> out;
  {
    const SafetensorsFile f = SafetensorsFile::open(input);
    out = grad_case(m, f, o);
  }
  std::vector<model::TensorData> tensors;
  std::vector<std::string> names;
  for (const auto& [name, t] : out) {
    tensors.push_back({name, DType::F32, t.shape, t.data.data(), t.data.size() * sizeof(float)});
    names.push_back(name);
  }
  write_safetensors(output, tensors, {{"producer", "ncp-native grad"}, {"model", m.model_dir}});
  return names;
}

}  // namespace ncp::train
