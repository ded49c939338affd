#include "train/noise_schedule.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "model/config_reader.h"
#include "model/json.h"

namespace ncp::train {

NoiseSchedule NoiseSchedule::from_betas(const std::string& beta_schedule, double b0, double b1, int64_t T) {
  check(T >= 2, "NCP_ECONFIG", "noise schedule: num_train_timesteps " + std::to_string(T) + " must be >= 2");
  check(b0 > 0 && b1 > b0 && b1 < 1, "NCP_ECONFIG",
        "noise schedule: need 0 < beta_start < beta_end < 1, got " + std::to_string(b0) + ", " + std::to_string(b1));
  NoiseSchedule s;
  s.alphas_cumprod.resize(size_t(T));
  double prod = 1.0;
  for (int64_t t = 0; t < T; ++t) {
    const double f = double(t) / double(T - 1);
    double beta;
    if (beta_schedule == "scaled_linear") {
      const double r = std::sqrt(b0) + f * (std::sqrt(b1) - std::sqrt(b0));
      beta = r * r;
    } else if (beta_schedule == "linear") {
      beta = b0 + f * (b1 - b0);
    } else {
      throw Error("NCP_ECONFIG", "noise schedule: beta_schedule \"" + beta_schedule +
                                     "\" is not supported (scaled_linear, linear)");
    }
    prod *= 1.0 - beta;
    s.alphas_cumprod[size_t(t)] = prod;
  }
  return s;
}

NoiseSchedule NoiseSchedule::from_model_folder(const std::string& model_dir) {
  const std::string path = model_dir + "/scheduler/scheduler_config.json";
  std::ifstream f(path);
  if (!f) return from_betas("scaled_linear", 0.00085, 0.012, 1000);  // SD 1.5 / SDXL
  std::stringstream text;
  text << f.rdbuf();
  const json::Value cfg = json::parse(text.str(), "NCP_ECONFIG", path);
  const model::ConfigReader r(cfg, path);
  NoiseSchedule s = from_betas(r.string("beta_schedule", "scaled_linear"), r.number("beta_start", 0.00085),
                               r.number("beta_end", 0.012), r.integer("num_train_timesteps", 1000, 2));
  const std::string pred = r.string("prediction_type", "epsilon");
  if (pred == "v_prediction")
    s.prediction = Prediction::VPrediction;
  else if (pred != "epsilon")
    r.fail("prediction_type", *r.get("prediction_type"), "not supported (epsilon, v_prediction)");
  return s;
}

double NoiseSchedule::ac(int64_t t) const {
  check(t >= 0 && t < steps(), "NCP_EINVAL",
        "timestep " + std::to_string(t) + " is outside [0, " + std::to_string(steps()) + ")");
  return alphas_cumprod[size_t(t)];
}

Affine2 x0_from_output(const NoiseSchedule& s, int64_t t) {
  const double a = s.ac(t), sa = std::sqrt(a), sb = std::sqrt(1.0 - a);
  if (s.prediction == Prediction::VPrediction) return {sa, -sb};  // x0 = sqrt(ac) x_t - sqrt(1-ac) v
  return {1.0 / sa, -sb / sa};                                    // x0 = (x_t - sqrt(1-ac) e) / sqrt(ac)
}

Affine2 eps_from_output(const NoiseSchedule& s, int64_t t) {
  const double a = s.ac(t);
  if (s.prediction == Prediction::VPrediction) return {std::sqrt(1.0 - a), std::sqrt(a)};  // sqrt(ac) v + sqrt(1-ac) x_t
  return {0.0, 1.0};
}

DdpmStep ddpm_step(const NoiseSchedule& s, int64_t t) {
  const int64_t p = std::max<int64_t>(t - 1, 0);
  const double at = s.ac(t), ap = s.ac(p), beta = 1.0 - at / ap;
  DdpmStep d;
  d.mean_x0 = std::sqrt(ap) * beta / (1.0 - at);
  d.mean_xt = std::sqrt(at / ap) * (1.0 - ap) / (1.0 - at);
  d.sigma = t == 0 ? 0.0 : std::sqrt(std::max((1.0 - ap) / (1.0 - at) * beta, 1e-20));
  return d;
}

}  // namespace ncp::train
