// The six objectives x four spaces of METHOD.md against the golden values (diffusers + PyTorch in float64):
// loss, per-row policy and reference errors and every LoRA gradient, on the tiny SD1.5- and SDXL-style models.
// Tolerances are golden/README.md's: 1e-4 for latent and ncp-mid-uniform, 2e-3 for ncp-*-prev (the distance of
// two nearby feature maps cancels digits; PyTorch's own float32 lands at ~5e-4 there).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "core/cuda_backend.h"
#include "core/error.h"
#include "core/dtype.h"
#include "model/safetensors.h"
#include "model/unet_io.h"
#include "tests/fixtures.h"
#include "tests/harness.h"
#include "train/grad_io.h"

namespace {
using namespace ncp;
using namespace ncp::train;

double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(ref[i]);
    num += d * d, den += double(ref[i]) * double(ref[i]);
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

struct Space4 {
  const char* name;
  Space space;
  model::EncoderLayer layer;
  NcpTimestep timestep;
  double beta, tol;
};
const Space4 kSpaces[] = {
    {"latent", Space::Latent, model::EncoderLayer::Mid, NcpTimestep::Prev, 20, 1e-4},
    {"ncp-mid-prev", Space::Ncp, model::EncoderLayer::Mid, NcpTimestep::Prev, 20000, 2e-3},
    {"ncp-down-prev", Space::Ncp, model::EncoderLayer::Down, NcpTimestep::Prev, 20000, 2e-3},
    {"ncp-mid-uniform", Space::Ncp, model::EncoderLayer::Mid, NcpTimestep::Uniform, 2, 1e-4},
};

// bf16 weights (mixed precision) are held to an independent yardstick: the error PyTorch's standard bf16 recipe
// (bf16 base weights + autocast, with group/layer norm and softmax in float32 as CUDA's autocast runs them)
// makes on the same golden case, measured by bench/pytorch/bf16_reference.py (the "autocast-cudalist" column).
// Ours may not be worse. It covers the DPO cases; the others are printed. (A bound of 5e-2 guessed before any
// measurement failed on the first GPU run; the reference shows what bf16 costs here: NCP-prev compares two
// nearby feature maps, which cancels most of bf16's digits, and beta then amplifies the logits.)
double bf16_reference_bound(const std::string& model, const std::string& key) {
  struct Ref {
    const char *model, *key;
    double error;
  };
  static const Ref refs[] = {
      {"tiny-sd15", "dpo.latent", 9.27e-2},  {"tiny-sd15", "dpo.ncp-mid-prev", 1.02e2},
      {"tiny-sd15", "dpo.ncp-down-prev", 4.31e1}, {"tiny-sdxl", "dpo.latent", 1.17e-1},
      {"tiny-sdxl", "dpo.ncp-mid-prev", 7.21},   {"tiny-sdxl", "dpo.ncp-down-prev", 9.39},
  };
  for (const Ref& r : refs)
    if (model == r.model && key == r.key) return r.error;
  return INFINITY;
}

// device -1: the CPU; N: CUDA device N (the same bounds: the GPU runs the same float32 arithmetic).
// bf16: the weight matrices in bf16 on the device (and the bf16 tape that mixed precision brings), bounded by
// bf16_reference_bound. tape_bf16 alone (the CPU's float32 weights, activations kept in bf16) is held to the same
// yardstick: PyTorch's recipe keeps bf16 activations too, on top of its bf16 weights.
void check_model(const std::string& name, int device = -1, bool bf16 = false, bool tape_bf16 = false) {
  auto m = model::load_unet(test::golden_path(name));
  m->to_device(device, bf16 ? DType::BF16 : DType::F32);
  if (tape_bf16) m->unet->set_tape_bf16(true);
  const model::SafetensorsFile golden = model::SafetensorsFile::open(test::golden_path(name + "/objectives.safetensors"));
  // NCP_TEST_OBJECTIVES="tiny-sdxl dpo.ncp-mid-prev" runs only the cases whose "<model> <objective>.<space>" name
  // contains one of its words (the emulator takes minutes a case; test:emulated runs the rest another time).
  const char* only = std::getenv("NCP_TEST_OBJECTIVES");
  auto wanted = [&](const std::string& case_name) {
    if (!only || !*only) return true;
    std::istringstream words(only);
    for (std::string w; words >> w;)
      if (case_name.find(w) != std::string::npos) return true;
    return false;
  };
  int checked = 0, cases = 0;
  for (const char* obj : {"sft", "dpo", "cpo"})
    for (const Space4& s : kSpaces) {
      if (!wanted(name + " " + obj + "." + s.name)) continue;
      ++cases;
      GradOptions o;
      o.objective.objective = parse_objective(obj);
      o.objective.space = s.space, o.objective.ncp_layer = s.layer, o.objective.ncp_timestep = s.timestep;
      o.objective.beta = s.beta;
      o.lora_alpha = 8;
      const auto out = grad_case(*m, golden, o);
      const std::string key = std::string(obj) + "." + s.name;
      double worst = 0;
      std::string worst_name;
      for (const auto& [tname, t] : out) {
        std::string ref_name;
        if (tname == "out.loss" || tname == "out.policy_losses" || tname == "out.ref_losses")
          ref_name = "out." + key + tname.substr(3);
        else if (tname.rfind("grad.", 0) == 0)
          ref_name = "grad." + key + "." + tname.substr(5);
        else
          continue;
        NCP_EXPECT(golden.find(ref_name) != nullptr, name << ": golden has no " << ref_name);
        if (!golden.find(ref_name)) continue;
        const double e = rel_err(t.data, golden.read_f32(ref_name));
        if (e > worst) worst = e, worst_name = tname;
        ++checked;
      }
      if (std::getenv("NCP_TEST_VERBOSE") || device >= 0)
        std::printf("    %s%s %s %s: worst %.2e (%s)\n", device >= 0 ? "cuda" : "cpu",
                    bf16 ? " bf16" : tape_bf16 ? " bf16-tape" : "", name.c_str(),
                    key.c_str(), worst, worst_name.c_str());
      // A bf16 tape alone: its values carry bf16's unit roundoff (2^-8, 4e-3) into every backward product; the
      // gradients moved by 0.7-1.7e-2 on these cases when measured (2026-11-28). 5e-2 is under PyTorch's recipe
      // on every case it has a figure for (9e-2 and up) and catches a tape read back wrong (order 1).
      const double tol = bf16 ? bf16_reference_bound(name, key) : tape_bf16 ? 5e-2 : s.tol;
      NCP_EXPECT(std::isfinite(worst) && worst <= tol, name << " " << key << ": worst relative error " << worst << " ("
                                                             << worst_name << ") > " << tol);
    }
  NCP_EXPECT(cases == 0 || checked > cases * 3, name << ": only " << checked << " tensors compared in " << cases << " cases");
  if (only && *only) std::printf("    %s: %d of 12 cases (NCP_TEST_OBJECTIVES=\"%s\")\n", name.c_str(), cases, only);
}

NCP_TEST("objectives golden tiny-sd15: 3 objectives x 4 spaces, loss, errors, LoRA grads") { check_model("tiny-sd15"); }

// The same twelve cases with the U-Net on the GPU (test:gpu); a clear skip line without one.
NCP_TEST("cuda: objectives golden tiny-sd15 and tiny-sdxl on the GPU, 3 objectives x 4 spaces") {
  if (!cuda::status().usable) {
    std::printf("skip: CUDA backend not usable: %s\n", cuda::status().reason.c_str());
    return;
  }
  check_model("tiny-sd15", 0);
  check_model("tiny-sdxl", 0);
}

NCP_TEST("cuda: objectives golden on the GPU with bf16 weights, no worse than PyTorch's bf16 autocast") {
  if (!cuda::status().usable) {
    std::printf("skip: CUDA backend not usable: %s\n", cuda::status().reason.c_str());
    return;
  }
  check_model("tiny-sd15", 0, true);
  check_model("tiny-sdxl", 0, true);
}
NCP_TEST("objectives golden tiny-sdxl: 3 objectives x 4 spaces, loss, errors, LoRA grads") { check_model("tiny-sdxl"); }

NCP_TEST("objectives golden with a bf16 tape on the CPU: within 5e-2, and PyTorch bf16 autocast's error") {
  check_model("tiny-sd15", -1, false, true);
  check_model("tiny-sdxl", -1, false, true);
}

}  // namespace

