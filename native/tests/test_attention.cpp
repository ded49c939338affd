// Multi-head attention: a naive triple-loop reference, the causal mask, gradients for self/cross/causal shapes
// (including query counts that span several of the kernel's 256-query blocks), float against double.
#include <cmath>

#include "core/error.h"
#include "cpu/ops.h"
#include "tests/gradcheck.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using namespace ncp::cpu;

struct Inputs {
  std::vector<double> q, k, v;
};

Inputs random_inputs(const AttentionShape& s, uint64_t seed, double range = 1.0) {
  const int64_t HD = s.H * s.Dh;
  return {random_vector(s.B * s.Lq * HD, seed, -range, range), random_vector(s.B * s.Lk * HD, seed + 1, -range, range),
          random_vector(s.B * s.Lk * HD, seed + 2, -range, range)};
}

// out and probs from the definition, one score at a time.
void naive_attention(const AttentionShape& s, const Inputs& in, std::vector<double>& out,
                     std::vector<double>& probs) {
  const int64_t HD = s.H * s.Dh;
  out.assign(s.B * s.Lq * HD, 0.0);
  probs.assign(s.B * s.H * s.Lq * s.Lk, 0.0);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t i = 0; i < s.Lq; ++i) {
        std::vector<double> score(s.Lk);
        double mx = -INFINITY;
        for (int64_t j = 0; j < s.Lk; ++j) {
          if (s.causal && j > i) continue;
          double dot = 0;
          for (int64_t d = 0; d < s.Dh; ++d)
            dot += in.q[(b * s.Lq + i) * HD + h * s.Dh + d] * in.k[(b * s.Lk + j) * HD + h * s.Dh + d];
          score[j] = dot / std::sqrt(double(s.Dh));
          mx = std::max(mx, score[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < s.Lk; ++j) sum += (s.causal && j > i) ? 0.0 : std::exp(score[j] - mx);
        double* p = &probs[((b * s.H + h) * s.Lq + i) * s.Lk];
        for (int64_t j = 0; j < s.Lk; ++j) p[j] = (s.causal && j > i) ? 0.0 : std::exp(score[j] - mx) / sum;
        for (int64_t d = 0; d < s.Dh; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < s.Lk; ++j) acc += p[j] * in.v[(b * s.Lk + j) * HD + h * s.Dh + d];
          out[(b * s.Lq + i) * HD + h * s.Dh + d] = acc;
        }
      }
}

const AttentionShape kShapes[] = {
    {2, 5, 5, 3, 4, false},   // self
    {2, 5, 7, 3, 4, false},   // cross, more keys
    {1, 6, 6, 2, 3, true},    // causal self
    {1, 7, 5, 2, 3, true},    // causal, more queries than keys
    {1, 3, 7, 2, 3, true},    // causal, more keys than queries
    {1, 531, 531, 1, 2, true},  // causal across three of the kernel's 256-query blocks
    {2, 270, 67, 1, 3, false},  // cross across two blocks
};

std::string describe(const AttentionShape& s) {
  return "B=" + std::to_string(s.B) + " Lq=" + std::to_string(s.Lq) + " Lk=" + std::to_string(s.Lk) +
         " H=" + std::to_string(s.H) + " Dh=" + std::to_string(s.Dh) + (s.causal ? " causal" : "");
}

NCP_TEST("attention: forward matches a naive triple loop") {
  uint64_t seed = 1;
  for (const auto& s : kShapes) {
    auto in = random_inputs(s, seed += 3, 2.0);
    std::vector<double> want_out, want_probs, out(s.B * s.Lq * s.H * s.Dh), probs(s.B * s.H * s.Lq * s.Lk, -1.0);
    naive_attention(s, in, want_out, want_probs);
    attention_forward(out.data(), probs.data(), in.q.data(), in.k.data(), in.v.data(), s);
    const double eo = rel_error(out.data(), want_out.data(), int64_t(out.size()));
    const double ep = rel_error(probs.data(), want_probs.data(), int64_t(probs.size()));
    NCP_EXPECT(eo < 1e-13 && ep < 1e-13, describe(s) << ": out rel error " << eo << ", probs " << ep);
    // Inference mode: no saved probabilities, same output.
    std::vector<double> out2(out.size());
    attention_forward(out2.data(), static_cast<double*>(nullptr), in.q.data(), in.k.data(), in.v.data(), s);
    NCP_EXPECT(out2 == out, describe(s) << ": output without saved_probs differs");
  }
}

