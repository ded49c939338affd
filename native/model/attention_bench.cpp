#include "model/attention_bench.h"

#include <cstdint>
#include <vector>

#include "core/cuda_backend.h"
#include "core/error.h"
#include "cpu/bench.h"
#include "model/bench_buffer.h"
#include "model/dev_ops.h"

namespace ncp::model {
namespace {

int mode_code(const std::string& mode) {
  const int code = cuda::attention_mode_code(mode);
  if (code < 0)
    throw Error("NCP_EINVAL", "attention bench: unknown mode '" + mode + "' (" + cuda::kAttentionModeNames + ")");
  return code;
}

}  // namespace

std::vector<AttentionBenchResult> bench_attention(const AttentionBenchOptions& o) {
  if (o.batch <= 0 || o.queries <= 0 || o.keys <= 0 || o.heads <= 0 || o.head_dim <= 0 || o.reps <= 0)
    throw Error("NCP_EINVAL", "attention bench: batch, tokens, keys, heads, head dim and reps must be positive");
  if (o.modes.empty()) throw Error("NCP_EINVAL", "attention bench: no attention mode to run");
  for (const std::string& mode : o.modes) mode_code(mode);  // every name checked before any work
  if (o.device < 0)
    throw Error("NCP_EINVAL", "attention bench: runs on a CUDA device (--device cuda[:N]), not the CPU");
  const dev::DeviceScope scope(o.device);  // NCP_ENOCUDA / NCP_EINVAL when the device cannot run
  const ncp_cuda_api* t = cuda::api();
  const cpu::AttentionShape s{o.batch, o.queries, o.keys, o.heads, o.head_dim, false};
  const int64_t nq = s.B * s.Lq * s.H * s.Dh, nk = s.B * s.Lk * s.H * s.Dh;
  const BenchBuffer q(nq), k(nk), v(nk), dout(nq), out(nq), dq(nq), dk(nk), dv(nk);
  std::vector<AttentionBenchResult> results;
  for (const std::string& mode : o.modes) {
    if (t->set_fused_attention(mode_code(mode)) != NCP_CUDA_OK)
      throw Error("NCP_ECUDA", std::string("attention bench: set_fused_attention: ") + t->last_error());
    AttentionBenchResult r;
    r.mode = mode;
    r.forward_gflop = 4.0 * double(s.B * s.H) * double(s.Lq) * double(s.Lk) * double(s.Dh) / 1e9;
    r.backward_gflop = 2.5 * r.forward_gflop;
    // Each timed call waits for the device; the warm-up call sizes the scratch arenas and the kernels' limits.
    r.forward_s = cpu::median_seconds(o.reps, [&] {
      dev::attention_forward(out.p, nullptr, q.p, k.p, v.p, s);
      dev::synchronize();
    });
    r.backward_s = cpu::median_seconds(o.reps, [&] {
      dev::attention_backward_recompute(dq.p, dk.p, dv.p, nullptr, dout.p, q.p, k.p, v.p, s);
      dev::synchronize();
    });
    results.push_back(r);
  }
  t->set_fused_attention(cuda::status().attention_mode);  // back to what NCP_CUDA_ATTENTION chose
  return results;
}

}  // namespace ncp::model
