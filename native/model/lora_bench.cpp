#include "model/lora_bench.h"

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/bench.h"
#include "model/bench_buffer.h"
#include "model/dev_ops.h"

namespace ncp::model {
namespace {

// Sets NCP_CUDA_LORA (which cuda/lora.cu reads at each call) for the scope, and puts back what was there.
class LoraPathScope {
 public:
  explicit LoraPathScope(const char* value) {
    if (const char* old = std::getenv("NCP_CUDA_LORA")) old_ = old;
    if (value)
      setenv("NCP_CUDA_LORA", value, 1);
    else
      unsetenv("NCP_CUDA_LORA");
  }
  ~LoraPathScope() {
    if (old_)
      setenv("NCP_CUDA_LORA", old_->c_str(), 1);
    else
      unsetenv("NCP_CUDA_LORA");
  }
  LoraPathScope(const LoraPathScope&) = delete;
  LoraPathScope& operator=(const LoraPathScope&) = delete;

 private:
  std::optional<std::string> old_;
};

}  // namespace

std::vector<LoraBenchResult> bench_lora(const LoraBenchOptions& o) {
  if (o.rows <= 0 || o.in <= 0 || o.out <= 0 || o.rank <= 0 || o.reps <= 0)
    throw Error("NCP_EINVAL", "lora bench: rows, in, out, rank and reps must be positive");
  const dev::DeviceScope scope(o.device);  // NCP_ENOCUDA / NCP_EINVAL when the device cannot run
  const cpu::LoraShape s{o.rows, o.in, o.out, o.rank};
  const BenchBuffer x(s.rows * s.in), y(s.rows * s.out), dy(s.rows * s.out), dx(s.rows * s.in), A(s.rank * s.in),
      B(s.out * s.rank), dA(s.rank * s.in), dB(s.out * s.rank);
  const float scale = 1.0f;
  std::vector<LoraBenchResult> results;
  const std::vector<const char*> paths = dev::on_cuda() ? std::vector<const char*>{"fused", "gemm"}
                                                        : std::vector<const char*>{"cpu"};
  for (const char* path : paths) {
    const LoraPathScope env(std::string(path) == "gemm" ? "gemm" : nullptr);
    LoraBenchResult r;
    r.path = path;
    r.forward_bytes = 4.0 * double(s.rows) * double(s.in + 2 * s.out);
    r.backward_bytes = 4.0 * double(s.rows) * double(3 * s.in + s.out);
    // Each timed call waits for the device; the warm-up call sizes the scratch arena.
    r.forward_s = cpu::median_seconds(o.reps, [&] {
      dev::lora_forward(y.p, x.p, A.p, B.p, scale, s);
      dev::synchronize();
    });
    r.backward_s = cpu::median_seconds(o.reps, [&] {
      dev::lora_backward(dx.p, dA.p, dB.p, dy.p, x.p, A.p, B.p, scale, s);
      dev::synchronize();
    });
    results.push_back(r);
  }
  return results;
}

}  // namespace ncp::model
