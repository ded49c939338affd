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
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "cuda_emu/async_copies.h"
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
  explicit Block(int threads) : all(threads), slots(size_t(threads)), deposits(size_t(threads)) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Barrier>(32));
  }
  Barrier all;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<float> slots;  // one per thread, for shuffles
  std::vector<std::array<unsigned char, 32>> deposits;  // one per thread, for warp gathers
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
// What mma.sync and ldmatrix need of the other lanes (flash_mma_kernels.cuh): every lane's deposit.
namespace ncp_emu {
inline void warp_gather(const void* in, void* all, size_t bytes) {
  emu::Block& b = *emu::g_block;
  const int t = int(threadIdx.x), warp = t >> 5;
  std::memcpy(b.deposits[size_t(t)].data(), in, bytes);
  b.warps[size_t(warp)]->wait();
  for (int lane = 0; lane < 32; ++lane)
    std::memcpy(static_cast<unsigned char*>(all) + size_t(lane) * bytes, b.deposits[size_t((warp << 5) | lane)].data(),
                bytes);
  b.warps[size_t(warp)]->wait();  // nobody overwrites a deposit before every lane has read
}
[[noreturn]] inline void fatal(const char* what) {
  std::fprintf(stderr, "flash emulation: %s\n", what);
  std::abort();
}
// cp.async, which the double-buffered kernels use (those are checked on the SIMT emulator, test_cuda.cpp's
// "double-buffered attention modes" case; the plain kernels here only need these to compile). Each emulated thread
// is a host thread here, so its queue is thread_local.
inline thread_local AsyncCopies t_async_copies;
inline void cp_async(void* dst, const void* src, int src_bytes, int bytes) {
  t_async_copies.add(dst, src, src_bytes, bytes);
}
inline void cp_async_commit() { t_async_copies.commit(); }
inline void cp_async_wait(int pending) { t_async_copies.wait(pending); }
}  // namespace ncp_emu
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
#include "cuda/flash_mma_kernels.cuh"

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

namespace {

// bf16 bit patterns of float values, as cuda/flash_attention.cu's one conversion per op writes them.
std::vector<uint16_t> bf16_bits(const Vec& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = ncp::f32_to_bf16(v[i]);
  return b;
}

// The register-level forward (cuda/flash_mma_kernels.cuh) as cuda/flash_attention.cu launches it for head dim DP.
template <int DP>
void run_mma_forward(const ncp::cpu::AttentionShape& s, const Vec& q, const Vec& k, const Vec& v, Vec& out,
                     Vec& lse) {
  using namespace ncp::cuda::flash;
  const std::vector<uint16_t> q16 = bf16_bits(q), k16 = bf16_bits(k), v16 = bf16_bits(v);
  MmaForwardArgs a{};
  a.q = q16.data(), a.k = k16.data(), a.v = v16.data(), a.out = out.data(), a.lse = lse.data();
  a.Lq = int(s.Lq), a.Lk = int(s.Lk), a.H = int(s.H), a.Dh = int(s.Dh);
  a.scale = float(1.0 / std::sqrt(double(s.Dh)));
  a.causal = s.causal;
  NCP_EXPECT(MmaSmem(DP).total <= sizeof smem, "mma forward tiles overflow the emulation");
  emu::launch({unsigned((s.Lq + kMmaBlockRows - 1) / kMmaBlockRows), unsigned(s.B * s.H), 1}, kMmaThreads,
              [&] { flash_mma_forward_kernel<DP>(a); });
}

// The register-level backward as cuda/flash_attention.cu runs it after the forward: delta, then the key-tile kernel.
template <int DP>
void run_mma_backward(const ncp::cpu::AttentionShape& s, const Vec& q, const Vec& k, const Vec& v, const Vec& out,
                      const Vec& lse, const Vec& dout, Vec& dq, Vec& dk, Vec& dv) {
  using namespace ncp::cuda::flash;
  const int64_t rows = s.B * s.H * s.Lq;
  Vec delta(static_cast<size_t>(rows));
  emu::launch({unsigned((rows * 32 + kMmaThreads - 1) / kMmaThreads), 1, 1}, kMmaThreads, [&] {
    flash_delta_kernel(delta.data(), dout.data(), out.data(), rows, int(s.Lq), int(s.H), int(s.Dh));
  });
  const std::vector<uint16_t> q16 = bf16_bits(q), k16 = bf16_bits(k), v16 = bf16_bits(v), dout16 = bf16_bits(dout);
  MmaBackwardArgs a{};
  a.q = q16.data(), a.k = k16.data(), a.v = v16.data(), a.dout = dout16.data(), a.lse = lse.data();
  a.delta = delta.data();
  a.dq = dq.data(), a.dk = dk.data(), a.dv = dv.data();
  a.Lq = int(s.Lq), a.Lk = int(s.Lk), a.H = int(s.H), a.Dh = int(s.Dh);
  a.scale = float(1.0 / std::sqrt(double(s.Dh)));
  a.causal = s.causal;
  NCP_EXPECT(MmaBackwardSmem(DP).total <= sizeof smem, "mma backward tiles overflow the emulation");
  emu::launch({unsigned((s.Lk + kMmaBlockKeys - 1) / kMmaBlockKeys), unsigned(s.B * s.H), 1}, kMmaThreads,
              [&] { flash_mma_backward_kernel<DP>(a); });
}

// Each row's log-sum-exp of the scaled scores, in double, [B, H, Lq].
Vec reference_lse(const ncp::cpu::AttentionShape& s, const Vec& q, const Vec& k) {
  Vec lse(static_cast<size_t>(s.B * s.H * s.Lq));
  const int64_t HD = s.H * s.Dh;
  const double scale = 1.0 / std::sqrt(double(s.Dh));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t i = 0; i < s.Lq; ++i) {
        const int64_t visible = s.causal ? std::min(i + 1, s.Lk) : s.Lk;
        std::vector<double> z(static_cast<size_t>(visible));
        double mx = -INFINITY;
        for (int64_t j = 0; j < visible; ++j) {
          double dot = 0;
          const size_t qi = size_t((b * s.Lq + i) * HD + h * s.Dh), kj = size_t((b * s.Lk + j) * HD + h * s.Dh);
          for (int64_t d = 0; d < s.Dh; ++d) dot += double(q[qi + size_t(d)]) * k[kj + size_t(d)];
          z[size_t(j)] = dot * scale, mx = std::max(mx, z[size_t(j)]);
        }
        double sum = 0;
        for (double x : z) sum += std::exp(x - mx);
        lse[size_t((b * s.H + h) * s.Lq + i)] = float(mx + std::log(sum));
      }
  return lse;
}

}  // namespace

