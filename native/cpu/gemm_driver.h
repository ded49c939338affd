// The cache-blocked GEMM driver (GotoBLAS/BLIS loop nest) shared by gemm.cpp and conv2d.cpp:
//
//   for jc in N step nc:                 B block (kc x nc) packed once, shared by the team, lives in L3
//     for pc in K step kc:
//       for ic in M step mc:             A block (mc x kc) packed per thread, lives in L2
//         for jr, ir:                    one kc x NR micro-panel of B stays in L1/L2 while A panels stream
//           micro-kernel (MR x NR tile of C)
//
// Operands arrive through packing callbacks, so a caller can pack straight from its own layout (conv2d packs
// B from the image: an implicit im2col that never materialises the column matrix):
//   pack_a(dst, i0, rows, p0, kc): op(A)[i0 : i0+rows, p0 : p0+kc] -> ceil(rows/MR) panels of kc x MR,
//                                  dst[panel][p][i], rows past the edge zero-filled (alpha is folded in here);
//   pack_b(dst, j0, cols, p0, kc): op(B)[p0 : p0+kc, j0 : j0+cols] -> ceil(cols/NR) panels of kc x NR.
// The team splits each packed B block, then either M (private A blocks) or N (B panels) for the multiply.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <thread>

#include "core/threads.h"
#include "cpu/gemm_kernels.h"
#include "cpu/gemm_pack.h"

namespace ncp::cpu::gemm_detail {

struct Blocking {
  int64_t mc, kc, nc;
};

// Below this many multiply-adds waking the pool costs more than the second core gains.
constexpr int64_t kParallelMacs = int64_t(1) << 20;

// Grow-only 64-byte aligned scratch, one per thread and role, kept for the thread's life: fresh large
// allocations would pay their page faults on every call.
template <class T>
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(data_); }
  T* get(int64_t n) {
    if (n > capacity_) {
      std::free(data_);
      data_ = nullptr;
      const size_t bytes = (size_t(n) * sizeof(T) + 63) / 64 * 64;
      data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (!data_) throw std::bad_alloc();
      capacity_ = n;
    }
    return data_;
  }

 private:
  T* data_ = nullptr;
  int64_t capacity_ = 0;
};

// Barrier for the team inside one parallel_for region. The waits are short (one packing step or the tail of
// a block), so it spins, and yields once a wait gets long (a teammate descheduled on a busy machine).
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void wait() {
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == gen; ++spins)
      if (spins > 4096) std::this_thread::yield();
  }

 private:
  const int n_;
  std::atomic<int> arrived_{0}, generation_{0};
};

// C[M, N] = op(A) op(B) + beta C with op(A), op(B) (and alpha) supplied by the packers. threads: the team
// size wanted (1 = serial); a nested call (already inside parallel_for) runs serially on its caller.
template <class T, int MR, int NR, class PackA, class PackB>
void blocked_gemm(int64_t M, int64_t N, int64_t K, const PackA& pack_a, const PackB& pack_b, T beta, T* C,
                  int64_t ldc, MicroKernel<T> ukr, const Blocking& bk, int threads) {
  static_assert(MR > 0 && NR > 0, "tile");
  // Equal k blocks (1024 = 6 x 171, not 5 x 192 + 64): a short last block would pay the C tile traffic of
  // a full one for a fraction of the work. The same goes for each thread's m blocks below.
  const int64_t k_blocks = (K + bk.kc - 1) / bk.kc, kc_max = (K + k_blocks - 1) / k_blocks;
  const int64_t nc_max = std::min((bk.nc + NR - 1) / NR * NR, (N + NR - 1) / NR * NR);
  const int64_t mc_max = bk.mc / MR * MR;
  static thread_local Scratch<T> b_scratch;
  T* bbuf = b_scratch.get(kc_max * nc_max);

  const int64_t m_panels = (M + MR - 1) / MR;
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, num_threads())));
  if (M * N * K < kParallelMacs) threads = 1;
  SpinBarrier barrier(threads);

  auto run = [&](int tid, int team) {
    static thread_local Scratch<T> a_scratch;
    T* abuf = a_scratch.get(mc_max * kc_max);
    alignas(64) T edge[MR * NR];
    for (int64_t jc = 0; jc < N; jc += nc_max) {
      const int64_t nc = std::min(nc_max, N - jc);
      const int64_t n_panels = (nc + NR - 1) / NR;
      // Split M when every thread gets a few A panels of its own; otherwise share A and split the B panels.
      const bool split_m = m_panels >= 4 * team || m_panels >= n_panels;
      const int64_t i_begin = split_m ? m_panels * tid / team * MR : 0;
      const int64_t i_end = split_m ? std::min(M, m_panels * (tid + 1) / team * MR) : M;
      const int64_t jp_begin = split_m ? 0 : n_panels * tid / team;
      const int64_t jp_end = split_m ? n_panels : n_panels * (tid + 1) / team;
      const int64_t m_blocks = std::max<int64_t>(1, (i_end - i_begin + mc_max - 1) / mc_max);
      const int64_t mc_step = ((i_end - i_begin + m_blocks - 1) / m_blocks + MR - 1) / MR * MR;
      for (int64_t pc = 0; pc < K; pc += kc_max) {
        const int64_t kc = std::min(kc_max, K - pc);
        const int64_t pb0 = n_panels * tid / team, pb1 = n_panels * (tid + 1) / team;
        if (pb1 > pb0) pack_b(bbuf + pb0 * NR * kc, jc + pb0 * NR, std::min(nc, pb1 * NR) - pb0 * NR, pc, kc);
        if (team > 1) barrier.wait();
        const T beta_now = pc == 0 ? beta : T(1);
        for (int64_t ic = i_begin; ic < i_end; ic += mc_step) {
          const int64_t mc = std::min(mc_step, i_end - ic);
          pack_a(abuf, ic, mc, pc, kc);
          for (int64_t jp = jp_begin; jp < jp_end; ++jp) {
            const T* bp = bbuf + jp * NR * kc;
            const int64_t j = jc + jp * NR, nn = std::min<int64_t>(NR, N - j);
            for (int64_t i = 0; i < mc; i += MR) {
              const T* ap = abuf + i * kc;
              T* c = C + (ic + i) * ldc + j;
              const int64_t mm = std::min<int64_t>(MR, mc - i);
              // C tiles live in L3 or memory: fetch the next one while this one multiplies.
              for (int64_t r = MR; r < std::min<int64_t>(2 * MR, mc - i); ++r) {
                __builtin_prefetch(c + r * ldc, 1, 3);
                __builtin_prefetch(c + r * ldc + nn - 1, 1, 3);
              }
              if (mm == MR && nn == NR) {
                ukr(kc, ap, bp, c, ldc, beta_now);
                continue;
              }
              ukr(kc, ap, bp, edge, NR, T(0));
              for (int64_t r = 0; r < mm; ++r)
                for (int64_t s = 0; s < nn; ++s)
                  c[r * ldc + s] = beta_now == T(0) ? edge[r * NR + s] : edge[r * NR + s] + beta_now * c[r * ldc + s];
            }
          }
        }
        // The next step repacks the shared B block: everyone must be done reading it.
        if (team > 1 && !(jc + nc >= N && pc + kc >= K)) barrier.wait();
      }
    }
  };

  if (threads == 1) {
    run(0, 1);
    return;
  }
  // One index per thread; when parallel_for runs inline (nested call) the whole range arrives at once.
  parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
    if (t1 - t0 == threads)
      run(0, 1);
    else
      run(int(t0), threads);
  });
}

}  // namespace ncp::cpu::gemm_detail
