// The DDPM noise schedule of SD 1.5 / SDXL and the per-row affine maps the objectives are built from
// (METHOD.md section 1). Everything here is float64: these are scalars per row, and the ncp-prev objective
// compares two nearby points whose difference must not lose digits before the U-Net even runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ncp::train {

enum class Prediction { Epsilon, VPrediction };

struct NoiseSchedule {
  std::vector<double> alphas_cumprod;  // ac[t], t in [0, T)
  Prediction prediction = Prediction::Epsilon;

  // betas = linspace(sqrt(b0), sqrt(b1), T)^2 ("scaled_linear"), or linspace(b0, b1, T) ("linear").
  static NoiseSchedule from_betas(const std::string& beta_schedule, double beta_start, double beta_end,
                                  int64_t steps);
  // <model>/scheduler/scheduler_config.json (num_train_timesteps, beta_start, beta_end, beta_schedule,
  // prediction_type); SD's defaults when the folder has none. Errors name the file and field.
  static NoiseSchedule from_model_folder(const std::string& model_dir);
  int64_t steps() const { return int64_t(alphas_cumprod.size()); }
  double ac(int64_t t) const;  // checks 0 <= t < T
};

// x = cx * a + ce * b as per-row coefficients of two tensors.
struct Affine2 {
  double a = 0, b = 0;
};

// For a row at timestep t with the network output e (eps or v):
//   x0(e)  = x0_from.a * x_t + x0_from.b * e
//   eps(e) = eps_from.a * x_t + eps_from.b * e
Affine2 x0_from_output(const NoiseSchedule& s, int64_t t);
Affine2 eps_from_output(const NoiseSchedule& s, int64_t t);

// One DDPM step from t to p = max(t - 1, 0) with "fixed_small" variance:
//   step = mean_x0 * x0 + mean_xt * x_t + sigma * z, sigma = 0 at t == 0 (then step = x_t exactly).
struct DdpmStep {
  double mean_x0 = 0, mean_xt = 0, sigma = 0;
};
DdpmStep ddpm_step(const NoiseSchedule& s, int64_t t);

}  // namespace ncp::train