NCP_TEST("attention: causal mask gives future keys exactly zero weight") {
  const AttentionShape s{2, 9, 9, 2, 4, true};
  auto in = random_inputs(s, 40, 3.0);
  const int64_t HD = s.H * s.Dh;
  std::vector<double> out(s.B * s.Lq * HD), probs(s.B * s.H * s.Lq * s.Lk, -1.0);
  attention_forward(out.data(), probs.data(), in.q.data(), in.k.data(), in.v.data(), s);
  for (int64_t bh = 0; bh < s.B * s.H; ++bh)
    for (int64_t i = 0; i < s.Lq; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < s.Lk; ++j) {
        const double p = probs[(bh * s.Lq + i) * s.Lk + j];
        sum += p;
        if (j > i) NCP_EXPECT(p == 0.0, "head " << bh << " query " << i << " key " << j << " weight " << p);
        else NCP_EXPECT(p > 0.0, "head " << bh << " query " << i << " key " << j << " weight " << p);
      }
      NCP_EXPECT(std::abs(sum - 1) < 1e-15, "row sum " << sum);
    }
  // The first query sees only the first key: its output is that key's value.
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t c = 0; c < HD; ++c)
      NCP_EXPECT(std::abs(out[b * s.Lq * HD + c] - in.v[b * s.Lk * HD + c]) < 1e-15, "batch " << b << " col " << c);
  // Changing a future key or value leaves earlier queries alone.
  auto changed = in;
  for (int64_t c = 0; c < HD; ++c) changed.k[(s.Lk - 1) * HD + c] += 5, changed.v[(s.Lk - 1) * HD + c] -= 5;
  std::vector<double> out2(out.size());
  attention_forward(out2.data(), probs.data(), changed.q.data(), changed.k.data(), changed.v.data(), s);
  for (int64_t i = 0; i < (s.Lq - 1) * HD; ++i) NCP_EXPECT(out2[i] == out[i], "element " << i << " changed");
}

NCP_TEST("attention: large logits stay finite") {
  const AttentionShape s{1, 4, 6, 1, 8, false};
  auto in = random_inputs(s, 50, 60.0);  // scores up to ~1e4
  std::vector<float> q(in.q.begin(), in.q.end()), k(in.k.begin(), in.k.end()), v(in.v.begin(), in.v.end());
  std::vector<float> out(s.Lq * s.Dh), probs(s.Lq * s.Lk);
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
  for (float x : out) NCP_EXPECT(std::isfinite(x), x);
  for (float p : probs) NCP_EXPECT(p >= 0 && p <= 1, p);
}

NCP_TEST("attention: gradcheck for self, cross and causal shapes") {
  uint64_t seed = 100;
  for (const auto& s : kShapes) {
    auto in = random_inputs(s, seed += 3, 1.5);
    const int64_t HD = s.H * s.Dh;
    auto w = random_vector(s.B * s.Lq * HD, seed + 7);
    std::vector<double> out(w.size()), probs(s.B * s.H * s.Lq * s.Lk);
    std::vector<double> dq(in.q.size()), dk(in.k.size()), dv(in.v.size());
    auto loss = [&] {
      attention_forward(out.data(), probs.data(), in.q.data(), in.k.data(), in.v.data(), s);
      return weighted_sum(out, w);
    };
    loss();
    attention_backward(dq.data(), dk.data(), dv.data(), w.data(), in.q.data(), in.k.data(), in.v.data(),
                       probs.data(), s);
    GradcheckOptions opt;
    opt.max_elements = 200;  // a sample is enough for the long shapes, whose forward is slow to repeat
    const auto reports = gradcheck(loss, {{describe(s) + " q", &in.q, &dq}, {describe(s) + " k", &in.k, &dk},
                                          {describe(s) + " v", &in.v, &dv}}, opt);
    NCP_EXPECT_GRADCHECK(reports, 1e-6);
    expect_backward_accumulates("attention " + describe(s), {int64_t(dq.size()), int64_t(dk.size()),
                                int64_t(dv.size())}, [&](const std::vector<double*>& p) {
      attention_backward(p[0], p[1], p[2], w.data(), in.q.data(), in.k.data(), in.v.data(), probs.data(), s);
    });
  }
}