// Against the CPU on the same bf16-rounded inputs. The output's error is the kernel's rounding of the probabilities
// to bf16 before P V (as in the WMMA kernels: bound 1e-2, the GPU parity case's); the log-sum-exp involves no
// rounding past float accumulation of exact bf16 products, so it is held to 1e-5. The backward (head dims up to
// 128) rounds P and dS to bf16 before its products: bound 1e-2 on each gradient's increment, as the WMMA
// kernels'. Mutations caught (forward): a wrong ldmatrix row or matrix index for q, k or v (1e-1 .. 1e0), the quad
// reductions dropped (lse off by up to ln 4), no rescale of o when the max grows, the causal mask or the key bound
// dropped. Backward: dS^T's ldmatrix matrices swapped, delta dropped, no barrier between dS^T's store and dQ's
// reads, dK's scale dropped, the causal mask dropped, dout's fragments not transposed (0.3 .. 70).
NCP_TEST("fused attention, register level (mma.sync forward and backward), emulated, matches the CPU") {
  struct Case {
    ncp::cpu::AttentionShape s;
    int dp;
  };
  const Case cases[] = {
      {{2, 37, 70, 2, 40, false}, 48},   // partial tiles; SD1.5's first head dim padded; two heads, two items
      {{1, 130, 200, 1, 64, false}, 64}, // SDXL's head dim; three query tiles, four key tiles, the last partial
      {{1, 70, 70, 1, 16, true}, 16},    // causal, square
      {{1, 50, 90, 1, 24, true}, 32},    // causal, more keys than queries
      {{1, 90, 50, 2, 18, true}, 32},    // causal, more queries than keys; head dim not a multiple of 4
      {{1, 65, 64, 1, 80, false}, 80},   // SD1.5's middle head dim; one row into a second query tile
      {{1, 21, 40, 1, 160, false}, 160}, // SD1.5's deepest
      {{1, 20, 33, 1, 256, true}, 256},  // the largest head dim
  };
  uint64_t seed = 140;
  for (const Case& c : cases) {
    const auto& s = c.s;
    const std::string tag = "B " + std::to_string(s.B) + " Lq " + std::to_string(s.Lq) + " Lk " +
                            std::to_string(s.Lk) + " H " + std::to_string(s.H) + " Dh " + std::to_string(s.Dh) +
                            " (DP " + std::to_string(c.dp) + ")" + (s.causal ? " causal" : "");
    const int64_t nq = s.B * s.Lq * s.H * s.Dh, nk = s.B * s.Lk * s.H * s.Dh;
    const Vec q = random_bf16_values(nq, ++seed, -2, 2), k = random_bf16_values(nk, ++seed, -2, 2),
              v = random_bf16_values(nk, ++seed, -1, 1), dout = random_bf16_values(nq, ++seed, -1, 1);
    Vec ref(static_cast<size_t>(nq));
    ncp::cpu::attention_forward<float>(ref.data(), nullptr, q.data(), k.data(), v.data(), s);
    const Vec ref_lse = reference_lse(s, q, k);
    Vec out(static_cast<size_t>(nq), NAN), lse(ref_lse.size(), NAN);
    switch (c.dp) {
      case 16: run_mma_forward<16>(s, q, k, v, out, lse); break;
      case 32: run_mma_forward<32>(s, q, k, v, out, lse); break;
      case 48: run_mma_forward<48>(s, q, k, v, out, lse); break;
      case 64: run_mma_forward<64>(s, q, k, v, out, lse); break;
      case 80: run_mma_forward<80>(s, q, k, v, out, lse); break;
      case 160: run_mma_forward<160>(s, q, k, v, out, lse); break;
      case 256: run_mma_forward<256>(s, q, k, v, out, lse); break;
      default: NCP_EXPECT(false, "no instantiation for DP " << c.dp);
    }
    const double e_out = ncp::test::rel_error(out.data(), ref.data(), nq);
    double e_lse = 0;
    for (size_t i = 0; i < lse.size(); ++i) {
      const double diff = std::fabs(double(lse[i]) - ref_lse[i]);
      e_lse = std::isnan(diff) ? INFINITY : std::max(e_lse, diff);
    }
    std::printf("    %-46s out %.2e lse %.2e\n", tag.c_str(), e_out, e_lse);
    NCP_EXPECT(e_out < 1e-2, tag << ": out rel error " << e_out);  // NaN fails too
    NCP_EXPECT(e_lse < 1e-5, tag << ": lse abs error " << e_lse);
    if (c.dp > ncp::cuda::flash::kMmaBackwardMaxHeadDim) continue;  // those keep the WMMA backward
    // The gradients start non-zero (backward adds to them); compared by their increments.
    Vec dq0(static_cast<size_t>(nq)), dk0(static_cast<size_t>(nk)), dv0(static_cast<size_t>(nk));
    ncp::test::fill_uniform(dq0, ++seed, -0.5, 0.5);
    ncp::test::fill_uniform(dk0, ++seed, -0.5, 0.5);
    ncp::test::fill_uniform(dv0, ++seed, -0.5, 0.5);
    Vec rq(dq0), rk(dk0), rv(dv0), gq(dq0), gk(dk0), gv(dv0);
    ncp::cpu::attention_backward_recompute<float>(rq.data(), rk.data(), rv.data(), nullptr, dout.data(), q.data(),
                                                  k.data(), v.data(), s);
    switch (c.dp) {
      case 16:  // no backward instantiation below 32: the launch code pads 16 to 32
      case 32: run_mma_backward<32>(s, q, k, v, out, lse, dout, gq, gk, gv); break;
      case 48: run_mma_backward<48>(s, q, k, v, out, lse, dout, gq, gk, gv); break;
      case 64: run_mma_backward<64>(s, q, k, v, out, lse, dout, gq, gk, gv); break;
      case 80: run_mma_backward<80>(s, q, k, v, out, lse, dout, gq, gk, gv); break;
      default: NCP_EXPECT(false, "no backward instantiation for DP " << c.dp);
    }
    const double e_dq = ncp::test::rel_error(increment(gq, dq0).data(), increment(rq, dq0).data(), nq),
                 e_dk = ncp::test::rel_error(increment(gk, dk0).data(), increment(rk, dk0).data(), nk),
                 e_dv = ncp::test::rel_error(increment(gv, dv0).data(), increment(rv, dv0).data(), nk);
    std::printf("    %-46s dq %.2e dk %.2e dv %.2e\n", "", e_dq, e_dk, e_dv);
    NCP_EXPECT(e_dq < 1e-2, tag << ": dq rel error " << e_dq);
    NCP_EXPECT(e_dk < 1e-2, tag << ": dk rel error " << e_dk);
    NCP_EXPECT(e_dv < 1e-2, tag << ": dv rel error " << e_dv);
  }
}
