// ncp::cuda::parity_check: every op of the CUDA function table against the CPU reference ops, on the same
// deterministic random inputs with odd shapes (partial GEMM tiles, group sizes that are not powers of two).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_backend.h"
#include "core/dtype.h"
#include "core/env_scope.h"
#include "core/error.h"
#include "cpu/ops.h"

namespace ncp::cuda {
namespace {

using Vec = std::vector<float>;

Vec random_vec(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  Vec v(static_cast<size_t>(n));
  for (auto& x : v) x = float(d(rng));
  return v;
}

double rel_error(const Vec& gpu, const Vec& cpu) {
  double num = 0, den = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double d = double(gpu[i]) - double(cpu[i]);
    num += d * d;
    den += double(cpu[i]) * double(cpu[i]);
  }
  const double e = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
  return std::isfinite(e) ? e : std::numeric_limits<double>::infinity();  // NaN anywhere fails the check
}

Vec minus(const Vec& a, const Vec& b) {
  Vec d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

void check(const ncp_cuda_api* t, int status, const std::string& what) {
  if (status != NCP_CUDA_OK) throw Error("NCP_ECUDA", "CUDA parity check: " + what + ": " + t->last_error());
}

// A device copy of a host vector, freed on scope exit.
class Buffer {
 public:
  Buffer(const ncp_cuda_api* t, const Vec& host) : t_(t), n_(host.size()) {
    void* p = nullptr;
    check(t_, t_->mem_alloc(&p, std::max<size_t>(n_, 1) * sizeof(float)), "mem_alloc");
    p_ = static_cast<float*>(p);
    if (n_) check(t_, t_->memcpy_h2d(p_, host.data(), n_ * sizeof(float)), "memcpy_h2d");
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { t_->mem_free(p_); }
  float* get() const { return p_; }
  Vec download() const {
    Vec h(n_);
    if (n_) check(t_, t_->memcpy_d2h(h.data(), p_, n_ * sizeof(float)), "memcpy_d2h");
    return h;
  }

 private:
  const ncp_cuda_api* t_;
  size_t n_;
  float* p_ = nullptr;
};

// A gradient buffer that starts from the same random values on both sides; compared by its increment.
struct Grad {
  Vec init, cpu;
  Buffer gpu;
  Grad(const ncp_cuda_api* t, int64_t n, uint64_t seed)
      : init(random_vec(n, seed, -0.5, 0.5)), cpu(init), gpu(t, init) {}
};

class Recorder {
 public:
  Recorder(const ncp_cuda_api* t, std::string suffix) : t_(t), suffix_(std::move(suffix)) {}
  const ncp_cuda_api* api() const { return t_; }
  void call(int status, const std::string& what) { check(t_, status, what + suffix_); }
  void compare(const std::string& op, const std::string& output, const Vec& gpu, const Vec& cpu) {
    record(op, output, rel_error(gpu, cpu));
  }
  void compare(const std::string& op, const std::string& output, const Buffer& gpu, const Vec& cpu) {
    compare(op, output, gpu.download(), cpu);
  }
  void compare(const std::string& op, const std::string& output, const Grad& g) {
    compare(op, output, minus(g.gpu.download(), g.init), minus(g.cpu, g.init));
  }
  void record(const std::string& op, const std::string& output, double err) {
    const std::string name = op + suffix_;
    auto it = std::find_if(results.begin(), results.end(), [&](const ParityResult& r) { return r.op == name; });
    if (it == results.end()) it = results.insert(results.end(), ParityResult{name, err, output, {}});
    if (err > it->max_rel_error) it->max_rel_error = err, it->worst_output = output;
    it->outputs.emplace_back(output, err);
  }
  // The op's pass bound (ParityResult::bound), for ops that round to bf16 inside.
  void set_bound(const std::string& op, double bound) {
    for (ParityResult& r : results)
      if (r.op == op + suffix_) r.bound = bound;
  }
  std::vector<ParityResult> results;

 private:
  const ncp_cuda_api* t_;
  std::string suffix_;
};

void gemm_cases(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  struct Case {
    int64_t M, N, K;
    float beta;
  };
  uint64_t seed = 100;
  for (const Case c : {Case{37, 53, 29, 0.3f}, Case{131, 70, 257, 0.3f}, Case{67, 129, 17, 0.f}})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const int64_t lda = (ta ? c.M : c.K) + 3, ldb = (tb ? c.K : c.N) + 2, ldc = c.N + 1;
        const Vec A = random_vec((ta ? c.K : c.M) * lda, ++seed), B = random_vec((tb ? c.N : c.K) * ldb, ++seed);
        Vec C = random_vec(c.M * ldc, ++seed);
        // beta == 0 must not read C: the GPU's C starts as NaN.
        Buffer dA(t, A), dB(t, B), dC(t, c.beta == 0.f ? Vec(C.size(), std::nanf("")) : C);
        cpu::gemm<float>(ta, tb, c.M, c.N, c.K, 0.7f, A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
        r.call(t->gemm(ta, tb, c.M, c.N, c.K, 0.7f, dA.get(), lda, dB.get(), ldb, c.beta, dC.get(), ldc), "gemm");
        Vec got = dC.download();
        for (int64_t i = 0; i < c.M; ++i)  // the padding columns are not part of C
          for (int64_t j = c.N; j < ldc; ++j) got[i * ldc + j] = C[i * ldc + j];
        r.compare("gemm", std::to_string(c.M) + "x" + std::to_string(c.N) + "x" + std::to_string(c.K) +
                              (ta ? " A^T" : " A") + (tb ? " B^T" : " B"),
                  got, C);
      }
}

void linear_case(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  const int64_t rows = 19, in = 37, out = 23;
  const Vec x = random_vec(rows * in, 1), W = random_vec(out * in, 2), b = random_vec(out, 3),
            dy = random_vec(rows * out, 4);
  Buffer gx(t, x), gW(t, W), gb(t, b), gdy(t, dy), gy(t, Vec(rows * out));
  Vec y(rows * out);
  cpu::linear_forward<float>(y.data(), x.data(), W.data(), b.data(), rows, in, out);
  r.call(t->linear_forward(gy.get(), gx.get(), gW.get(), gb.get(), rows, in, out), "linear_forward");
  r.compare("linear", "y", gy, y);
  Grad dx(t, rows * in, 5), dW(t, out * in, 6), db(t, out, 7);
  cpu::linear_backward<float>(dx.cpu.data(), dW.cpu.data(), db.cpu.data(), dy.data(), x.data(), W.data(), rows, in,
                              out);
  r.call(t->linear_backward(dx.gpu.get(), dW.gpu.get(), db.gpu.get(), gdy.get(), gx.get(), gW.get(), rows, in, out),
         "linear_backward");
  r.compare("linear", "dx", dx);
  r.compare("linear", "dW", dW);
  r.compare("linear", "db", db);
}

// LoRA: each fused kernel's rank bucket (1..4, 8, 16, 32, with ranks below the bucket's size; NCP_CUDA_LORA=fused,
// so that the small shapes take them), the GEMM chain past rank 32, row counts that end inside a warp's row group,
// several column tiles and row chunks; every backward form the blocks call (all gradients, dx only with no x, the
// weight gradients only). Unforced, the GEMM chain runs (checked first, by a forward's launch count).
void lora_cases(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  {  // Unforced, every adapter takes the GEMM chain (two GEMMs forward): cuda/lora.cu, takes_fused_kernels.
    const EnvScope unforced("NCP_CUDA_LORA", nullptr);
    const cpu::LoraShape s{1024, 24, 20, 4};
    Buffer gx(t, Vec(s.rows * s.in)), gA(t, Vec(s.rank * s.in)), gB(t, Vec(s.out * s.rank)),
        gy(t, Vec(s.rows * s.out));
    const int64_t launches0 = t->launch_count();
    r.call(t->lora_forward(gy.get(), gx.get(), gA.get(), gB.get(), 1.f, s.rows, s.in, s.out, s.rank),
           "lora_forward");
    if (t->launch_count() - launches0 < 2) r.record("lora", "unforced rank 4 did not take the GEMM chain", 1.0);
  }
  const EnvScope forced("NCP_CUDA_LORA", "fused");
  const cpu::LoraShape shapes[] = {{37, 45, 29, 1},  {70, 33, 130, 4}, {300, 150, 17, 7},
                                   {41, 19, 23, 13}, {29, 31, 37, 32}, {23, 17, 19, 40}};
  uint64_t seed = 900;
  for (const cpu::LoraShape& s : shapes) {
    const std::string tag = "rank " + std::to_string(s.rank) + " ";
    const float scale = 0.75f;
    const Vec x = random_vec(s.rows * s.in, ++seed), A = random_vec(s.rank * s.in, ++seed),
              B = random_vec(s.out * s.rank, ++seed), dy = random_vec(s.rows * s.out, ++seed);
    Buffer gx(t, x), gA(t, A), gB(t, B), gdy(t, dy);
    Grad y(t, s.rows * s.out, ++seed);
    cpu::lora_forward<float>(y.cpu.data(), x.data(), A.data(), B.data(), scale, s);
    // Ranks up to 32 take the fused kernels when forced: one launch forward, three for the full backward (the GEMM
    // chain takes two and five). A dispatch that fell back to the GEMMs would still agree, so count.
    const bool fused = s.rank <= 32;
    const int64_t launches0 = t->launch_count();
    r.call(t->lora_forward(y.gpu.get(), gx.get(), gA.get(), gB.get(), scale, s.rows, s.in, s.out, s.rank),
           "lora_forward");
    if (fused && t->launch_count() - launches0 != 1) r.record("lora", tag + "forward launches != 1", 1.0);
    r.compare("lora", tag + "y", y);
    for (int form = 0; form < 3; ++form) {
      const bool want_dx = form != 2, want_params = form != 1;
      const std::string ftag = tag + (form == 0 ? "" : form == 1 ? "(dx only) " : "(params only) ");
      Grad dx(t, s.rows * s.in, ++seed), dA(t, s.rank * s.in, ++seed), dB(t, s.out * s.rank, ++seed);
      cpu::lora_backward<float>(want_dx ? dx.cpu.data() : nullptr, want_params ? dA.cpu.data() : nullptr,
                                want_params ? dB.cpu.data() : nullptr, dy.data(), want_params ? x.data() : nullptr,
                                A.data(), B.data(), scale, s);
      const int64_t backward0 = t->launch_count();
      r.call(t->lora_backward(want_dx ? dx.gpu.get() : nullptr, want_params ? dA.gpu.get() : nullptr,
                              want_params ? dB.gpu.get() : nullptr, gdy.get(), want_params ? gx.get() : nullptr,
                              gA.get(), gB.get(), scale, s.rows, s.in, s.out, s.rank),
             "lora_backward");
      if (fused && form == 0 && t->launch_count() - backward0 != 3)
        r.record("lora", ftag + "backward launches != 3", 1.0);
      if (want_dx) r.compare("lora", ftag + "dx", dx);
      if (want_params) {
        r.compare("lora", ftag + "dA", dA);
        r.compare("lora", ftag + "dB", dB);
      }
      // A gradient that was not asked for stays as it was.
      if (!want_dx && dx.gpu.download() != dx.init) r.record("lora", ftag + "dx written", 1.0);
      if (!want_params && (dA.gpu.download() != dA.init || dB.gpu.download() != dB.init))
        r.record("lora", ftag + "dA/dB written", 1.0);
    }
  }
}

// 3x3 stride 1 and 2 with padding, and the direct 1x1 case, all on odd sizes.
const cpu::Conv2dShape kConvShapes[] = {{2, 3, 11, 9, 5, 3, 1, 1}, {2, 4, 9, 7, 6, 3, 2, 1}, {3, 5, 5, 7, 4, 1, 1, 0}};

// One conv case shared by the float and the bf16-weight checks: the shape in both APIs' forms, and random
// input, weights, bias and output gradient drawn from `seed` (advanced past them).
struct ConvCase {
  ncp_cuda_conv2d_shape gs;
  std::string tag;
  int64_t nx, ny, nw;
  Vec x, W, b, dy;
  ConvCase(const cpu::Conv2dShape& s, uint64_t& seed)
      : gs{s.N, s.Cin, s.H, s.W, s.Cout, s.k, s.stride, s.pad},
        tag("k" + std::to_string(s.k) + "s" + std::to_string(s.stride) + "."),
        nx(s.N * s.Cin * s.H * s.W),
        ny(s.N * s.Cout * s.Ho() * s.Wo()),
        nw(s.Cout * s.Cin * s.k * s.k),
        x(random_vec(nx, ++seed)),
        W(random_vec(nw, ++seed)),
        b(random_vec(s.Cout, ++seed)),
        dy(random_vec(ny, ++seed)) {}
};

void conv2d_cases(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  uint64_t seed = 200;
  for (const cpu::Conv2dShape& s : kConvShapes) {
    const ConvCase c(s, seed);
    const auto& [gs, tag, nx, ny, nw, x, W, b, dy] = c;
    Buffer gx(t, x), gW(t, W), gb(t, b), gdy(t, dy), gy(t, Vec(ny));
    Vec y(ny);
    cpu::conv2d_forward<float>(y.data(), x.data(), W.data(), b.data(), s);
    r.call(t->conv2d_forward(gy.get(), gx.get(), gW.get(), gb.get(), &gs), "conv2d_forward");
    r.compare("conv2d", tag + "y", gy, y);
    Grad dx(t, nx, ++seed), dW(t, nw, ++seed), db(t, s.Cout, ++seed);
    cpu::conv2d_backward<float>(dx.cpu.data(), dW.cpu.data(), db.cpu.data(), dy.data(), x.data(), W.data(), s);
    r.call(t->conv2d_backward(dx.gpu.get(), dW.gpu.get(), db.gpu.get(), gdy.get(), gx.get(), gW.get(), &gs),
           "conv2d_backward");
    r.compare("conv2d", tag + "dx", dx);
    r.compare("conv2d", tag + "dW", dW);
    r.compare("conv2d", tag + "db", db);
  }
}

void attention_cases(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  uint64_t seed = 300;
  for (const cpu::AttentionShape s :
       {cpu::AttentionShape{2, 67, 70, 3, 8, false}, cpu::AttentionShape{2, 11, 11, 2, 5, true}}) {
    const ncp_cuda_attention_shape gs{s.B, s.Lq, s.Lk, s.H, s.Dh, s.causal ? 1 : 0};
    const std::string tag = s.causal ? "causal." : "";
    const int64_t nq = s.B * s.Lq * s.H * s.Dh, nk = s.B * s.Lk * s.H * s.Dh, np = s.B * s.H * s.Lq * s.Lk;
    const Vec q = random_vec(nq, ++seed, -2, 2), k = random_vec(nk, ++seed, -2, 2), v = random_vec(nk, ++seed),
              dout = random_vec(nq, ++seed);
    Buffer gq(t, q), gk(t, k), gv(t, v), gdout(t, dout), gout(t, Vec(nq)), gp(t, Vec(np));
    Vec out(nq), probs(np);
    cpu::attention_forward<float>(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
    r.call(t->attention_forward(gout.get(), gp.get(), gq.get(), gk.get(), gv.get(), &gs), "attention_forward");
    r.compare("attention", tag + "out", gout, out);
    r.compare("attention", tag + "probs", gp, probs);
    Grad dq(t, nq, ++seed), dk(t, nk, ++seed), dv(t, nk, ++seed);
    // Both sides differentiate through the CPU's probabilities, so backward is checked on its own.
    Buffer gcp(t, probs);
    cpu::attention_backward<float>(dq.cpu.data(), dk.cpu.data(), dv.cpu.data(), dout.data(), q.data(), k.data(),
                                   v.data(), probs.data(), s);
    r.call(t->attention_backward(dq.gpu.get(), dk.gpu.get(), dv.gpu.get(), gdout.get(), gq.get(), gk.get(), gv.get(),
                                 gcp.get(), &gs),
           "attention_backward");
    r.compare("attention", tag + "dq", dq);
    r.compare("attention", tag + "dk", dk);
    r.compare("attention", tag + "dv", dv);
    // Without saved probabilities (what the model calls: the forward keeps nothing, backward recomputes), in one
    // query block and, with NCP_CUDA_ATTENTION_BLOCK squeezing the block budget to 100 floats, in many (1 query
    // row per block for the first shape, 4 for the causal one).
    for (const bool blocked : {false, true}) {
      const EnvScope block_budget("NCP_CUDA_ATTENTION_BLOCK", blocked ? "100" : nullptr);
      const std::string btag = tag + (blocked ? "blocked." : "");
      {
        Buffer gout2(t, Vec(nq));
        r.call(t->attention_forward(gout2.get(), nullptr, gq.get(), gk.get(), gv.get(), &gs), "attention_forward");
        r.compare("attention", btag + "no_probs.out", gout2, out);
      }
      for (const bool with_out : {true, false}) {
        const std::string rtag = btag + (with_out ? "recompute." : "recompute.no_out.");
        Grad rq(t, nq, ++seed), rk(t, nk, ++seed), rv(t, nk, ++seed);
        Vec rout(nq);
        Buffer grout(t, Vec(nq));
        cpu::attention_backward_recompute<float>(rq.cpu.data(), rk.cpu.data(), rv.cpu.data(),
                                                 with_out ? rout.data() : nullptr, dout.data(), q.data(), k.data(),
                                                 v.data(), s);
        r.call(t->attention_backward_recompute(rq.gpu.get(), rk.gpu.get(), rv.gpu.get(),
                                               with_out ? grout.get() : nullptr, gdout.get(), gq.get(), gk.get(),
                                               gv.get(), &gs),
               "attention_backward_recompute");
        if (with_out) r.compare("attention", rtag + "out", grout, rout);
        r.compare("attention", rtag + "dq", rq);
        r.compare("attention", rtag + "dk", rk);
        r.compare("attention", rtag + "dv", rv);
      }
    }
  }
}

void norm_cases(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  {
    const int64_t N = 2, C = 12, HW = 35, G = 4, n = N * C * HW;
    const double eps = 1e-5;
    Vec x = random_vec(n, 400);
    for (auto& e : x) e += 3.f;  // an offset mean: one-pass variance would lose digits here
    const Vec gamma = random_vec(C, 401, 0.5, 1.5), beta = random_vec(C, 402), dy = random_vec(n, 403);
    // The plain op, then the fused GroupNorm+SiLU (whose backward recomputes the normalised values); each group in
    // one block, then split into chunks of 16 values (NCP_CUDA_NORM_CHUNK: a group of 3 x 35 values becomes 6
    // chunks, most of them across a channel boundary), as the large groups of SD's resolutions are.
    for (const bool split : {false, true})
    for (const bool silu : {false, true})
      for (const bool affine : {true, false}) {
        const EnvScope chunk("NCP_CUDA_NORM_CHUNK", split ? "16" : nullptr);
        const std::string op = silu ? "group_norm_silu" : "group_norm",
                          tag = std::string(split ? "chunks." : "") + (affine ? "" : "plain.");
        const float* g = affine ? gamma.data() : nullptr;
        const float* bt = affine ? beta.data() : nullptr;
        const float* gpu_gamma = nullptr;
        const float* gpu_beta = nullptr;
        Buffer gx(t, x), gg(t, gamma), gb(t, beta), gdy(t, dy), gy(t, Vec(n)), gm(t, Vec(N * G)), gr(t, Vec(N * G));
        if (affine) gpu_gamma = gg.get(), gpu_beta = gb.get();
        Vec y(n), mean(N * G), rstd(N * G);
        Grad dx(t, n, 404), dgamma(t, C, 405), dbeta(t, C, 406);
        if (silu) {
          cpu::group_norm_silu_forward<float>(y.data(), mean.data(), rstd.data(), x.data(), g, bt, N, C, HW, G, eps);
          r.call(t->group_norm_silu_forward(gy.get(), gm.get(), gr.get(), gx.get(), gpu_gamma, gpu_beta, N, C, HW, G,
                                            eps),
                 "group_norm_silu_forward");
          cpu::group_norm_silu_backward<float>(dx.cpu.data(), dgamma.cpu.data(), dbeta.cpu.data(), dy.data(),
                                               x.data(), mean.data(), rstd.data(), g, bt, N, C, HW, G);
          r.call(t->group_norm_silu_backward(dx.gpu.get(), dgamma.gpu.get(), dbeta.gpu.get(), gdy.get(), gx.get(),
                                             gm.get(), gr.get(), gpu_gamma, gpu_beta, N, C, HW, G),
                 "group_norm_silu_backward");
        } else {
          cpu::group_norm_forward<float>(y.data(), mean.data(), rstd.data(), x.data(), g, bt, N, C, HW, G, eps);
          r.call(t->group_norm_forward(gy.get(), gm.get(), gr.get(), gx.get(), gpu_gamma, gpu_beta, N, C, HW, G, eps),
                 "group_norm_forward");
          cpu::group_norm_backward<float>(dx.cpu.data(), dgamma.cpu.data(), dbeta.cpu.data(), dy.data(), x.data(),
                                          mean.data(), rstd.data(), g, N, C, HW, G);
          r.call(t->group_norm_backward(dx.gpu.get(), dgamma.gpu.get(), dbeta.gpu.get(), gdy.get(), gx.get(),
                                        gm.get(), gr.get(), gpu_gamma, N, C, HW, G),
                 "group_norm_backward");
        }
        r.compare(op, tag + "y", gy, y);
        r.compare(op, tag + "mean", gm, mean);
        r.compare(op, tag + "rstd", gr, rstd);
        r.compare(op, tag + "dx", dx);
        r.compare(op, tag + "dgamma", dgamma);
        r.compare(op, tag + "dbeta", dbeta);
      }
  }
  {
    const int64_t rows = 13, C = 77, n = rows * C;
    const double eps = 1e-5;
    Vec x = random_vec(n, 410);
    for (auto& e : x) e -= 2.f;
    const Vec gamma = random_vec(C, 411, 0.5, 1.5), beta = random_vec(C, 412), dy = random_vec(n, 413);
    Buffer gx(t, x), gg(t, gamma), gb(t, beta), gdy(t, dy), gy(t, Vec(n)), gm(t, Vec(rows)), gr(t, Vec(rows));
    Vec y(n), mean(rows), rstd(rows);
    cpu::layer_norm_forward<float>(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows, C,
                                   eps);
    r.call(t->layer_norm_forward(gy.get(), gm.get(), gr.get(), gx.get(), gg.get(), gb.get(), rows, C, eps),
           "layer_norm_forward");
    r.compare("layer_norm", "y", gy, y);
    r.compare("layer_norm", "mean", gm, mean);
    r.compare("layer_norm", "rstd", gr, rstd);
    Grad dx(t, n, 414), dgamma(t, C, 415), dbeta(t, C, 416);
    cpu::layer_norm_backward<float>(dx.cpu.data(), dgamma.cpu.data(), dbeta.cpu.data(), dy.data(), x.data(),
                                    mean.data(), rstd.data(), gamma.data(), rows, C);
    r.call(t->layer_norm_backward(dx.gpu.get(), dgamma.gpu.get(), dbeta.gpu.get(), gdy.get(), gx.get(), gm.get(),
                                  gr.get(), gg.get(), rows, C),
           "layer_norm_backward");
    r.compare("layer_norm", "dx", dx);
    r.compare("layer_norm", "dgamma", dgamma);
    r.compare("layer_norm", "dbeta", dbeta);
  }
}

void activation_cases(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  const int64_t n = 1001;
  const Vec x = random_vec(n, 500, -6, 6), dy = random_vec(n, 501);
  Buffer gx(t, x), gdy(t, dy);
  const std::pair<cpu::Activation, const char*> kinds[] = {{cpu::Activation::SiLU, "silu"},
                                                           {cpu::Activation::GeluErf, "gelu_erf"},
                                                           {cpu::Activation::GeluTanh, "gelu_tanh"},
                                                           {cpu::Activation::QuickGelu, "quick_gelu"}};
  for (const auto& [kind, name] : kinds) {
    Buffer gy(t, Vec(n));
    Vec y(n);
    cpu::activation_forward<float>(kind, y.data(), x.data(), n);
    r.call(t->activation_forward(int32_t(kind), gy.get(), gx.get(), n), std::string(name) + " forward");
    r.compare(name, "y", gy, y);
    Grad dx(t, n, 502);
    cpu::activation_backward<float>(kind, dx.cpu.data(), dy.data(), x.data(), n);
    r.call(t->activation_backward(int32_t(kind), dx.gpu.get(), gdy.get(), gx.get(), n),
           std::string(name) + " backward");
    r.compare(name, "dx", dx);
  }
  const int64_t rows = 7, D = 33;
  const Vec gx2 = random_vec(rows * 2 * D, 503, -4, 4), gdy2 = random_vec(rows * D, 504);
  Buffer gx_(t, gx2), gdy_(t, gdy2), gy(t, Vec(rows * D));
  Vec y(rows * D);
  cpu::geglu_forward<float>(y.data(), gx2.data(), rows, D);
  r.call(t->geglu_forward(gy.get(), gx_.get(), rows, D), "geglu_forward");
  r.compare("geglu", "y", gy, y);
  Grad dx(t, rows * 2 * D, 505);
  cpu::geglu_backward<float>(dx.cpu.data(), gdy2.data(), gx2.data(), rows, D);
  r.call(t->geglu_backward(dx.gpu.get(), gdy_.get(), gx_.get(), rows, D), "geglu_backward");
  r.compare("geglu", "dx", dx);
}

void layout_cases(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  {  // the bf16 tape: round on the device, widen back; one bf16 step apart would be 4e-3 relative, far over 1e-4
    const int64_t n = 100003;
    Vec x = random_vec(n, 580, -50, 50);
    x[0] = 1.0f + 1.0f / 256.0f, x[1] = 1.0f + 3.0f / 256.0f;  // ties to even
    Buffer gx(t, x), half(t, Vec((n + 1) / 2)), gy(t, Vec(n));
    r.call(t->round_to_bf16(half.get(), gx.get(), n), "round_to_bf16");
    r.call(t->widen_bf16(gy.get(), half.get(), n), "widen_bf16");
    std::vector<uint16_t> cpu_half(static_cast<size_t>(n));
    Vec y(static_cast<size_t>(n));
    cpu::round_to_bf16(cpu_half.data(), x.data(), n);
    cpu::widen_bf16(y.data(), cpu_half.data(), n);
    r.compare("round_to_bf16 + widen_bf16", "y", gy, y);
  }
  {  // transpose (odd sizes crossing the 32x32 tiles), y = a x + c
    const int64_t N = 3, rows = 45, cols = 70, n = N * rows * cols;
    const Vec x = random_vec(n, 590);
    Buffer gx(t, x), gy(t, Vec(n)), gw(t, Vec(n));
    Vec y(n), w(n);
    for (int64_t b = 0; b < N; ++b)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) y[size_t((b * cols + j) * rows + i)] = x[size_t((b * rows + i) * cols + j)];
    r.call(t->transpose_batched(gy.get(), gx.get(), N, rows, cols), "transpose_batched");
    r.compare("transpose_batched", "y", gy, y);
    for (int64_t i = 0; i < n; ++i) w[size_t(i)] = 2.0f * x[size_t(i)] - 1.0f;
    r.call(t->scale_shift(gw.get(), gx.get(), 2.0f, -1.0f, n), "scale_shift");
    r.compare("scale_shift", "y", gw, w);
  }
  {
    const int64_t N = 2, C = 3, H = 5, W = 7, nx = N * C * H * W, ny = 4 * nx;
    const Vec x = random_vec(nx, 600), dy = random_vec(ny, 601);
    Buffer gx(t, x), gdy(t, dy), gy(t, Vec(ny));
    Vec y(ny);
    cpu::upsample_nearest2x_forward<float>(y.data(), x.data(), N, C, H, W);
    r.call(t->upsample_nearest2x_forward(gy.get(), gx.get(), N, C, H, W), "upsample_nearest2x_forward");
    r.compare("upsample_nearest2x", "y", gy, y);
    Grad dx(t, nx, 602);
    cpu::upsample_nearest2x_backward<float>(dx.cpu.data(), dy.data(), N, C, H, W);
    r.call(t->upsample_nearest2x_backward(dx.gpu.get(), gdy.get(), N, C, H, W), "upsample_nearest2x_backward");
    r.compare("upsample_nearest2x", "dx", dx);
  }
  {
    const int64_t n = 1001;
    const Vec a = random_vec(n, 610), b = random_vec(n, 611), dy = random_vec(n, 612);
    Buffer ga(t, a), gb(t, b), gdy(t, dy), gy(t, Vec(n));
    Vec y(n);
    cpu::add_forward<float>(y.data(), a.data(), b.data(), n);
    r.call(t->add_forward(gy.get(), ga.get(), gb.get(), n), "add_forward");
    r.compare("add", "y", gy, y);
    Grad da(t, n, 613), db(t, n, 614);
    cpu::add_backward<float>(da.cpu.data(), db.cpu.data(), dy.data(), n);
    r.call(t->add_backward(da.gpu.get(), db.gpu.get(), gdy.get(), n), "add_backward");
    r.compare("add", "da", da);
    r.compare("add", "db", db);
  }
  {
    const int64_t N = 2, Ca = 3, Cb = 5, HW = 13, ny = N * (Ca + Cb) * HW;
    const Vec a = random_vec(N * Ca * HW, 620), b = random_vec(N * Cb * HW, 621), dy = random_vec(ny, 622);
    Buffer ga(t, a), gb(t, b), gdy(t, dy), gy(t, Vec(ny));
    Vec y(ny);
    cpu::concat_channels_forward<float>(y.data(), a.data(), b.data(), N, Ca, Cb, HW);
    r.call(t->concat_channels_forward(gy.get(), ga.get(), gb.get(), N, Ca, Cb, HW), "concat_channels_forward");
    r.compare("concat_channels", "y", gy, y);
    Grad da(t, N * Ca * HW, 623), db(t, N * Cb * HW, 624);
    cpu::concat_channels_backward<float>(da.cpu.data(), db.cpu.data(), dy.data(), N, Ca, Cb, HW);
    r.call(t->concat_channels_backward(da.gpu.get(), db.gpu.get(), gdy.get(), N, Ca, Cb, HW),
           "concat_channels_backward");
    r.compare("concat_channels", "da", da);
    r.compare("concat_channels", "db", db);
  }
  {
    const int64_t N = 2, C = 5, HW = 17, n = N * C * HW;
    Vec y = random_vec(n, 630);
    const Vec bias = random_vec(N * C, 631), dy = random_vec(n, 632);
    Buffer gy(t, y), gbias(t, bias), gdy(t, dy);
    cpu::add_channel_bias_forward<float>(y.data(), bias.data(), N, C, HW);
    r.call(t->add_channel_bias_forward(gy.get(), gbias.get(), N, C, HW), "add_channel_bias_forward");
    r.compare("add_channel_bias", "y", gy, y);
    Grad dbias(t, N * C, 633);
    cpu::add_channel_bias_backward<float>(dbias.cpu.data(), dy.data(), N, C, HW);
    r.call(t->add_channel_bias_backward(dbias.gpu.get(), gdy.get(), N, C, HW), "add_channel_bias_backward");
    r.compare("add_channel_bias", "dbias", dbias);
  }
}

void training_cases(Recorder& r) {
  const ncp_cuda_api* t = r.api();
  {
    const Vec steps = {0.f, 1.f, 37.5f, 500.f, 999.f};
    const int64_t N = int64_t(steps.size());
    Buffer gt(t, steps);
    struct Case {
      int64_t dim;
      bool flip;
      double shift;
    };
    for (const Case c : {Case{33, true, 1.0}, Case{320, false, 0.0}}) {
      Buffer gy(t, Vec(N * c.dim, 5.f));
      Vec y(N * c.dim, 7.f);
      cpu::timestep_embedding<float>(y.data(), steps.data(), N, c.dim, c.flip, c.shift);
      r.call(t->timestep_embedding(gy.get(), gt.get(), N, c.dim, c.flip, c.shift, 10000.0), "timestep_embedding");
      r.compare("timestep_embedding", "dim" + std::to_string(c.dim), gy, y);
    }
  }
  {
    const int64_t n = 70001;  // several reduction blocks plus a partial one
    const Vec a = random_vec(n, 700), b = random_vec(n, 701);
    Buffer ga(t, a), gb(t, b);
    const double cpu_loss = cpu::mse_forward<float>(a.data(), b.data(), n);
    double gpu_loss = 0;
    r.call(t->mse_forward(ga.get(), gb.get(), n, &gpu_loss), "mse_forward");
    r.record("mse", "loss", std::fabs(gpu_loss - cpu_loss) / std::max(std::fabs(cpu_loss), 1e-30));
    Grad da(t, n, 702), db(t, n, 703);
    // An upstream gradient of 0.37 n makes the increments O(1), like the starting gradients: with tiny
    // increments, one ulp of the sum (FMA contraction differs between compilers) would dominate the comparison.
    const double scale = 0.37 * double(n);
    cpu::mse_backward<float>(da.cpu.data(), db.cpu.data(), a.data(), b.data(), n, scale);
    r.call(t->mse_backward(da.gpu.get(), db.gpu.get(), ga.get(), gb.get(), n, scale), "mse_backward");
    r.compare("mse", "da", da);
    r.compare("mse", "db", db);
  }
  {
    const int64_t n = 1001, step = 3;
    // Parameters near the update's magnitude, so one ulp of the new parameter is small against the update,
    // and a weight decay large enough that dropping it would show (lr wd param ~ 5% of the update).
    Vec param = random_vec(n, 710, -0.05, 0.05), m = random_vec(n, 711, -0.1, 0.1), v = random_vec(n, 712, 0.0, 0.01);
    const Vec param0 = param, grad = random_vec(n, 713);
    const cpu::AdamWConfig c{1e-2, 0.9, 0.999, 1e-8, 1.0};
    const ncp_cuda_adamw_config gc{c.lr, c.beta1, c.beta2, c.eps, c.weight_decay};
    Buffer gparam(t, param), gm(t, m), gv(t, v), ggrad(t, grad);
    cpu::adamw_step<float>(param.data(), grad.data(), m.data(), v.data(), n, step, c);
    r.call(t->adamw_step(gparam.get(), ggrad.get(), gm.get(), gv.get(), n, step, &gc), "adamw_step");
    // Compare the update, not the parameter, so an error in it cannot hide behind the parameter's size.
    r.compare("adamw", "param update", minus(gparam.download(), param0), minus(param, param0));
    r.compare("adamw", "m", gm, m);
    r.compare("adamw", "v", gv, v);
  }
}

// Mixed precision: weights stored as bf16 or fp16 on the device. The CPU reference multiplies the same values, each
// operand rounded to the half type and then widened (the GPU rounds its float operands the same way), so the two
// differ only in summation order.
Vec half_rounded(const Vec& v, int32_t dtype) {
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = dtype == NCP_CUDA_F16 ? f16_to_f32(f32_to_f16(v[i])) : bf16_to_f32(f32_to_bf16(v[i]));
  return out;
}
Vec bf16_rounded(const Vec& v) { return half_rounded(v, NCP_CUDA_BF16); }

// A device copy of v as bf16 or fp16 (two per float slot of the Buffer).
struct HalfBuffer {
  Buffer storage;
  HalfBuffer(const ncp_cuda_api* t, const Vec& v, int32_t dtype) : storage(t, Vec((v.size() + 1) / 2)) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = dtype == NCP_CUDA_F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
    if (!h.empty()) check(t, t->memcpy_h2d(storage.get(), h.data(), h.size() * 2), "memcpy_h2d (half)");
  }
  const void* get() const { return storage.get(); }
};

void mixed_cases(Recorder& r, int32_t dtype) {
  const ncp_cuda_api* t = r.api();
  const std::string h = dtype == NCP_CUDA_F16 ? "fp16" : "bf16";
  auto rounded = [&](const Vec& v) { return half_rounded(v, dtype); };
  uint64_t seed = dtype == NCP_CUDA_F16 ? 900 : 700;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {  // A float (activations), B half (weights); odd sizes and padded rows
      const int64_t M = 37, N = 45, K = 131, lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2;
      const Vec A = random_vec((ta ? K : M) * lda, ++seed), B = random_vec((tb ? N : K) * ldb, ++seed);
      Vec C = random_vec(M * N, ++seed);
      Buffer dA(t, A), dC(t, C);
      HalfBuffer dB(t, B, dtype);
      cpu::gemm<float>(ta, tb, M, N, K, 0.7f, rounded(A).data(), lda, rounded(B).data(), ldb, 0.3f, C.data(), N);
      r.call(t->gemm_mixed(ta, tb, M, N, K, 0.7f, dA.get(), NCP_CUDA_F32, lda, dB.get(), dtype, ldb, 0.3f, dC.get(), N),
             "gemm_mixed");
      r.compare("gemm_mixed", std::string(ta ? "A^T" : "A") + (tb ? " B^T" : " B") + " (B " + h + ")", dC, C);
    }
  if (dtype == NCP_CUDA_F16) {  // one GEMM multiplies one half type: bf16 times fp16 is refused (recorded 0 or 1)
    const Vec A = random_vec(4 * 4, ++seed);
    HalfBuffer a(t, A, NCP_CUDA_BF16), b(t, A, NCP_CUDA_F16);
    Buffer c(t, Vec(16));
    const int st = t->gemm_mixed(0, 0, 4, 4, 4, 1.f, a.get(), NCP_CUDA_BF16, 4, b.get(), NCP_CUDA_F16, 4, 0.f, c.get(), 4);
    r.record("gemm_mixed", "bf16 x fp16 refused", st != 0 ? 0.0 : 1.0);
  }
  {
    const int64_t rows = 19, in = 37, out = 23;
    const Vec x = random_vec(rows * in, seed + 10), W = random_vec(out * in, seed + 11), b = random_vec(out, seed + 12),
              dy = random_vec(rows * out, seed + 13);
    Buffer gx(t, x), gb(t, b), gdy(t, dy), gy(t, Vec(rows * out));
    HalfBuffer gW(t, W, dtype);
    Vec y(rows * out);
    cpu::linear_forward<float>(y.data(), rounded(x).data(), rounded(W).data(), b.data(), rows, in, out);
    r.call(t->linear_forward_w(gy.get(), gx.get(), gW.get(), dtype, gb.get(), rows, in, out), "linear_forward_w");
    r.compare("linear (W " + h + ")", "y", gy, y);
    Grad dx(t, rows * in, seed + 14);
    cpu::linear_backward<float>(dx.cpu.data(), nullptr, nullptr, rounded(dy).data(), nullptr, rounded(W).data(), rows,
                                in, out);
    r.call(t->linear_backward_input_w(dx.gpu.get(), gdy.get(), gW.get(), dtype, rows, in, out),
           "linear_backward_input_w");
    r.compare("linear (W " + h + ")", "dx", dx);
  }
  for (const cpu::Conv2dShape& s : kConvShapes) {
    const ConvCase c(s, seed);
    const auto& [gs, tag, nx, ny, nw, x, W, b, dy] = c;
    Buffer gx(t, x), gb(t, b), gdy(t, dy), gy(t, Vec(ny));
    HalfBuffer gW(t, W, dtype);
    Vec y(ny);
    cpu::conv2d_forward<float>(y.data(), rounded(x).data(), rounded(W).data(), b.data(), s);
    r.call(t->conv2d_forward_w(gy.get(), gx.get(), gW.get(), dtype, gb.get(), &gs), "conv2d_forward_w");
    r.compare("conv2d (W " + h + ")", tag + "y", gy, y);
    Grad dx(t, nx, ++seed);
    cpu::conv2d_backward<float>(dx.cpu.data(), nullptr, nullptr, rounded(dy).data(), nullptr, rounded(W).data(), s);
    r.call(t->conv2d_backward_input_w(dx.gpu.get(), gdy.get(), gW.get(), dtype, &gs), "conv2d_backward_input_w");
    r.compare("conv2d (W " + h + ")", tag + "dx", dx);
  }
}

// Switches a fused attention mode on for the cases below and back to the mode the host chose after them.
struct FusedAttentionOn {
  const ncp_cuda_api* t;
  FusedAttentionOn(const ncp_cuda_api* table, int mode) : t(table) {
    check(t, t->set_fused_attention(mode), "set_fused_attention");
  }
  ~FusedAttentionOn() { t->set_fused_attention(status().attention_mode); }
};

// The fused (flash-style) attention kernels. They round q, k, v and dout to bf16 for their tensor-core products,
// so the CPU reference runs on inputs already rounded to bf16; what is left is the rounding of the probability
// and dS tiles to bf16 before their products (unit roundoff 2^-8, about 4e-3, on every term; 1-2e-3 over the sums
// in test_flash_emulated), bounded at 1e-2 relative. A dropped key tile, a missed rescale or a wrong mask costs far more than that. Shapes: partial query
// and key tiles with a head dim that is not a multiple of 16 (40), causal, a head dim of 160 (SD1.5's deepest
// level), causal with more keys than queries (key tiles no query row sees), a head dim of 256 (the largest; the
// smaller backward tiles on Hopper), a head dim that is not a multiple of 4 (the scalar loads), and one with fewer
// keys than kFusedMinKeys (77: cross-attention's text tokens), which must keep the float path and its float bound
// in the same mode. Every fused mode: `fused` (the register-level mma.sync kernels; head dims 160 and 256 take the
// WMMA backward), `fused-async` and `fused-async8` (the double-buffered kernels, on the shapes that take them:
// head dims 40, 64 and 160) and `fused-wmma`.
void fused_attention_cases(Recorder& r, int mode) {
  const ncp_cuda_api* t = r.api();
  const FusedAttentionOn on(t, mode);
  const std::string name = mode == NCP_CUDA_ATTENTION_FUSED_WMMA     ? "fused-wmma"
                           : mode == NCP_CUDA_ATTENTION_FUSED_ASYNC  ? "fused-async"
                           : mode == NCP_CUDA_ATTENTION_FUSED_ASYNC8 ? "fused-async8"
                                                                     : "fused";
  // The double-buffered modes differ from `fused` only where the head dim is a multiple of 8 and at most 160
  // (the others take the plain kernels, already checked under `fused`): only those shapes run for them.
  const bool async = mode == NCP_CUDA_ATTENTION_FUSED_ASYNC || mode == NCP_CUDA_ATTENTION_FUSED_ASYNC8;
  uint64_t seed = 900;
  for (const cpu::AttentionShape s :
       {cpu::AttentionShape{2, 67, 150, 3, 40, false}, cpu::AttentionShape{1, 150, 150, 2, 64, true},
        cpu::AttentionShape{1, 130, 200, 2, 160, false}, cpu::AttentionShape{1, 100, 260, 2, 64, true},
        cpu::AttentionShape{1, 130, 200, 2, 256, true}, cpu::AttentionShape{1, 140, 130, 2, 18, false},
        cpu::AttentionShape{2, 67, 77, 3, 40, false}}) {
    if (async && (s.Dh % 8 != 0 || s.Dh > 160 || s.Lk < 128)) continue;
    const ncp_cuda_attention_shape gs{s.B, s.Lq, s.Lk, s.H, s.Dh, s.causal ? 1 : 0};
    const bool fused = s.Lk >= 128;
    const std::string op = fused ? "attention (" + name + ", bf16)" : "attention (" + name + " mode, 77 keys: float)";
    const std::string tag = "Lq " + std::to_string(s.Lq) + " Lk " + std::to_string(s.Lk) + " Dh " +
                            std::to_string(s.Dh) + (s.causal ? " causal " : " ");
    const int64_t nq = s.B * s.Lq * s.H * s.Dh, nk = s.B * s.Lk * s.H * s.Dh;
    const Vec q = bf16_rounded(random_vec(nq, ++seed, -2, 2)), k = bf16_rounded(random_vec(nk, ++seed, -2, 2)),
              v = bf16_rounded(random_vec(nk, ++seed)), dout = bf16_rounded(random_vec(nq, ++seed));
    Buffer gq(t, q), gk(t, k), gv(t, v), gdout(t, dout), gout(t, Vec(nq));
    Vec out(nq);
    cpu::attention_forward<float>(out.data(), nullptr, q.data(), k.data(), v.data(), s);
    r.call(t->attention_forward(gout.get(), nullptr, gq.get(), gk.get(), gv.get(), &gs), "attention_forward (fused)");
    r.compare(op, tag + "out", gout, out);
    // With the output and all three gradients, then without the output and without dq (dk, dv alone).
    for (const bool full : {true, false}) {
      const std::string rtag = tag + (full ? "recompute." : "recompute.no_out.no_dq.");
      Grad rq(t, nq, ++seed), rk(t, nk, ++seed), rv(t, nk, ++seed);
      Vec rout(nq);
      Buffer grout(t, Vec(nq));
      cpu::attention_backward_recompute<float>(full ? rq.cpu.data() : nullptr, rk.cpu.data(), rv.cpu.data(),
                                               full ? rout.data() : nullptr, dout.data(), q.data(), k.data(),
                                               v.data(), s);
      r.call(t->attention_backward_recompute(full ? rq.gpu.get() : nullptr, rk.gpu.get(), rv.gpu.get(),
                                             full ? grout.get() : nullptr, gdout.get(), gq.get(), gk.get(),
                                             gv.get(), &gs),
             "attention_backward_recompute (fused)");
      if (full) r.compare(op, rtag + "out", grout, rout);
      r.compare(op, rtag + "dq", rq);
      r.compare(op, rtag + "dk", rk);
      r.compare(op, rtag + "dv", rv);
    }
    if (fused) r.set_bound(op, 1e-2);
  }
}

void gemm_based_ops(Recorder& r) {
  gemm_cases(r);
  mixed_cases(r, NCP_CUDA_BF16);
  mixed_cases(r, NCP_CUDA_F16);
  linear_case(r);
  lora_cases(r);
  conv2d_cases(r);
  attention_cases(r);
}

// Restores cuBLAS (when loaded) as the GEMM provider, also when a check throws.
struct GemmChoice {
  const ncp_cuda_api* t;
  ~GemmChoice() { t->select_gemm(NCP_CUDA_GEMM_AUTO); }
};

}  // namespace

std::vector<ParityResult> parity_check() {
  const ncp_cuda_api* t = api();
  if (!t) throw Error("NCP_ECUDA", "CUDA parity check: backend not usable: " + status().reason);
  check(t, t->set_tf32(0), "set_tf32");
  Recorder all(t, "");
  gemm_based_ops(all);
  norm_cases(all);
  activation_cases(all);
  layout_cases(all);
  training_cases(all);
  fused_attention_cases(all, NCP_CUDA_ATTENTION_FUSED);
  fused_attention_cases(all, NCP_CUDA_ATTENTION_FUSED_WMMA);
  fused_attention_cases(all, NCP_CUDA_ATTENTION_FUSED_ASYNC);
  fused_attention_cases(all, NCP_CUDA_ATTENTION_FUSED_ASYNC8);
  check(t, t->synchronize(), "synchronize");
  std::vector<ParityResult> results = all.results;
  if (std::strncmp(t->gemm_provider(), "cublas", 6) == 0) {
    GemmChoice restore{t};
    check(t, t->select_gemm(NCP_CUDA_GEMM_OWN), "select_gemm");
    Recorder own(t, " [ncp-tiled]");
    gemm_based_ops(own);
    check(t, t->synchronize(), "synchronize");
    results.insert(results.end(), own.results.begin(), own.results.end());
  }
  return results;
}

}  // namespace ncp::cuda
