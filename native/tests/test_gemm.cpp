// GEMM: every backend (ncp AVX-512, ncp AVX2, OpenBLAS) against a naive long-double loop, over all transpose
// combinations, odd and degenerate sizes, padded leading dimensions and the alpha / beta rules.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "cpu/gemm_dispatch.h"
#include "cpu/ops.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using ncp::cpu::GemmBackend;

// Restores the automatic backend choice when a test is done with a forced one.
struct ForcedBackend {
  explicit ForcedBackend(GemmBackend b) : ok(ncp::cpu::set_gemm_backend(b)) {}
  ~ForcedBackend() { ncp::cpu::set_gemm_backend(GemmBackend::Auto); }
  bool ok;
};

std::vector<GemmBackend> float_backends() {
  std::vector<GemmBackend> all;
  for (auto b : {GemmBackend::OwnAvx512, GemmBackend::OwnAvx2, GemmBackend::OpenBLAS})
    if (ForcedBackend(b).ok) all.push_back(b);
  return all;
}

const char* backend_name(GemmBackend b) {
  switch (b) {
    case GemmBackend::OwnAvx512: return "own-avx512";
    case GemmBackend::OwnAvx2: return "own-avx2";
    case GemmBackend::OpenBLAS: return "openblas";
    default: return "auto";
  }
}

struct Case {
  int64_t M, N, K;
};

// Shapes around the tile edges (MR 6/14, NR 8/16/32), past the cache blocks (kc 160..512, mc 168..288,
// nc 2048/4096) and big enough (>= 2^20 multiply-adds) to run multithreaded, splitting M or N.
const Case kCases[] = {{1, 1, 1},       {1, 37, 5},     {13, 1, 9},     {37, 29, 1},    {15, 33, 17},
                       {14, 32, 192},   {65, 67, 129},  {100, 33, 261}, {29, 4133, 9},  {701, 45, 400},
                       {28, 300, 300},  {300, 301, 302}, {33, 40, 1100}, {130, 70, 1030}};

// Runs one gemm with padded leading dimensions and checks every element against a long-double reference
// with the rounding bound (K + 2) u sum |alpha a b| + |beta c| (u = unit roundoff of T), the overall relative
// error, and that the padding columns of C were left alone.
template <class T>
void check_gemm(const std::string& what, bool ta, bool tb, const Case& c, T alpha, T beta, uint64_t seed) {
  const int64_t M = c.M, N = c.N, K = c.K;
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
  const int64_t lda = a_cols + 3, ldb = b_cols + 1, ldc = N + 2;
  std::vector<T> A(a_rows * lda), B(b_rows * ldb), C(M * ldc);
  fill_uniform(A, seed);
  fill_uniform(B, seed + 1);
  fill_uniform(C, seed + 2);
  const T sentinel = T(12345.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = N; j < ldc; ++j) C[i * ldc + j] = sentinel;
  const std::vector<T> C0 = C;
  ncp::cpu::gemm<T>(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);

  const double u = std::numeric_limits<T>::epsilon() / 2;
  std::vector<double> got, want;
  int bad = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      long double acc = 0, mag = 0;
      for (int64_t p = 0; p < K; ++p) {
        const long double a = ta ? A[p * lda + i] : A[i * lda + p], b = tb ? B[j * ldb + p] : B[p * ldb + j];
        acc += a * b;
        mag += std::fabs(double(a * b));
      }
      const double ref = double(alpha * acc + beta * (long double)C0[i * ldc + j]);
      const double bound = (K + 2) * u * (std::fabs(double(alpha)) * double(mag) +
                                          std::fabs(double(beta) * double(C0[i * ldc + j]))) + 1e-300;
      const double err = std::fabs(double(C[i * ldc + j]) - ref);
      if (!(err <= bound) && bad++ < 3)
        NCP_EXPECT(err <= bound, what << " C[" << i << "," << j << "] = " << C[i * ldc + j] << " want " << ref);
      got.push_back(double(C[i * ldc + j]));
      want.push_back(ref);
    }
    for (int64_t j = N; j < ldc; ++j)
      if (C[i * ldc + j] != sentinel && bad++ < 3) NCP_EXPECT(false, what << " wrote past N in row " << i);
  }
  NCP_EXPECT(bad == 0, what << ": " << bad << " bad elements");
  // Typical rounding grows like sqrt(K) u: a tighter, norm-wise check than the worst-case bound above.
  const double tol = 8 * std::sqrt(double(K) + 1) * u;
  const double e = rel_error(got.data(), want.data(), int64_t(got.size()));
  NCP_EXPECT(e < tol, what << " rel error " << e << " >= " << tol);
}

