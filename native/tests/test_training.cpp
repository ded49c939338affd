// Training end to end on the tiny golden SD1.5-style U-Net: a few hundred DPO steps on a handful of fixed pairs
// must teach the LoRA the preferences (implicit accuracy on the training pairs >= 0.9 over fresh noise draws, loss
// falling), in latent and NCP space; the optimiser, schedules and determinism under a seed.
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

// Mean implicit accuracy and loss over `draws` fresh noise draws (fixed seeds, no update).
std::pair<double, double> measure(Trainer& t, const PairData& d, int draws) {
  double acc = 0, loss = 0;
  for (int i = 0; i < draws; ++i) {
    const ObjectiveResult r = t.evaluate(d, 1000 + uint64_t(i));
    acc += r.implicit_acc / draws, loss += r.loss / draws;
  }
  return {acc, loss};
}

void learns(Space space, double beta, int steps) {
  Trainer t(tiny_config(space, beta));
  const PairData d = make_pairs(t.model().config, 4, 8, 99);
  const auto [acc0, loss0] = measure(t, d, 16);
  for (int i = 0; i < steps; ++i) t.step({d});
  const auto [acc1, loss1] = measure(t, d, 16);
  std::printf("    %s DPO, %d steps: implicit accuracy %.3f -> %.3f, loss %.4f -> %.4f\n",
              space == Space::Latent ? "latent" : "ncp", steps, acc0, acc1, loss0, loss1);
  NCP_EXPECT(acc1 >= 0.9, "implicit accuracy after training " << acc1);
  NCP_EXPECT(loss1 < 0.8 * loss0, "loss " << loss0 << " -> " << loss1);
}

}  // namespace

NCP_TEST("training: DPO in latent space learns the preferences of fixed pairs") {
  learns(Space::Latent, 2000, std::getenv("NCP_TRAIN_STEPS") ? std::atoi(std::getenv("NCP_TRAIN_STEPS")) : 160);
}
NCP_TEST("training: DPO in NCP space learns the preferences of fixed pairs") {
  learns(Space::Ncp, 5000, std::getenv("NCP_TRAIN_STEPS") ? std::atoi(std::getenv("NCP_TRAIN_STEPS")) : 160);
}
