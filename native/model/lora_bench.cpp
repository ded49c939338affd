#include "model/lora_bench.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/env_scope.h"
#include "core/error.h"
#include "cpu/bench.h"
#include "model/bench_buffer.h"
#include "model/dev_ops.h"

namespace ncp::model {

std::vector<LoraBenchResult> bench_lora(const LoraBenchOptions& o) {
  if (o.rows <= 0 || o.in <= 0 || o.out <= 0 || o.rank <= 0 || o.reps <= 0)
    throw Error("NCP_EINVAL", "lora bench: rows, in, out, rank and reps must be positive");
  const dev::DeviceScope scope(o.device);  // NCP_ENOCUDA / NCP_EINVAL when the device cannot run
  const cpu::LoraShape s{o.rows, o.in, o.out, o.rank};
  // Each timed repetition issues kCalls calls back to back and waits once, as a training step issues them (a wait
  // per call would add tens of microseconds of launch-to-completion latency to kernels of about as many). The calls
  // rotate over enough copies of the row operands (x, y, dy, dx) to span kColdBytes, past an H100/H200's 50 MB L2:
  // in a step those come from HBM, and timed warm in L2 the fused kernels had looked faster than in the step.
  constexpr int kCalls = 10;
  constexpr double kColdBytes = 256.0 * (1 << 20);
  const double set_bytes = 4.0 * double(s.rows) * double(2 * s.in + 2 * s.out);
  const int sets = int(std::clamp(std::ceil(kColdBytes / set_bytes), 1.0, double(kCalls)));
  struct Rows {
    BenchBuffer x, y, dy, dx;
    Rows(const cpu::LoraShape& s, uint32_t seed)
        : x(s.rows * s.in, seed),
          y(s.rows * s.out, seed + 1),
          dy(s.rows * s.out, seed + 2),
          dx(s.rows * s.in, seed + 3) {}
  };
  std::vector<std::unique_ptr<Rows>> rows;
  for (int k = 0; k < sets; ++k) rows.push_back(std::make_unique<Rows>(s, 12345u + 4u * uint32_t(k)));
  const BenchBuffer A(s.rank * s.in), B(s.out * s.rank), dA(s.rank * s.in), dB(s.out * s.rank);
  const float scale = 1.0f;
  std::vector<LoraBenchResult> results;
  const std::vector<const char*> paths = dev::on_cuda() ? std::vector<const char*>{"fused", "gemm"}
                                                        : std::vector<const char*>{"cpu"};
  for (const char* path : paths) {
    // Each side forced: cuda/lora.cu reads NCP_CUDA_LORA at each call.
    const EnvScope env("NCP_CUDA_LORA", dev::on_cuda() ? path : nullptr);
    LoraBenchResult r;
    r.path = path;
    r.forward_bytes = 4.0 * double(s.rows) * double(s.in + 2 * s.out);
    r.backward_bytes = 4.0 * double(s.rows) * double(3 * s.in + s.out);
    // The warm-up repetition sizes the scratch arena.
    r.forward_s = cpu::median_seconds(o.reps, [&] {
                    for (int i = 0; i < kCalls; ++i) {
                      const Rows& m = *rows[size_t(i % sets)];
                      dev::lora_forward(m.y.p, m.x.p, A.p, B.p, scale, s);
                    }
                    dev::synchronize();
                  }) / kCalls;
    r.backward_s = cpu::median_seconds(o.reps, [&] {
                     for (int i = 0; i < kCalls; ++i) {
                       const Rows& m = *rows[size_t(i % sets)];
                       dev::lora_backward(m.dx.p, dA.p, dB.p, m.dy.p, m.x.p, A.p, B.p, scale, s);
                     }
                     dev::synchronize();
                   }) / kCalls;
    results.push_back(r);
  }
  return results;
}

}  // namespace ncp::model