template <class T>
void check_all_shapes(const std::string& backend) {
  uint64_t seed = 1;
  for (const Case& c : kCases)
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const std::string what = backend + " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) +
                               " K=" + std::to_string(c.K) + " ta=" + std::to_string(ta) +
                               " tb=" + std::to_string(tb);
      check_gemm<T>(what + " alpha=1 beta=0", ta, tb, c, T(1), T(0), seed += 3);
      check_gemm<T>(what + " alpha=-0.7 beta=1", ta, tb, c, T(-0.7), T(1), seed += 3);
      check_gemm<T>(what + " alpha=1.3 beta=-0.5", ta, tb, c, T(1.3), T(-0.5), seed += 3);
    }
}

NCP_TEST("gemm: float, every backend, trans combos and odd sizes vs naive") {
  const auto backends = float_backends();
  NCP_EXPECT(backends.size() >= 2, "only " << backends.size() << " float backends available");
  for (GemmBackend b : backends) {
    ForcedBackend forced(b);
    check_all_shapes<float>(backend_name(b));
  }
}

NCP_TEST("gemm: double, own kernels at each ISA, trans combos and odd sizes vs naive") {
  for (GemmBackend b : {GemmBackend::OwnAvx512, GemmBackend::OwnAvx2}) {
    ForcedBackend forced(b);
    if (forced.ok) check_all_shapes<double>(backend_name(b));
  }
}

// beta == 0 must overwrite C without reading it: NaN and Inf there may not leak into the result.
template <class T>
void check_beta_zero_ignores_c(const std::string& backend) {
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  for (const Case& c : {Case{1, 1, 1}, Case{15, 33, 17}, Case{300, 301, 302}, Case{7, 9, 0}})
    for (T alpha : {T(1), T(0)}) {
      std::vector<T> A(c.M * std::max<int64_t>(c.K, 1)), B(std::max<int64_t>(c.K, 1) * c.N), C(c.M * c.N, nan);
      fill_uniform(A, 5);
      fill_uniform(B, 6);
      for (size_t i = 0; i < C.size(); i += 7) C[i] = inf;
      ncp::cpu::gemm<T>(false, false, c.M, c.N, c.K, alpha, A.data(), std::max<int64_t>(c.K, 1), B.data(), c.N,
                        T(0), C.data(), c.N);
      int64_t nonfinite = 0;
      double worst = 0;
      for (int64_t i = 0; i < c.M; ++i)
        for (int64_t j = 0; j < c.N; ++j) {
          double ref = 0;
          for (int64_t p = 0; p < c.K; ++p) ref += double(A[i * c.K + p]) * double(B[p * c.N + j]);
          ref *= double(alpha);
          if (!std::isfinite(C[i * c.N + j])) ++nonfinite;
          worst = std::max(worst, std::fabs(double(C[i * c.N + j]) - ref) / (1 + std::fabs(ref)));
        }
      NCP_EXPECT(nonfinite == 0, backend << " M=" << c.M << " K=" << c.K << " alpha=" << alpha << ": "
                                         << nonfinite << " non-finite values leaked from C");
      NCP_EXPECT(worst < 1e3 * std::numeric_limits<T>::epsilon() * (c.K + 1),
                 backend << " M=" << c.M << " K=" << c.K << " alpha=" << alpha << ": error " << worst);
    }
}

