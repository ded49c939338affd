// The six objectives x four spaces of METHOD.md against the golden values (diffusers + PyTorch in float64):
// loss, per-row policy and reference errors and every LoRA gradient, on the tiny SD1.5- and SDXL-style models.
// Tolerances are golden/README.md's: 1e-4 for latent and ncp-mid-uniform, 2e-3 for ncp-*-prev (the distance of
// two nearby feature maps cancels digits; PyTorch's own float32 lands at ~5e-4 there).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
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

void check_model(const std::string& name) {
  auto m = model::load_unet(test::golden_path(name));
  const model::SafetensorsFile golden = model::SafetensorsFile::open(test::golden_path(name + "/objectives.safetensors"));
  int checked = 0;
  for (const char* obj : {"sft", "dpo", "cpo"})
    for (const Space4& s : kSpaces) {
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
      if (std::getenv("NCP_TEST_VERBOSE")) std::printf("  %s %s: worst %.2e (%s)\n", name.c_str(), key.c_str(), worst, worst_name.c_str());
      NCP_EXPECT(worst <= s.tol, name << " " << key << ": worst relative error " << worst << " (" << worst_name
                                      << ") > " << s.tol);
    }
  NCP_EXPECT(checked > 12 * 3, name << ": only " << checked << " tensors compared");
}

NCP_TEST("objectives golden tiny-sd15: 3 objectives x 4 spaces, loss, errors, LoRA grads") { check_model("tiny-sd15"); }
NCP_TEST("objectives golden tiny-sdxl: 3 objectives x 4 spaces, loss, errors, LoRA grads") { check_model("tiny-sdxl"); }

}  // namespace

NCP_TEST("objectives: gradient checkpointing recomputes the same gradients exactly (tiny-sdxl, dpo, ncp-mid-prev)") {
  auto m = model::load_unet(test::golden_path("tiny-sdxl"));
  const model::SafetensorsFile golden =
      model::SafetensorsFile::open(test::golden_path("tiny-sdxl/objectives.safetensors"));
  GradOptions o;
  o.objective.objective = Objective::DPO, o.objective.space = Space::Ncp, o.objective.beta = 20000;
  o.lora_alpha = 8;
  const auto plain = grad_case(*m, golden, o);
  o.gradient_checkpointing = true;
  const auto recomputed = grad_case(*m, golden, o);
  NCP_EXPECT(plain.size() == recomputed.size());
  for (const auto& [name, t] : plain) {
    const double e = rel_err(recomputed.at(name).data, t.data);
    NCP_EXPECT(recomputed.at(name).data == t.data, name << " differs: relative " << e);
  }
}