NCP_TEST("attention: float matches double") {
  const AttentionShape shapes[] = {{2, 300, 77, 4, 8, false}, {1, 300, 300, 3, 16, true}};
  for (const auto& s : shapes) {
    auto in = random_inputs(s, 70, 2.0);
    auto dout = random_vector(s.B * s.Lq * s.H * s.Dh, 75);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      auto q = cast_vector<T>(in.q), k = cast_vector<T>(in.k), v = cast_vector<T>(in.v), dy = cast_vector<T>(dout);
      std::vector<T> out(dout.size()), probs(s.B * s.H * s.Lq * s.Lk), dq(q.size()), dk(k.size()), dv(v.size());
      attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
      attention_backward(dq.data(), dk.data(), dv.data(), dy.data(), q.data(), k.data(), v.data(), probs.data(), s);
      return std::vector<std::vector<T>>{out, probs, dq, dk, dv};
    };
    auto f = run(0.0f);
    auto d = run(0.0);
    const char* names[] = {"out", "probs", "dq", "dk", "dv"};
    for (size_t i = 0; i < d.size(); ++i) {
      const double e = rel_error(f[i].data(), d[i].data(), int64_t(d[i].size()));
      NCP_EXPECT(e < 1e-6, describe(s) << " " << names[i] << " rel error " << e);
    }
  }
}

// The recomputing backward against forward + backward with saved probabilities: the output is the forward's
// bit for bit (same GEMMs and row kernel), the gradients equal up to summation order, in double and in float,
// over self, cross, causal and multi-block shapes; it accumulates, and a null out or gradient is skipped.
NCP_TEST("attention: backward_recompute gives the forward's output and the saved-probabilities gradients") {
  uint64_t seed = 300;
  for (const auto& s : kShapes) {
    auto in = random_inputs(s, seed += 3, 1.5);
    const int64_t HD = s.H * s.Dh;
    auto dout = random_vector(s.B * s.Lq * HD, seed + 7);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      auto q = cast_vector<T>(in.q), k = cast_vector<T>(in.k), v = cast_vector<T>(in.v), dy = cast_vector<T>(dout);
      std::vector<T> out(dy.size()), probs(s.B * s.H * s.Lq * s.Lk), dq(q.size()), dk(k.size()), dv(v.size());
      attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
      attention_backward(dq.data(), dk.data(), dv.data(), dy.data(), q.data(), k.data(), v.data(), probs.data(), s);
      std::vector<T> out2(dy.size()), dq2(q.size()), dk2(k.size()), dv2(v.size());
      attention_backward_recompute(dq2.data(), dk2.data(), dv2.data(), out2.data(), dy.data(), q.data(), k.data(),
                                   v.data(), s);
      NCP_EXPECT(out2 == out, describe(s) << ": recomputed output differs from the forward's");
      const double tol = sizeof(T) == 8 ? 1e-12 : 1e-5;
      const char* names[] = {"dq", "dk", "dv"};
      const std::vector<T>* want[] = {&dq, &dk, &dv};
      const std::vector<T>* got[] = {&dq2, &dk2, &dv2};
      for (int i = 0; i < 3; ++i) {
        const double e = rel_error(got[i]->data(), want[i]->data(), int64_t(want[i]->size()));
        NCP_EXPECT(e < tol, describe(s) << " " << names[i] << (sizeof(T) == 8 ? " double" : " float")
                                        << " rel error " << e);
      }
      // Only dv and no output wanted: dv alone, the same values.
      std::vector<T> dv3(v.size());
      attention_backward_recompute(static_cast<T*>(nullptr), static_cast<T*>(nullptr), dv3.data(),
                                   static_cast<T*>(nullptr), dy.data(), q.data(), k.data(), v.data(), s);
      NCP_EXPECT(dv3 == dv2, describe(s) << ": dv alone differs");
    };
    run(0.0);
    run(0.0f);
    expect_backward_accumulates("attention_backward_recompute " + describe(s),
                                {int64_t(in.q.size()), int64_t(in.k.size()), int64_t(in.v.size())},
                                [&](const std::vector<double*>& p) {
                                  attention_backward_recompute(p[0], p[1], p[2], static_cast<double*>(nullptr),
                                                               dout.data(), in.q.data(), in.k.data(), in.v.data(), s);
                                });
  }
}

NCP_TEST("attention: backward without saved probabilities is an error") {
  const AttentionShape s{1, 2, 2, 1, 2, false};
  std::vector<double> x(4), dx(4);
  bool threw = false;
  try {
    attention_backward(dx.data(), dx.data(), dx.data(), x.data(), x.data(), x.data(), x.data(),
                       static_cast<const double*>(nullptr), s);
  } catch (const ncp::Error& e) {
    threw = e.code() == "NCP_EINVAL";
  }
  NCP_EXPECT(threw);
}

}  // namespace