// Also with a bf16 tape: the recomputed block internals round to the same bf16 values the kept ones had.
NCP_TEST("objectives: gradient checkpointing and selective recompute give the same gradients exactly (tiny-sdxl, dpo, ncp-mid-prev)") {
  auto m = model::load_unet(test::golden_path("tiny-sdxl"));
  const model::SafetensorsFile golden =
      model::SafetensorsFile::open(test::golden_path("tiny-sdxl/objectives.safetensors"));
  for (const bool tape_bf16 : {false, true}) {
    m->unet->set_tape_bf16(tape_bf16);
    GradOptions o;
    o.objective.objective = Objective::DPO, o.objective.space = Space::Ncp, o.objective.beta = 20000;
    o.lora_alpha = 8;
    const auto plain = grad_case(*m, golden, o);
    o.gradient_checkpointing = true;
    const auto recomputed = grad_case(*m, golden, o);
    NCP_EXPECT(plain.size() == recomputed.size());
    for (const auto& [name, t] : plain) {
      const double e = rel_err(recomputed.at(name).data, t.data);
      NCP_EXPECT(recomputed.at(name).data == t.data, (tape_bf16 ? "bf16 tape: " : "") << name << " differs: relative " << e);
    }
    if (tape_bf16) continue;  // a bf16 tape keeps rounded values; the recompute reads float32 ones (test_unet)
    o.gradient_checkpointing = false;
    for (const char* parts : {"feedforward", "qkv", "feedforward,qkv"}) {
      o.recompute = model::parse_selective_recompute(parts);
      const auto selective = grad_case(*m, golden, o);
      for (const auto& [name, t] : plain)
        NCP_EXPECT(selective.at(name).data == t.data, "recompute " << parts << ": " << name << " differs: relative "
                                                                   << rel_err(selective.at(name).data, t.data));
    }
  }
}

