// Float64 finite-difference gradient checking for the native op tests (ops, conv2d, U-Net blocks).
//
// The pattern, for any computation with inputs/parameters p_1..p_k and output `out`:
//   1. fill each p_i (a std::vector<double>) with random values (random_vector) and draw random weights w the
//      size of out, so the scalar loss L = sum(out .* w) (weighted_sum) has dL/dout = w;
//   2. run the forward, then the backward with dout = w into zero-filled gradient vectors g_i;
//   3. reports = gradcheck(loss, {{"x", &x, &gx}, {"W", &W, &gW}}), where loss() reruns the forward from the
//      current contents of the p_i vectors and returns L;
//   4. NCP_EXPECT_GRADCHECK(reports, 1e-6).
// gradcheck perturbs one element at a time by +-h in place and restores it, and compares g_i with the central
// difference (L(p + h) - L(p - h)) / 2h. With h = 1e-6 in float64 the difference is accurate to ~1e-9
// relative, so a correct backward passes 1e-6 with a wide margin while a wrong term does not. Inputs with more
// than max_elements values are checked on a seeded random subset of that many elements.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tests/harness.h"

namespace ncp::test {

struct GradInput {
  std::string name;
  std::vector<double>* value;        // perturbed in place by gradcheck, restored afterwards
  const std::vector<double>* grad;   // the analytic dL/dvalue under test, same size as *value
};

struct GradReport {
  std::string name;
  double rel_error;  // ||analytic - numeric|| / max(||analytic||, ||numeric||) over the checked elements
  int64_t checked;
};

struct GradcheckOptions {
  double h = 1e-6;
  int64_t max_elements = 4096;
  uint64_t seed = 1;
};

inline std::vector<GradReport> gradcheck(const std::function<double()>& loss, const std::vector<GradInput>& inputs,
                                         const GradcheckOptions& opt = {}) {
  std::vector<GradReport> reports;
  std::mt19937_64 rng(opt.seed);
  for (const auto& in : inputs) {
    std::vector<double>& p = *in.value;
    const int64_t n = int64_t(p.size());
    std::vector<int64_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    if (n > opt.max_elements) {
      std::shuffle(idx.begin(), idx.end(), rng);
      idx.resize(opt.max_elements);
    }
    double num2 = 0, ana2 = 0, diff2 = 0;
    for (int64_t i : idx) {
      const double saved = p[i];
      p[i] = saved + opt.h;
      const double up = loss();
      p[i] = saved - opt.h;
      const double down = loss();
      p[i] = saved;
      const double numeric = (up - down) / (2 * opt.h), analytic = (*in.grad)[i];
      num2 += numeric * numeric;
      ana2 += analytic * analytic;
      diff2 += (analytic - numeric) * (analytic - numeric);
    }
    const double denom = std::max(std::sqrt(std::max(num2, ana2)), 1e-300);
    reports.push_back({in.name, std::sqrt(diff2) / denom, int64_t(idx.size())});
  }
  return reports;
}

inline double weighted_sum(const std::vector<double>& out, const std::vector<double>& w) {
  double s = 0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * w[i];
  return s;
}

inline std::vector<double> random_vector(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::vector<double> v(n);
  fill_uniform(v, seed, lo, hi);
  return v;
}

// The same values in another precision (float runs compared against the float64 reference).
template <class T>
std::vector<T> cast_vector(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Checks the backward conventions of ops.h: gradients are added to what the buffers already hold, and a
// nullptr gradient is skipped without changing the others. backward(ptrs) runs the backward under test with
// ptrs[i] pointing at sizes[i] values or nullptr.
inline void expect_backward_accumulates(const std::string& op, const std::vector<int64_t>& sizes,
                                        const std::function<void(const std::vector<double*>&)>& backward) {
  const size_t k = sizes.size();
  std::vector<std::vector<double>> once(k);
  std::vector<double*> ptrs(k);
  for (size_t i = 0; i < k; ++i) {
    once[i].assign(sizes[i], 0.0);
    ptrs[i] = once[i].data();
  }
  backward(ptrs);
  auto expect_near = [&](const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
    double worst = 0;
    for (size_t j = 0; j < got.size(); ++j)
      worst = std::max(worst, std::abs(got[j] - want[j]) / (1.0 + std::abs(want[j])));
    NCP_EXPECT(worst < 1e-12, op << ": " << what << " off by " << worst);
  };
  for (size_t i = 0; i < k; ++i) {
    std::vector<double> base = random_vector(sizes[i], 100 + i), want = base;
    for (size_t j = 0; j < want.size(); ++j) want[j] += once[i][j];
    std::vector<double*> only(k, nullptr);
    only[i] = base.data();
    backward(only);
    expect_near(base, want, "gradient " + std::to_string(i) + " alone, added to nonzero buffer");
  }
  std::vector<std::vector<double>> twice = once;
  for (size_t i = 0; i < k; ++i) ptrs[i] = twice[i].data();
  backward(ptrs);
  for (size_t i = 0; i < k; ++i) {
    std::vector<double> want = once[i];
    for (auto& x : want) x *= 2;
    expect_near(twice[i], want, "gradient " + std::to_string(i) + " after two backward calls");
  }
}

}  // namespace ncp::test

// Fails once per input whose analytic gradient disagrees with the finite differences by more than tol.
#define NCP_EXPECT_GRADCHECK(reports, tol)                                                               \
  for (const auto& ncp_report_ : (reports))                                                              \
  NCP_EXPECT(ncp_report_.rel_error < (tol), "gradient of " << ncp_report_.name << ": rel error "      \
                                            << ncp_report_.rel_error << " over " << ncp_report_.checked \
                                            << " elements")
