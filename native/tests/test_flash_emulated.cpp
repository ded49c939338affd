// The fused attention kernels (cuda/flash_attention_kernels.cuh) compiled as C++ and run on a small SIMT
// emulation, against the CPU reference ops. No GPU is needed: this checks the kernels' own logic (tile walks,
// padding and masks, the online softmax, the backward's products and its dq atomics, every __syncthreads that
// separates a writer from a reader of shared memory) in every build. What it cannot check is the hardware: the
// real WMMA fragments, timing-dependent races, shared-memory limits; test_cuda's parity case does that on a GPU.
//
// The emulation: each thread of a block is an OS thread; __syncthreads is a barrier over the block, a warp
// shuffle a barrier over the warp's 32 threads; a WMMA fragment holds its whole 16x16 tile and lane 0 of the warp
// does the fragment's work (the other lanes' fragments are never read: all data leave through store_matrix_sync).
// The WMMA calls also check the pointer alignment (32 bytes) and leading dimensions the hardware requires.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "cpu/ops.h"
#include "tests/harness.h"

// ---- the emulated CUDA surface the kernels use ----
struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
thread_local EmuDim3 threadIdx;
EmuDim3 blockIdx, blockDim;

namespace emu {

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const uint64_t generation = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0, ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, arrived_ = 0;
  uint64_t generation_ = 0;
};

struct Block {
  explicit Block(int threads) : all(threads), slots(size_t(threads)) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Barrier>(32));
  }
  Barrier all;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<float> slots;  // one per thread, for shuffles
};
Block* g_block = nullptr;
std::mutex g_atomic;
std::atomic<int> g_violations{0};  // WMMA alignment / leading-dimension requirements broken

// Runs kernel() for every block of grid, `threads` threads each; blocks run one after another.
template <class F>
void launch(EmuDim3 grid, int threads, F kernel) {
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      blockIdx = {bx, by, 0};
      blockDim = {unsigned(threads), 1, 1};
      Block block(threads);
      g_block = &block;
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([t, &kernel] {
          threadIdx = {unsigned(t), 0, 0};
          kernel();
        });
      for (auto& th : pool) th.join();
      g_block = nullptr;
    }
}

}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __shared__
#define __align__(n)
#define __launch_bounds__(n)
#define __restrict__

inline void __syncthreads() { emu::g_block->all.wait(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::Block& b = *emu::g_block;
  const int t = int(threadIdx.x), warp = t >> 5, lane = t & 31;
  b.slots[size_t(t)] = v;
  b.warps[size_t(warp)]->wait();
  const float other = b.slots[size_t((warp << 5) | (lane ^ lane_mask))];
  b.warps[size_t(warp)]->wait();  // nobody overwrites a slot before every lane has read
  return other;
}
inline float __expf(float x) { return std::exp(x); }
inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> lock(emu::g_atomic);
  const float old = *p;
  *p = old + v;
  return old;
}
struct alignas(16) float4 {
  float x, y, z, w;
};
using std::min;
#include "cuda_emu/half_emu.h"
#include "cuda_emu/wmma_emu.h"
void ncp_emu_wmma_violation() { ++emu::g_violations; }

// The kernels' dynamic shared memory: one block runs at a time.
namespace ncp::cuda::flash {
alignas(128) unsigned char smem[256 * 1024];
}

#include "cuda/flash_attention_kernels.cuh"

namespace {

using ncp::cuda::flash::BackwardSmem;
using ncp::cuda::flash::FlashArgs;
using ncp::cuda::flash::ForwardSmem;
using ncp::cuda::flash::Tile;
using Vec = std::vector<float>;

Vec random_bf16_values(int64_t n, uint64_t seed, double lo, double hi) {
  Vec v(static_cast<size_t>(n));
  ncp::test::fill_uniform(v, seed, lo, hi);
  for (float& x : v) x = ncp::bf16_to_f32(ncp::f32_to_bf16(x));  // the kernels read bf16: compare on equal inputs
  return v;
}

// The launch sequence of cuda/flash_attention.cu (forward with the log-sum-exp, delta, backward), with the
// given tiles and threads per block.
struct Emulated {
  Vec out, dq, dk, dv;
};
Emulated run_emulated(const ncp::cpu::AttentionShape& s, const Vec& q, const Vec& k, const Vec& v, const Vec& dout,
                      const Vec& dq0, const Vec& dk0, const Vec& dv0, Tile fwd_tile, Tile bwd_tile, int threads) {
  Emulated r{Vec(q.size()), dq0, dk0, dv0};
  const int64_t rows = s.B * s.H * s.Lq;
  Vec lse(static_cast<size_t>(rows)), delta(static_cast<size_t>(rows));
  FlashArgs a{};
  a.Lq = int(s.Lq), a.Lk = int(s.Lk), a.H = int(s.H), a.Dh = int(s.Dh);
  a.scale = float(1.0 / std::sqrt(double(s.Dh)));
  a.causal = s.causal;
  a.q = q.data(), a.k = k.data(), a.v = v.data(), a.dout = dout.data();
  a.out = r.out.data(), a.lse = lse.data();
  a.tile = fwd_tile;
  NCP_EXPECT(ForwardSmem(fwd_tile).total <= sizeof ncp::cuda::flash::smem, "forward tiles overflow the emulation");
  emu::launch({unsigned((s.Lq + fwd_tile.bm - 1) / fwd_tile.bm), unsigned(s.B * s.H), 1}, threads,
              [&] { ncp::cuda::flash::flash_forward_kernel(a); });
  emu::launch({unsigned((rows * 32 + threads - 1) / threads), 1, 1}, threads, [&] {
    ncp::cuda::flash::flash_delta_kernel(delta.data(), dout.data(), r.out.data(), rows, a.Lq, a.H, a.Dh);
  });
  a.lse_in = lse.data(), a.delta = delta.data();
  a.dq = r.dq.data(), a.dk = r.dk.data(), a.dv = r.dv.data();
  a.tile = bwd_tile;
  NCP_EXPECT(BackwardSmem(bwd_tile).total <= sizeof ncp::cuda::flash::smem, "backward tiles overflow the emulation");
  emu::launch({unsigned((s.Lk + bwd_tile.bn - 1) / bwd_tile.bn), unsigned(s.B * s.H), 1}, threads,
              [&] { ncp::cuda::flash::flash_backward_kernel(a); });
  return r;
}

Vec increment(const Vec& after, const Vec& before) {
  Vec d(after.size());
  for (size_t i = 0; i < d.size(); ++i) d[i] = after[i] - before[i];
  return d;
}

}  // namespace

