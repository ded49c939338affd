// ncp::cpu::gemm: argument checks, the trivial cases, and dispatch to OpenBLAS or ncp's blocked kernels.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "core/threads.h"
#include "cpu/gemm_dispatch.h"
#include "cpu/gemm_own.h"
#include "cpu/half_load.h"
#include "cpu/ops.h"

#ifdef NCP_HAVE_OPENBLAS
#include <cblas.h>
#endif

namespace ncp::cpu {
namespace {

#ifdef NCP_HAVE_OPENBLAS
constexpr bool kHaveOpenBLAS = true;
#else
constexpr bool kHaveOpenBLAS = false;
#endif

bool available(GemmBackend b) {
  switch (b) {
    case GemmBackend::Auto: return true;
    case GemmBackend::OwnAvx512: return gemm_detail::cpu_has_avx512();
    case GemmBackend::OwnAvx2: return true;
    case GemmBackend::OpenBLAS: return kHaveOpenBLAS;
  }
  return false;
}

GemmBackend best_own() {
  return gemm_detail::cpu_has_avx512() ? GemmBackend::OwnAvx512 : GemmBackend::OwnAvx2;
}

GemmBackend rule() {
  const char* env = std::getenv("NCP_GEMM");
  if (env && std::strcmp(env, "own") == 0) return best_own();
  if (env && std::strcmp(env, "openblas") == 0 && kHaveOpenBLAS) return GemmBackend::OpenBLAS;
  if (gemm_detail::cpu_has_avx512()) return GemmBackend::OwnAvx512;
  return kHaveOpenBLAS ? GemmBackend::OpenBLAS : GemmBackend::OwnAvx2;
}

std::atomic<GemmBackend>& current() {
  static std::atomic<GemmBackend> backend{rule()};
  return backend;
}

// SA, SB: the stored types of A and B (T, or F16/BF16 widened by the packers for float).
template <class T, class SA, class SB>
void own_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const SA* A, int64_t lda, const SB* B,
              int64_t ldb, T beta, T* C, int64_t ldc) {
  using namespace gemm_detail;
  with_own_kernel<T>([&](auto mr, auto nr, MicroKernel<T> ukr, const Blocking& bk) {
    constexpr int MR = decltype(mr)::value, NR = decltype(nr)::value;
    // op(A)[i, p] = ta ? A[p * lda + i] : A[i * lda + p];  op(B)[p, j] = tb ? B[j * ldb + p] : B[p * ldb + j]
    auto pack_a = [&](T* dst, int64_t i0, int64_t rows, int64_t p0, int64_t kc) {
      if (ta)
        pack_panels<MR>(dst, MR * kc, A + p0 * lda + i0, 1, lda, rows, kc, alpha);
      else
        pack_panels<MR>(dst, MR * kc, A + i0 * lda + p0, lda, 1, rows, kc, alpha);
    };
    auto pack_b = [&](T* dst, int64_t j0, int64_t cols, int64_t p0, int64_t kc) {
      if (tb)
        pack_panels<NR>(dst, NR * kc, B + j0 * ldb + p0, ldb, 1, cols, kc, T(1));
      else
        pack_panels<NR>(dst, NR * kc, B + p0 * ldb + j0, 1, ldb, cols, kc, T(1));
    };
    blocked_gemm<T, MR, NR>(M, N, K, pack_a, pack_b, beta, C, ldc, ukr, bk, num_threads());
  });
}

#ifdef NCP_HAVE_OPENBLAS
void openblas_sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  // OpenBLAS keeps its own pool: size it like ours so the two never oversubscribe the cores.
  static std::atomic<int> openblas_threads{0};
  const int threads = num_threads();
  if (openblas_threads.exchange(threads) != threads) openblas_set_num_threads(threads);
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, blasint(M),
              blasint(N), blasint(K), alpha, A, blasint(lda), B, blasint(ldb), beta, C, blasint(ldc));
}
#endif

void check_args(bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  check(M >= 0 && N >= 0 && K >= 0, "NCP_EINVAL",
        "gemm: negative size M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
  const int64_t a_cols = ta ? M : K, b_cols = tb ? K : N;
  check(lda >= std::max<int64_t>(1, a_cols) && ldb >= std::max<int64_t>(1, b_cols) &&
            ldc >= std::max<int64_t>(1, N),
        "NCP_EINVAL",
        "gemm: leading dimension too small (lda=" + std::to_string(lda) + " ldb=" + std::to_string(ldb) +
            " ldc=" + std::to_string(ldc) + " for M=" + std::to_string(M) + " N=" + std::to_string(N) +
            " K=" + std::to_string(K) + ")");
}

}  // namespace

bool set_gemm_backend(GemmBackend b) {
  if (!available(b)) return false;
  current().store(b == GemmBackend::Auto ? rule() : b);
  return true;
}

GemmBackend gemm_backend() { return current().load(); }

namespace gemm_detail {
bool own_kernels_avx512() {
  const GemmBackend b = gemm_backend();
  return b == GemmBackend::OwnAvx512 || (b == GemmBackend::OpenBLAS && cpu_has_avx512());
}
}  // namespace gemm_detail

const char* gemm_provider() {
  thread_local std::string name;
  const GemmBackend b = gemm_backend();
#ifdef NCP_HAVE_OPENBLAS
  if (b == GemmBackend::OpenBLAS) {
    std::string version = OPENBLAS_VERSION;  // " OpenBLAS 0.3.21 "
    version = version.substr(version.find_first_not_of(' '));
    version = version.substr(0, version.find_last_not_of(' ') + 1);
    for (auto& ch : version) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    name = version + " " + openblas_get_corename();
    return name.c_str();
  }
#endif
  name = std::string("ncp ") + (b == GemmBackend::OwnAvx512 ? "avx512" : "avx2") + " (" +
         std::to_string(num_threads()) + " threads)";
  return name.c_str();
}

namespace {
// The cases with nothing to multiply; true when handled. C = beta C, where beta == 0 clears C without reading
// it (it may hold NaN).
template <class T>
bool trivial_gemm(int64_t M, int64_t N, int64_t K, T alpha, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return true;
  if (K != 0 && alpha != T(0)) return false;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
  return true;
}

}  // namespace

template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  check_args(ta, tb, M, N, K, lda, ldb, ldc);
  if (trivial_gemm(M, N, K, alpha, beta, C, ldc)) return;
#ifdef NCP_HAVE_OPENBLAS
  if constexpr (std::is_same_v<T, float>) {
    // Inside a parallel_for chunk OpenBLAS would start its own threads on cores ours already use: our kernel
    // runs inline there instead.
    if (gemm_backend() == GemmBackend::OpenBLAS && !in_parallel_region()) {
      openblas_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return;
    }
  }
#endif
  own_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_w(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, WeightRef A, int64_t lda,
            WeightRef B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (A.dtype == DType::F32 && B.dtype == DType::F32)
    return gemm<float>(ta, tb, M, N, K, alpha, static_cast<const float*>(A.data), lda,
                       static_cast<const float*>(B.data), ldb, beta, C, ldc);
  check_args(ta, tb, M, N, K, lda, ldb, ldc);
  with_stored_type(A, "gemm", [&](auto a) {
    with_stored_type(B, "gemm", [&](auto b) {
      if (!trivial_gemm(M, N, K, alpha, beta, C, ldc)) own_gemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc);
    });
  });
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace ncp::cpu