NCP_TEST("gemm: beta 0 ignores NaN and Inf in C; K == 0 and alpha == 0 scale C by beta") {
  for (GemmBackend b : float_backends()) {
    ForcedBackend forced(b);
    check_beta_zero_ignores_c<float>(backend_name(b));
    check_beta_zero_ignores_c<double>(backend_name(b));
    // K == 0 leaves beta C; A and B are never touched.
    std::vector<float> C = {1, -2, 3, 4, 5, -6};
    ncp::cpu::gemm<float>(false, true, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 1, 2.0f, C.data(), 3);
    const std::vector<float> want = {2, -4, 6, 8, 10, -12};
    NCP_EXPECT(C == want, backend_name(b) << ": K == 0 with beta 2");
    // M == 0 or N == 0: nothing happens.
    ncp::cpu::gemm<float>(false, false, 0, 3, 4, 1.0f, nullptr, 4, nullptr, 3, 0.0f, nullptr, 3);
    ncp::cpu::gemm<float>(false, false, 2, 0, 4, 1.0f, nullptr, 4, nullptr, 1, 0.0f, C.data(), 1);
    NCP_EXPECT(C == want, backend_name(b) << ": N == 0 changed C");
  }
}

NCP_TEST("gemm: invalid sizes and leading dimensions throw") {
  std::vector<float> A(16), B(16), C(16);
  bool threw = false;
  try {
    ncp::cpu::gemm<float>(false, false, 4, 4, 4, 1.0f, A.data(), 3, B.data(), 4, 0.0f, C.data(), 4);
  } catch (const ncp::Error& e) {
    threw = e.code() == "NCP_EINVAL" && std::string(e.what()).find("lda=3") != std::string::npos;
  }
  NCP_EXPECT(threw, "lda < K was accepted");
  threw = false;
  try {
    ncp::cpu::gemm<float>(false, false, -1, 4, 4, 1.0f, A.data(), 4, B.data(), 4, 0.0f, C.data(), 4);
  } catch (const ncp::Error& e) {
    threw = e.code() == "NCP_EINVAL";
  }
  NCP_EXPECT(threw, "negative M was accepted");
}

NCP_TEST("gemm: provider names the backend; NCP_GEMM-style forcing works") {
  {
    ForcedBackend forced(GemmBackend::OwnAvx2);
    NCP_EXPECT(std::string(ncp::cpu::gemm_provider()).find("ncp avx2") == 0, ncp::cpu::gemm_provider());
    NCP_EXPECT(ncp::cpu::gemm_backend() == GemmBackend::OwnAvx2);
  }
  {
    ForcedBackend forced(GemmBackend::OpenBLAS);
    if (forced.ok)
      NCP_EXPECT(std::string(ncp::cpu::gemm_provider()).find("openblas 0.") == 0, ncp::cpu::gemm_provider());
  }
  {
    ForcedBackend forced(GemmBackend::OwnAvx512);
    if (forced.ok)
      NCP_EXPECT(std::string(ncp::cpu::gemm_provider()).find("ncp avx512") == 0, ncp::cpu::gemm_provider());
  }
  NCP_EXPECT(ncp::cpu::gemm_backend() != GemmBackend::Auto);
}

// Ops may call gemm from inside parallel_for: the nested call runs serially and uses per-thread scratch.
NCP_TEST("gemm: nested inside parallel_for, own kernels") {
  const int64_t M = 150, N = 170, K = 190, jobs = 4;
  std::vector<float> A(M * K), B(K * N), C(jobs * M * N), want(M * N);
  fill_uniform(A, 11);
  fill_uniform(B, 12);
  ForcedBackend forced(GemmBackend::OwnAvx2);
  ncp::cpu::gemm<float>(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, want.data(), N);
  for (GemmBackend b : {GemmBackend::OwnAvx512, GemmBackend::OwnAvx2}) {
    if (!ncp::cpu::set_gemm_backend(b)) continue;
    ncp::parallel_for(jobs, 1, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j)
        ncp::cpu::gemm<float>(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data() + j * M * N, N);
    });
    for (int64_t j = 0; j < jobs; ++j) {
      const double e = rel_error(C.data() + j * M * N, want.data(), M * N);
      NCP_EXPECT(e < 1e-5, backend_name(b) << " job " << j << " rel error " << e);
    }
  }
}

}  // namespace
