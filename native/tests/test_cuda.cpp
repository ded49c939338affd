// The CUDA backend against the CPU reference ops. Without a usable backend (no GPU, no driver, CPU-only build)
// the parity case prints one "skip:" line with the reason and passes.
#include <cstdio>
#include <cstring>

#include "core/cuda_backend.h"
#include "tests/harness.h"

namespace {
// One line naming the device, GEMM provider and attention mode a run used (the test scripts check it).
void print_device(const ncp::cuda::Status& s) {
  std::printf("    %s (sm_%d%d, %d SMs, driver %d, runtime %d), gemm: %s, attention: %s, library %s\n",
              s.device.c_str(), s.cc_major, s.cc_minor, s.multiprocessors, s.driver_version, s.runtime_version,
              s.gemm_provider.c_str(), s.attention.c_str(), s.library.c_str());
}
}  // namespace

NCP_TEST("cuda status is consistent") {
  const auto& s = ncp::cuda::status();
  if (s.usable) print_device(s);
  NCP_EXPECT(!s.usable || s.loadable, "usable without a loaded library");
  NCP_EXPECT(s.usable == (ncp::cuda::api() != nullptr), "api() must be set exactly when usable");
  NCP_EXPECT(s.usable || !s.reason.empty(), "an unusable backend must say why");
  NCP_EXPECT(!s.loadable || !s.library.empty(), "a loaded library must have a path");
}

NCP_TEST("cuda parity with the CPU ops") {
  const auto& s = ncp::cuda::status();
  if (!s.usable) {
    std::printf("skip: CUDA backend not usable: %s\n", s.reason.c_str());
    return;
  }
  print_device(s);
  const auto results = ncp::cuda::parity_check();
  NCP_EXPECT(results.size() >= 18, "only " << results.size() << " ops checked");
  for (const auto& r : results) {
    std::printf("    %-32s max rel error %.3g (%s)\n", r.op.c_str(), r.max_rel_error, r.worst_output.c_str());
    for (const auto& [output, err] : r.outputs)
      NCP_EXPECT(err < r.bound, r.op << " " << output << ": rel error " << err << " (bound " << r.bound << ")");
  }
}

NCP_TEST("cuda errors name the op") {
  const ncp_cuda_api* t = ncp::cuda::api();
  if (!t) return;  // the parity case already printed why
  NCP_EXPECT(t->gemm(0, 0, -1, 4, 4, 1.f, nullptr, 4, nullptr, 4, 0.f, nullptr, 4) == NCP_CUDA_EINVAL);
  NCP_EXPECT(std::strstr(t->last_error(), "gemm") != nullptr, "last_error: " << t->last_error());
  NCP_EXPECT(t->group_norm_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 10, 4, 3, 1e-5) ==
             NCP_CUDA_EINVAL);
  NCP_EXPECT(std::strstr(t->last_error(), "group_norm") != nullptr, "last_error: " << t->last_error());
}