// A case with an adapter on a 1x1-conv projection (SD1.x proj_in), stored the PEFT way as [r, in, 1, 1] /
// [out, r, 1, 1]: the same gradients as the [r, in] / [out, r] form, written back in the stored shape.
NCP_TEST("grad: LoRA on a 1x1-conv proj_in, stored 4-D, gives the 2-D form's gradients in its own shape") {
  auto m = model::load_unet(test::golden_path("tiny-sd15"));
  const model::SafetensorsFile golden = model::SafetensorsFile::open(test::golden_path("tiny-sd15/objectives.safetensors"));
  std::vector<std::vector<float>> keep;
  auto tensors_with = [&](bool four_d) {
    std::vector<model::TensorData> out;
    for (const model::TensorInfo& t : golden.tensors()) {
      if (t.name.rfind("in.", 0) != 0 && t.name.rfind("lora.", 0) != 0) continue;
      keep.push_back(golden.read_f32(t.name));
      out.push_back({t.name, DType::F32, t.shape, keep.back().data(), keep.back().size() * 4});
    }
    const std::string mod = "lora.down_blocks.0.attentions.0.proj_in";
    std::vector<float> a(4 * 32), b(32 * 4);
    ncp::test::fill_uniform(a, 1, -0.3, 0.3);
    ncp::test::fill_uniform(b, 2, -0.3, 0.3);
    keep.push_back(a), keep.push_back(b);
    const std::vector<int64_t> sa = four_d ? std::vector<int64_t>{4, 32, 1, 1} : std::vector<int64_t>{4, 32};
    const std::vector<int64_t> sb = four_d ? std::vector<int64_t>{32, 4, 1, 1} : std::vector<int64_t>{32, 4};
    out.push_back({mod + ".lora_A.weight", DType::F32, sa, keep[keep.size() - 2].data(), a.size() * 4});
    out.push_back({mod + ".lora_B.weight", DType::F32, sb, keep.back().data(), b.size() * 4});
    return out;
  };
  test::TempDir dir;
  model::write_safetensors(dir / "flat.safetensors", tensors_with(false), {});
  model::write_safetensors(dir / "conv.safetensors", tensors_with(true), {});
  GradOptions o;
  o.objective.objective = Objective::DPO, o.objective.space = Space::Latent, o.objective.beta = 20;
  o.lora_alpha = 8;
  const auto flat = grad_case(*m, model::SafetensorsFile::open(dir / "flat.safetensors"), o);
  const auto conv = grad_case(*m, model::SafetensorsFile::open(dir / "conv.safetensors"), o);
  const std::string g = "grad.down_blocks.0.attentions.0.proj_in.lora_A.weight";
  NCP_EXPECT(conv.at(g).shape == (std::vector<int64_t>{4, 32, 1, 1}), shape_str(conv.at(g).shape));
  NCP_EXPECT(flat.at(g).shape == (std::vector<int64_t>{4, 32}));
  NCP_EXPECT(conv.at(g).data == flat.at(g).data);
  double norm = 0;
  for (float v : conv.at(g).data) norm += double(v) * v;
  NCP_EXPECT(norm > 0, "the proj_in adapter got no gradient");
}
