#include "train/objective.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/threads.h"

namespace ncp::train {
namespace {

// -log sigmoid(x) without overflow.
double neg_log_sigmoid(double x) { return x >= 0 ? std::log1p(std::exp(-x)) : -x + std::log1p(std::exp(x)); }
double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }

// Copies `rows_per_pair` blocks: dst row r (of R = 2P) takes src row r % P.
void stack_pairs(std::vector<float>& dst, const float* src, int64_t P, int64_t row) {
  dst.resize(size_t(2 * P * row));
  for (int64_t r = 0; r < 2 * P; ++r) std::copy(src + (r % P) * row, src + (r % P + 1) * row, dst.data() + r * row);
}

// Per-row mean of (a - b)^2 over n values, in double.
double mean_sq_diff(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    s += d * d;
  }
  return s / double(n);
}

// Spatial mean per channel: x [C, HW] -> y [C].
void spatial_mean(float* y, const float* x, int64_t C, int64_t HW) {
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t i = 0; i < HW; ++i) s += x[c * HW + i];
    y[c] = float(s / double(HW));
  }
}

}  // namespace

Objective parse_objective(const std::string& s) {
  if (s == "sft") return Objective::SFT;
  if (s == "dpo") return Objective::DPO;
  if (s == "cpo") return Objective::CPO;
  throw Error("NCP_EINVAL", "objective \"" + s + "\" is not one of sft, dpo, cpo");
}

Space parse_space(const std::string& s) {
  if (s == "latent") return Space::Latent;
  if (s == "ncp") return Space::Ncp;
  throw Error("NCP_EINVAL", "space \"" + s + "\" is not one of latent, ncp");
}

NcpTimestep parse_ncp_timestep(const std::string& s) {
  if (s == "prev") return NcpTimestep::Prev;
  if (s == "uniform") return NcpTimestep::Uniform;
  throw Error("NCP_EINVAL", "ncp timestep \"" + s + "\" is not one of prev, uniform");
}

model::EncoderLayer parse_ncp_layer(const std::string& s) {
  if (s == "mid") return model::EncoderLayer::Mid;
  if (s == "down") return model::EncoderLayer::Down;
  throw Error("NCP_EINVAL", "ncp layer \"" + s + "\" is not one of mid, down");
}

ObjectiveRunner::ObjectiveRunner(const model::UNet& unet, NoiseSchedule schedule)
    : unet_(unet), schedule_(std::move(schedule)) {}

void ObjectiveRunner::check_batch(const PairBatch& b, const ObjectiveConfig& c) const {
  const auto& uc = unet_.config();
  check(b.pairs >= 1, "NCP_EINVAL", "objective: a batch needs at least one pair");
  check(b.channels == uc.in_channels && uc.in_channels == uc.out_channels, "NCP_ESHAPE",
        "objective: latents have " + std::to_string(b.channels) + " channels, the U-Net takes " +
            std::to_string(uc.in_channels) + " and predicts " + std::to_string(uc.out_channels));
  check(b.x0_w && b.x0_l && b.noise && b.encoder_hidden_states, "NCP_EINVAL",
        "objective: x0_w, x0_l, noise and encoder_hidden_states are required");
  check(int64_t(b.timestep.size()) == b.pairs, "NCP_ESHAPE",
        "objective: timestep has " + std::to_string(b.timestep.size()) + " entries for " +
            std::to_string(b.pairs) + " pairs");
  for (int64_t t : b.timestep) schedule_.ac(t);  // range check with a clear message
  if (c.space == Space::Ncp && c.ncp_timestep == NcpTimestep::Prev)
    check(b.variance_noise != nullptr, "NCP_EINVAL", "objective: ncp with timestep prev needs variance_noise (z)");
  if (c.space == Space::Ncp && c.ncp_timestep == NcpTimestep::Uniform) {
    check(int64_t(b.timestep_uniform.size()) == b.pairs, "NCP_ESHAPE",
          "objective: ncp with timestep uniform needs timestep_uniform with one entry per pair");
    for (int64_t t : b.timestep_uniform) schedule_.ac(t);
  }
  check(std::isfinite(c.beta), "NCP_EINVAL", "objective: beta must be finite");
}

