// Dynamic loss scaling in the trainer, on the tiny golden SD1.5-style U-Net. (That training learns the preferences
// of fixed pairs is checked through the library, on the release addon: test/train-learns.test.js.)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/fixtures.h"
#include "tests/harness.h"
#include "train/trainer.h"

namespace {
using namespace ncp;
using namespace ncp::train;
using ncp::test::error_code;

// P fixed pairs: chosen and rejected latents differ in structure, one text conditioning per pair.
PairData make_pairs(const model::UNetConfig& c, int64_t P, int64_t side, uint64_t seed) {
  PairData d;
  d.pairs = P, d.channels = c.in_channels, d.height = side, d.width = side, d.text_len = 5;
  const int64_t n = P * d.channels * side * side;
  d.x0_w.resize(size_t(n)), d.x0_l.resize(size_t(n));
  d.encoder_hidden_states.resize(size_t(P * d.text_len * c.cross_attention_dim));
  ncp::test::fill_uniform(d.x0_w, seed, -1.0, 1.0);
  ncp::test::fill_uniform(d.x0_l, seed + 1, -1.0, 1.0);
  ncp::test::fill_uniform(d.encoder_hidden_states, seed + 2, -1.0, 1.0);
  return d;
}

TrainerConfig tiny_config(Space space, double beta) {
  TrainerConfig c;
  c.model_dir = test::golden_path("tiny-sd15");
  c.lora_rank = 4;
  c.objective.objective = Objective::DPO;
  c.objective.space = space;
  c.objective.beta = beta;
  c.optimizer.adamw.lr = 1e-3;
  c.optimizer.schedule = LrSchedule::Constant;
  c.seed = 7;
  return c;
}

std::vector<float> lora_values(Trainer& t) {
  std::vector<float> v;
  for (const auto& a : t.lora().adapters()) {
    v.insert(v.end(), a->A.begin(), a->A.end());
    v.insert(v.end(), a->B.begin(), a->B.end());
  }
  return v;
}

}  // namespace

// Loss scaling multiplies the loss gradient by a power of two and divides the LoRA gradients by it again: exact in
// float32, so on the CPU's float32 backward three scaled steps give the unscaled run's LoRA bit for bit.
NCP_TEST("loss scaling: a power-of-two scale trains bit-identically to no scaling (float32 backward)") {
  TrainerConfig c = tiny_config(Space::Ncp, 5000);
  Trainer plain(c);
  c.loss_scaling.enabled = true;  // 2^16, GradScaler's default
  Trainer scaled(c);
  const PairData d = make_pairs(plain.model().config, 2, 8, 5);
  for (int i = 0; i < 3; ++i) {
    const StepMetrics a = plain.step({d}), b = scaled.step({d});
    NCP_EXPECT(a.loss_scale == 1 && b.loss_scale == 65536, "loss scales " << a.loss_scale << ", " << b.loss_scale);
    NCP_EXPECT(!b.skipped, "step " << i << " was skipped at scale 2^16");
    NCP_EXPECT(a.objective.loss == b.objective.loss && a.grad_norm == b.grad_norm,
               "step " << i << ": loss " << a.objective.loss << " vs " << b.objective.loss << ", grad norm " << a.grad_norm << " vs " << b.grad_norm);
  }
  NCP_EXPECT(lora_values(plain) == lora_values(scaled), "the scaled run's LoRA differs from the plain run's");
}

// A scale so large that the gradients overflow float32: the step is skipped (no update, the LoRA and the moments
// untouched, the step still counted), the scale halves until the gradients are finite, then training goes on; after
// growth_interval finite steps in a row the scale doubles. A bad scale is a clear error.
NCP_TEST("loss scaling: overflow skips the step and halves the scale; finite steps grow it; bad scales are refused") {
  TrainerConfig c = tiny_config(Space::Latent, 2000);
  c.loss_scaling.enabled = true;
  c.loss_scaling.init_scale = 0x1p127;
  c.loss_scaling.growth_interval = 2;
  Trainer t(c);
  const PairData d = make_pairs(t.model().config, 2, 8, 5);
  const std::vector<float> before = lora_values(t);
  const StepMetrics first = t.step({d});
  NCP_EXPECT(first.skipped && first.loss_scale == 0x1p127, "scale 2^127: skipped " << first.skipped);
  NCP_EXPECT(std::isinf(first.grad_norm) && first.step == 1, "grad norm " << first.grad_norm << ", step " << first.step);
  NCP_EXPECT(lora_values(t) == before, "a skipped step changed the LoRA");
  for (const auto& m : t.optimizer().moments())
    for (float v : m) NCP_EXPECT(v == 0, "a skipped step changed the optimiser moments");
  NCP_EXPECT(t.loss_scaler().scale() == 0x1p126, "scale after one overflow: " << t.loss_scaler().scale());
  int skipped = 1, steps = 1;
  while (t.step({d}).skipped) ++skipped, ++steps;
  ++steps;
  const double landed = t.loss_scaler().scale();
  std::printf("    %d steps skipped from 2^127; the first update at scale 2^%d\n", skipped, int(std::log2(landed)));
  NCP_EXPECT(skipped < 120 && landed < 0x1p127, "the scale never came down: " << landed);
  NCP_EXPECT(lora_values(t) != before, "the finite step did not update the LoRA");
  const StepMetrics next = t.step({d});
  ++steps;
  NCP_EXPECT(!next.skipped && t.loss_scaler().scale() == 2 * landed,
             "two finite steps in a row: scale " << t.loss_scaler().scale() << ", expected " << 2 * landed);
  NCP_EXPECT(next.step == steps, "step count " << next.step << ", expected " << steps);

  t.loss_scaler().set_state(0x1p10, 1);
  NCP_EXPECT(t.loss_scaler().scale() == 0x1p10 && t.loss_scaler().good_steps() == 1);
  NCP_EXPECT(error_code([&] { t.loss_scaler().set_state(3.0, 0); }) == "NCP_EINVAL", "scale 3 accepted");
  TrainerConfig bad = tiny_config(Space::Latent, 2000);
  bad.loss_scaling.enabled = true;
  bad.loss_scaling.init_scale = 0;
  NCP_EXPECT(error_code([&] { Trainer x(bad); }) == "NCP_EINVAL", "initial scale 0 accepted");
  bad.loss_scaling.init_scale = 1024, bad.loss_scaling.growth_interval = 0;
  NCP_EXPECT(error_code([&] { Trainer x(bad); }) == "NCP_EINVAL", "growth interval 0 accepted");
}