// Against the CPU on the same bf16-rounded inputs. What remains is the kernels' rounding of the probability and
// dS tiles to bf16 before their products (unit roundoff 2^-8, about 4e-3, per term; over the sums it comes to
// 1-2e-3 here): bound 1e-2 relative, the bound of test_cuda's parity case. A dropped or doubled tile, a missed
// rescale or mask, a missing barrier or a lost gradient term costs 1e-2 to 1e1 (mutations tried: no rescale,
// no causal mask in backward, delta zero, last key tile dropped, no barrier before the dq atomics).
NCP_TEST("fused attention kernels, emulated, match the CPU") {
  struct Case {
    ncp::cpu::AttentionShape s;
    Tile fwd, bwd;
    int threads;
  };
  const Case cases[] = {
      // partial query and key tiles, head dim 40 padded to 48, two heads over two batch items
      {{2, 37, 70, 2, 40, false}, {32, 32, 48}, {32, 32, 48}, 64},
      // causal, square, several tiles on both sides; the kernels' own tile shape and 8 warps
      {{1, 70, 70, 1, 16, true}, {64, 64, 16}, {64, 64, 16}, 256},
      // causal with more keys than queries and fewer: tiles of unequal height
      {{1, 50, 90, 1, 24, true}, {64, 32, 32}, {32, 64, 32}, 64},
      // SD1.5's deepest head dim (160), small tiles
      {{1, 21, 40, 1, 160, false}, {32, 32, 160}, {32, 32, 160}, 64},
      // causal with more queries than keys; a head dim that is not a multiple of 4 (the scalar loads)
      {{1, 90, 50, 2, 18, true}, {32, 64, 32}, {64, 32, 32}, 64},
      // the largest head dim the kernels take (256)
      {{1, 20, 33, 1, 256, true}, {32, 32, 256}, {32, 32, 256}, 64},
  };
  uint64_t seed = 40;
  for (const Case& c : cases) {
    const auto& s = c.s;
    const std::string tag = "B " + std::to_string(s.B) + " Lq " + std::to_string(s.Lq) + " Lk " +
                            std::to_string(s.Lk) + " H " + std::to_string(s.H) + " Dh " + std::to_string(s.Dh) +
                            (s.causal ? " causal" : "");
    const int64_t nq = s.B * s.Lq * s.H * s.Dh, nk = s.B * s.Lk * s.H * s.Dh;
    const Vec q = random_bf16_values(nq, ++seed, -2, 2), k = random_bf16_values(nk, ++seed, -2, 2),
              v = random_bf16_values(nk, ++seed, -1, 1), dout = random_bf16_values(nq, ++seed, -1, 1);
    Vec dq0(static_cast<size_t>(nq)), dk0(static_cast<size_t>(nk)), dv0(static_cast<size_t>(nk));  // the gradients start non-zero: backward adds
    ncp::test::fill_uniform(dq0, ++seed, -0.5, 0.5);
    ncp::test::fill_uniform(dk0, ++seed, -0.5, 0.5);
    ncp::test::fill_uniform(dv0, ++seed, -0.5, 0.5);
    Vec out(static_cast<size_t>(nq)), dq(dq0), dk(dk0), dv(dv0);
    ncp::cpu::attention_backward_recompute<float>(dq.data(), dk.data(), dv.data(), out.data(), dout.data(), q.data(),
                                                  k.data(), v.data(), s);
    emu::g_violations = 0;
    const Emulated e = run_emulated(s, q, k, v, dout, dq0, dk0, dv0, c.fwd, c.bwd, c.threads);
    NCP_EXPECT(emu::g_violations == 0, tag << ": " << emu::g_violations << " WMMA alignment violations");
    const double e_out = ncp::test::rel_error(e.out.data(), out.data(), nq);
    const Vec gq = increment(e.dq, dq0), gk = increment(e.dk, dk0), gv = increment(e.dv, dv0);
    const Vec rq = increment(dq, dq0), rk = increment(dk, dk0), rv = increment(dv, dv0);
    const double e_dq = ncp::test::rel_error(gq.data(), rq.data(), nq),
                 e_dk = ncp::test::rel_error(gk.data(), rk.data(), nk),
                 e_dv = ncp::test::rel_error(gv.data(), rv.data(), nk);
    std::printf("    %-36s out %.2e dq %.2e dk %.2e dv %.2e\n", tag.c_str(), e_out, e_dq, e_dk, e_dv);
    NCP_EXPECT(e_out < 1e-2, tag << ": out rel error " << e_out);
    NCP_EXPECT(e_dq < 1e-2, tag << ": dq rel error " << e_dq);
    NCP_EXPECT(e_dk < 1e-2, tag << ": dk rel error " << e_dk);
    NCP_EXPECT(e_dv < 1e-2, tag << ": dv rel error " << e_dv);
  }
}