ObjectiveResult ObjectiveRunner::run(const PairBatch& b, const ObjectiveConfig& cfg, bool backward,
                                     double grad_scale) {
  check_batch(b, cfg);
  const int64_t P = b.pairs, R = 2 * P, n = b.channels * b.height * b.width;
  const int64_t ctx_row = b.text_len * unet_.config().cross_attention_dim, pooled = unet_.pooled_dim();
  const bool sdxl = unet_.config().text_time_embedding;
  const bool with_ref = cfg.log_reference || cfg.objective == Objective::DPO;

  // ---- Rows [w_0..w_{P-1}, l_0..l_{P-1}]: x0 differs, everything else is shared within a pair.
  x0_.resize(size_t(R * n));
  std::copy(b.x0_w, b.x0_w + P * n, x0_.data());
  std::copy(b.x0_l, b.x0_l + P * n, x0_.data() + P * n);
  stack_pairs(eps_, b.noise, P, n);
  stack_pairs(context_, b.encoder_hidden_states, P, ctx_row);
  if (sdxl) {
    check(b.text_embeds && b.time_ids, "NCP_EINVAL", "objective: this SDXL-style U-Net needs text_embeds and time_ids");
    stack_pairs(text_embeds_, b.text_embeds, P, pooled);
    stack_pairs(time_ids_, b.time_ids, P, 6);
  }
  t_rows_.resize(size_t(R));
  std::vector<int64_t> t_of(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) t_of[size_t(r)] = b.timestep[size_t(r % P)], t_rows_[size_t(r)] = float(t_of[size_t(r)]);

  // ---- Forward noising and the latent target.
  xt_.resize(size_t(R * n));
  target_.resize(size_t(R * n));
  for (int64_t r = 0; r < R; ++r) {
    const double a = schedule_.ac(t_of[size_t(r)]), sa = std::sqrt(a), sb = std::sqrt(1.0 - a);
    const bool v = schedule_.prediction == Prediction::VPrediction;
    for (int64_t i = r * n; i < (r + 1) * n; ++i) {
      xt_[size_t(i)] = float(sa * x0_[size_t(i)] + sb * eps_[size_t(i)]);
      target_[size_t(i)] = v ? float(sa * eps_[size_t(i)] - sb * x0_[size_t(i)]) : eps_[size_t(i)];
    }
  }
  model::UNetInputs in{R, b.height, b.width, b.text_len, xt_.data(), t_rows_.data(), context_.data(),
                       sdxl ? text_embeds_.data() : nullptr, sdxl ? time_ids_.data() : nullptr};

  // The passes without a tape run first (the reference U-Net, and for ncp the encoder on the truth and the
  // reference's prediction), then the taped ones (the policy, the encoder on its prediction). Their outputs are
  // the same in either order; this one keeps the untaped passes' transient buffers from stacking on top of the
  // tapes, so a step's peak is the tapes and their backward alone.
  if (with_ref) {
    e_ref_.resize(size_t(R * n));
    unet_.forward(in, e_ref_.data(), nullptr, false);
  }

  ObjectiveResult res;
  res.policy_losses.assign(size_t(R), 0.0);
  res.ref_losses.assign(size_t(R), with_ref ? 0.0 : std::numeric_limits<double>::quiet_NaN());

  // ncp: x_pred(e) = A x_t + k e + sigma z, the same map for the policy's and the reference's e; x_true from the
  // true x0 and eps (no cancellation before E). Rows of x_other_: [x_true (R rows), x_pred(e_ref) (R rows when
  // with_ref)].
  struct NcpRow {
    double A = 0, k = 0, sigma = 0, cx0 = 0, ceps = 0, true_xt = 0;
    int64_t p = 0;         // the timestep E sees
    const float* z = nullptr;  // variance noise (timestep prev)
  };
  std::vector<NcpRow> rows(static_cast<size_t>(R));
  int64_t m = 0, enc_C = 0, enc_HW = 0;  // ncp: embedding size per row (after pooling), its channels and HW
  model::UNetInputs enc_pred{};
  std::vector<float> pa, pb;  // scratch: one pooled row each
  auto dist = [&](const float* a, const float* bb) {
    if (!cfg.ncp_pool) return cfg.ncp_coeff * mean_sq_diff(a, bb, m);
    spatial_mean(pa.data(), a, enc_C, enc_HW), spatial_mean(pb.data(), bb, enc_C, enc_HW);
    return cfg.ncp_coeff * mean_sq_diff(pa.data(), pb.data(), m);
  };
  if (cfg.space == Space::Ncp) {
    const int64_t R_other = with_ref ? 2 * R : R;
    std::vector<float> p_rows(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = t_of[size_t(r)];
      const Affine2 x0e = x0_from_output(schedule_, t), epse = eps_from_output(schedule_, t);
      NcpRow& w = rows[size_t(r)];
      if (cfg.ncp_timestep == NcpTimestep::Prev) {
        const DdpmStep st = ddpm_step(schedule_, t);
        w.p = std::max<int64_t>(t - 1, 0);
        w.A = st.mean_x0 * x0e.a + st.mean_xt, w.k = st.mean_x0 * x0e.b, w.sigma = st.sigma;
        w.cx0 = st.mean_x0, w.ceps = 0, w.true_xt = st.mean_xt;
        w.z = b.variance_noise + (r % P) * n;
      } else {
        w.p = b.timestep_uniform[size_t(r % P)];
        const double ap = schedule_.ac(w.p), sp = std::sqrt(ap), sq = std::sqrt(1.0 - ap);
        w.A = sp * x0e.a + sq * epse.a, w.k = sp * x0e.b + sq * epse.b;
        w.cx0 = sp, w.ceps = sq, w.true_xt = 0;
      }
      p_rows[size_t(r)] = float(w.p);
    }
    x_other_.resize(size_t(R_other * n));
    for (int64_t r = 0; r < R; ++r) {
      const NcpRow& w = rows[size_t(r)];
      for (int64_t i = 0; i < n; ++i) {
        const size_t j = size_t(r * n + i);
        const double zi = w.z ? double(w.z[i]) : 0.0, xt = xt_[j];
        x_other_[j] = float(w.cx0 * x0_[j] + w.ceps * eps_[j] + w.true_xt * xt + w.sigma * zi);
        if (with_ref) x_other_[size_t(R * n) + j] = float(w.A * xt + w.k * e_ref_[j] + w.sigma * zi);
      }
    }
    // Encoder inputs: the pair's conditioning at timestep p, for R rows (pred) and R_other rows (others).
    auto enc_inputs = [&](const float* sample, int64_t count, std::vector<float>& ctx, std::vector<float>& te,
                          std::vector<float>& tid, std::vector<float>& tt) {
      ctx.resize(size_t(count * ctx_row)), tt.resize(size_t(count));
      for (int64_t r = 0; r < count; ++r) {
        std::copy(context_.data() + (r % R) * ctx_row, context_.data() + (r % R + 1) * ctx_row, ctx.data() + r * ctx_row);
        tt[size_t(r)] = p_rows[size_t(r % R)];
      }
      if (sdxl) {
        te.resize(size_t(count * pooled)), tid.resize(size_t(count * 6));
        for (int64_t r = 0; r < count; ++r) {
          std::copy(text_embeds_.data() + (r % R) * pooled, text_embeds_.data() + (r % R + 1) * pooled,
                    te.data() + r * pooled);
          std::copy(time_ids_.data() + (r % R) * 6, time_ids_.data() + (r % R + 1) * 6, tid.data() + r * 6);
        }
      }
      return model::UNetInputs{count, b.height, b.width, b.text_len, sample, tt.data(), ctx.data(),
                               sdxl ? te.data() : nullptr, sdxl ? tid.data() : nullptr};
    };
    const model::UNetInputs enc_other =
        enc_inputs(x_other_.data(), R_other, enc_context_, enc_text_embeds_, enc_time_ids_, enc_t_);
    // Members, not locals: the encoder's backward (and its recompute under checkpointing) reads them again.
    x_pred_.resize(size_t(R * n));
    enc_pred = enc_inputs(x_pred_.data(), R, pred_context_, pred_text_embeds_, pred_time_ids_, pred_t_);
    const std::vector<int64_t> es = unet_.encode_shape(enc_pred, cfg.ncp_layer);
    enc_C = es[1], enc_HW = es[2] * es[3];
    m = cfg.ncp_pool ? enc_C : enc_C * enc_HW;
    if (cfg.ncp_pool) pa.resize(size_t(m)), pb.resize(size_t(m));  // the pooled rows
    enc_other_.resize(size_t(R_other * enc_C * enc_HW));
    // One pass for the truth and the reference's prediction (issue 7: the encoder passes batched). Its GEMMs see 2R
    // rows where the policy prediction's see R, so a GPU library that picks kernels by shape (cuBLAS) may round
    // the two predictions' features differently even when they are equal (policy = reference, LoRA B = 0). Under
    // mixed precision that rounding noise is of the order of the half type's unit roundoff over sqrt(features),
    // and beta multiplies it into the loss: the likely cause of a 3% step-1 loss difference on tiny-sd15's 1024 mid
    // features at fp16 and beta 5000 (H200, 2026-11-29); about 0.4% on SDXL's 1.3M. Two R-row passes would make
    // them equal at the cost of one more encoder pass of launches (578 more a step of 7144 in the SD1.5 bf16 step).
    unet_.encode(enc_other, cfg.ncp_layer, enc_other_.data(), nullptr, false);
  }

  // ---- The policy (LoRA on, taped when a gradient is wanted).
  e_pol_.resize(size_t(R * n));
  if (backward)
    unet_.forward_train(in, e_pol_.data(), policy_tape_, true);
  else
    unet_.forward(in, e_pol_.data(), nullptr, true);

  // ---- Per-sample errors d(e).
  if (cfg.space == Space::Latent) {
    for (int64_t r = 0; r < R; ++r) {
      res.policy_losses[size_t(r)] = mean_sq_diff(e_pol_.data() + r * n, target_.data() + r * n, n);
      if (with_ref) res.ref_losses[size_t(r)] = mean_sq_diff(e_ref_.data() + r * n, target_.data() + r * n, n);
    }
  } else {
    for (int64_t r = 0; r < R; ++r) {
      const NcpRow& w = rows[size_t(r)];
      for (int64_t i = r * n; i < (r + 1) * n; ++i) {
        const double zi = w.z ? double(w.z[i - r * n]) : 0.0;
        x_pred_[size_t(i)] = float(w.A * double(xt_[size_t(i)]) + w.k * e_pol_[size_t(i)] + w.sigma * zi);
      }
    }
    const int64_t full = enc_C * enc_HW;
    enc_pred_.resize(size_t(R * full));
    if (backward)
      unet_.encode_train(enc_pred, cfg.ncp_layer, enc_pred_.data(), encoder_tape_, false);
    else
      unet_.encode(enc_pred, cfg.ncp_layer, enc_pred_.data(), nullptr, false);
    for (int64_t r = 0; r < R; ++r) {
      const float* truth = enc_other_.data() + r * full;
      res.policy_losses[size_t(r)] = dist(enc_pred_.data() + r * full, truth);
      if (with_ref) res.ref_losses[size_t(r)] = dist(enc_other_.data() + (R + r) * full, truth);
    }
  }

  // ---- The objective over pairs, and d loss / d(per-row error) of the policy rows.
  std::vector<double> g(static_cast<size_t>(R), 0.0);
  const double beta = cfg.beta;
  const auto& pl = res.policy_losses;
  const auto& rl = res.ref_losses;
  double acc = 0, rw = 0, rlsum = 0, loss = 0;
  for (int64_t i = 0; i < P; ++i) {
    const double pw = pl[size_t(i)], pL = pl[size_t(P + i)], model_diff = pw - pL;
    const double logits = with_ref ? (rl[size_t(i)] - rl[size_t(P + i)]) - model_diff : 0.0;
    switch (cfg.objective) {
      case Objective::SFT:
        loss += pw;
        g[size_t(i)] += 1.0;
        break;
      case Objective::DPO: {
        loss += neg_log_sigmoid(beta * logits);
        const double dl = -beta * sigmoid(-beta * logits);  // d loss / d logits; logits = ref_diff - (pw - pl)
        g[size_t(i)] -= dl, g[size_t(P + i)] += dl;
        break;
      }
      case Objective::CPO: {
        loss += neg_log_sigmoid(-beta * model_diff) + cfg.cpo_lambda * pw;
        const double dm = beta * sigmoid(beta * model_diff);  // d loss / d model_diff
        g[size_t(i)] += dm + cfg.cpo_lambda, g[size_t(P + i)] -= dm;
        break;
      }
    }
    if (with_ref) {
      acc += logits > 0 ? 1.0 : logits == 0 ? 0.5 : 0.0;
      rw += pw - rl[size_t(i)], rlsum += pL - rl[size_t(P + i)];
      res.ref_w += rl[size_t(i)] / double(P), res.ref_l += rl[size_t(P + i)] / double(P);
    }
    res.policy_w += pw / double(P), res.policy_l += pL / double(P);
  }
  res.loss = loss / double(P);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  res.implicit_acc = with_ref ? acc / double(P) : nan;
  res.reward_w = with_ref ? beta * rw / double(P) : nan;
  res.reward_l = with_ref ? beta * rlsum / double(P) : nan;
  if (!with_ref) res.ref_w = res.ref_l = nan;
  if (!backward) return res;
  for (double& v : g) v *= grad_scale / double(P);

  // ---- Backward: d loss / d e_pol, then through the policy U-Net into the LoRA adapters.
  d_e_.assign(size_t(R * n), 0.0f);
  if (cfg.space == Space::Latent) {
    for (int64_t r = 0; r < R; ++r) {
      const double s = g[size_t(r)] * 2.0 / double(n);
      for (int64_t i = r * n; i < (r + 1) * n; ++i)
        d_e_[size_t(i)] = float(s * (double(e_pol_[size_t(i)]) - double(target_[size_t(i)])));
    }
  } else {
    const int64_t full = enc_C * enc_HW;
    d_enc_.assign(size_t(R * full), 0.0f);
    for (int64_t r = 0; r < R; ++r) {
      const float* a = enc_pred_.data() + r * full;
      const float* t = enc_other_.data() + r * full;
      float* d = d_enc_.data() + r * full;
      const double s = g[size_t(r)] * cfg.ncp_coeff * 2.0 / double(m);
      if (!cfg.ncp_pool) {
        for (int64_t i = 0; i < full; ++i) d[i] = float(s * (double(a[i]) - double(t[i])));
      } else {  // d/dE[c, hw] of the pooled distance: the channel's gradient spread evenly over HW
        spatial_mean(pa.data(), a, enc_C, enc_HW), spatial_mean(pb.data(), t, enc_C, enc_HW);
        for (int64_t c = 0; c < enc_C; ++c)
          std::fill_n(d + c * enc_HW, enc_HW, float(s * (double(pa[size_t(c)]) - pb[size_t(c)]) / double(enc_HW)));
      }
    }
    d_x_.assign(size_t(R * n), 0.0f);
    unet_.backward(d_enc_.data(), encoder_tape_, d_x_.data());
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = r * n; i < (r + 1) * n; ++i) d_e_[size_t(i)] = float(rows[size_t(r)].k * d_x_[size_t(i)]);
  }
  unet_.backward(d_e_.data(), policy_tape_, nullptr);
  return res;
}

}  // namespace ncp::train
