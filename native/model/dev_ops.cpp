#include "model/dev_ops.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <vector>
#include <unordered_map>

#include "core/cuda_backend.h"
#include "core/error.h"
#include "core/threads.h"

namespace ncp::dev {
namespace {

thread_local int g_device = -1;

// Sizes of the live CUDA allocations, for the memory figures of the benchmarks and errors.
struct DeviceMemory {
  std::mutex mu;
  std::unordered_map<const void*, int64_t> sizes;
  int64_t in_use = 0, peak = 0;
};
DeviceMemory& device_memory() {
  static DeviceMemory* m = new DeviceMemory();  // never destroyed, like the activation cache
  return *m;
}

const ncp_cuda_api& table() {
  const ncp_cuda_api* t = cuda::api();
  if (!t) throw Error("NCP_ENOCUDA", "CUDA backend not usable: " + cuda::status().reason);
  return *t;
}

// Every CUDA call goes through here: a failure becomes an exception carrying the library's message.
void ok(int rc, const char* op) {
  if (rc == NCP_CUDA_OK) return;
  const char* msg = table().last_error();
  throw Error(rc == NCP_CUDA_ENOMEM ? "NCP_ENOMEM" : "NCP_ECUDA", std::string(op) + ": " + (msg ? msg : "CUDA error"));
}

ncp_cuda_conv2d_shape conv_shape(const cpu::Conv2dShape& s) {
  return {s.N, s.Cin, s.H, s.W, s.Cout, s.k, s.stride, s.pad};
}
ncp_cuda_attention_shape attn_shape(const cpu::AttentionShape& s) { return {s.B, s.Lq, s.Lk, s.H, s.Dh, s.causal}; }

void cpu_transpose(float* y, const float* x, int64_t N, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;  // a 32x32 float tile of source and destination both stay in L1
  const int64_t rt = (rows + kTile - 1) / kTile, ct = (cols + kTile - 1) / kTile;
  parallel_for(N * rt * ct, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (rt * ct), r0 = t / ct % rt * kTile, c0 = t % ct * kTile;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      const float* xs = x + n * rows * cols;
      float* yd = y + n * rows * cols;
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) yd[c * rows + r] = xs[r * cols + c];
    }
  });
}

// Per-op profile (dev::set_profiling).
// - Sync: each timed op waits for the device before and after itself: exact wall time per op, in a run that is
//   slower than an unprofiled one (the device idles while the host issues every op).
// - Gpu: nothing waits. Each op records a device event before and after itself; the report gives the device time
//   between the two (the op's kernels, plus any time the device sat waiting for the op's launches), the host time
//   spent issuing the op and its launch count. Wall time minus the ops' device spans is the device's idle time
//   between ops (host work outside ops). On the CPU both modes time the op on the host.
struct OpStats {
  double seconds = 0, host_seconds = 0;
  int64_t calls = 0, launches = 0;
};
struct PendingSpan {
  const char* name;
  int64_t start, end;  // device events
};
constexpr size_t kMaxPendingSpans = 2048;  // past this many unresolved spans, wait for the oldest

struct Profile {
  std::mutex mu;
  ProfileMode mode = ProfileMode::Off;
  std::map<std::string, OpStats> ops;
  std::deque<PendingSpan> pending;
  bool device_spans = false;  // some op since the start ran on the device with events around it
  // The first span's start event, kept until the profile is cleared: device time from it to each folded span's
  // end gives the device's wall time, of which the spans' sum is the busy part.
  int64_t first_start = -1;
  double device_wall = 0;
  std::chrono::steady_clock::time_point started, last_op_end;
};
Profile& profile() {
  static Profile* p = new Profile();
  return *p;
}

// Moves resolved spans (all of them when `wait`) into the per-op totals. Caller holds the lock.
void fold_spans(Profile& p, bool wait) {
  const ncp_cuda_api* t = cuda::api();
  while (!p.pending.empty()) {
    const PendingSpan s = p.pending.front();
    if (!wait && p.pending.size() <= kMaxPendingSpans) {
      int32_t done = 0;
      ok(t->event_query(s.end, &done), "profile (event_query)");
      if (!done) return;
    }
    float ms = 0, since_first = 0;
    ok(t->event_elapsed(s.start, s.end, &ms), "profile (event_elapsed)");
    ok(t->event_elapsed(p.first_start, s.end, &since_first), "profile (event_elapsed)");
    if (s.start != p.first_start) ok(t->event_release(s.start), "profile (event_release)");
    ok(t->event_release(s.end), "profile (event_release)");
    p.ops[s.name].seconds += ms * 1e-3;
    p.device_wall = std::max(p.device_wall, since_first * 1e-3);
    p.pending.pop_front();
  }
}

class OpTimer {
 public:
  explicit OpTimer(const char* name) {
    Profile& p = profile();
    if (p.mode == ProfileMode::Off) return;
    name_ = name;
    if (g_device >= 0) {
      const ncp_cuda_api* t = cuda::api();
      if (p.mode == ProfileMode::Sync) ok(t->synchronize(), "profile (synchronize)");
      else {
        ok(t->event_record(&start_event_), "profile (event_record)");
        launches0_ = t->launch_count();
      }
    }
    t0_ = std::chrono::steady_clock::now();
  }
  ~OpTimer() {
    if (!name_) return;
    Profile& p = profile();
    const ncp_cuda_api* t = g_device >= 0 ? cuda::api() : nullptr;
    const bool events = start_event_ >= 0;
    int64_t end_event = -1;
    if (t && events) {
      // Errors here cannot throw (destructor): an op that failed has thrown already; a failed record drops the span.
      if (t->event_record(&end_event) != NCP_CUDA_OK) end_event = -1;
    } else if (t) {
      t->synchronize();
    }
    const auto now = std::chrono::steady_clock::now();
    const double host = std::chrono::duration<double>(now - t0_).count();
    std::lock_guard<std::mutex> lock(p.mu);
    OpStats& e = p.ops[name_];
    e.calls += 1, e.host_seconds += host, p.last_op_end = now;
    if (!events) {
      e.seconds += host;
      return;
    }
    e.launches += t->launch_count() - launches0_;
    if (end_event < 0) {
      t->event_release(start_event_);
      return;
    }
    if (p.first_start < 0) p.first_start = start_event_;
    p.pending.push_back({name_, start_event_, end_event});
    p.device_spans = true;
    try {
      fold_spans(p, false);
    } catch (...) {  // reported by the next op's own check
    }
  }

 private:
  const char* name_ = nullptr;
  int64_t start_event_ = -1, launches0_ = 0;
  std::chrono::steady_clock::time_point t0_;
};

void clear_profile(Profile& p) {
  if (!p.pending.empty()) fold_spans(p, true);
  if (p.first_start >= 0) ok(cuda::api()->event_release(p.first_start), "profile (event_release)");
  p.first_start = -1, p.device_wall = 0;
  p.ops.clear();
  p.device_spans = false;
  p.started = p.last_op_end = std::chrono::steady_clock::now();
}

}  // namespace

ProfileMode parse_profile_mode(const std::string& s) {
  if (s == "off") return ProfileMode::Off;
  if (s == "on" || s == "sync") return ProfileMode::Sync;
  if (s == "gpu") return ProfileMode::Gpu;
  throw Error("NCP_EINVAL", "profile mode must be off, on (= sync) or gpu, not '" + s + "'");
}

void set_profiling(ProfileMode mode) {
  std::lock_guard<std::mutex> lock(profile().mu);
  clear_profile(profile());
  profile().mode = mode;
}

void restart_profile() {
  std::lock_guard<std::mutex> lock(profile().mu);
  if (profile().mode != ProfileMode::Off) clear_profile(profile());
}

std::string profile_report() {
  Profile& p = profile();
  std::lock_guard<std::mutex> lock(p.mu);
  if (!p.pending.empty()) fold_spans(p, true);
  std::vector<std::pair<std::string, OpStats>> rows(p.ops.begin(), p.ops.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0, host_total = 0;
  int64_t launches = 0;
  for (const auto& r : rows) total += r.second.seconds, host_total += r.second.host_seconds, launches += r.second.launches;
  const bool events = p.device_spans;
  std::string out = events ? "per-op device time in ms (nothing synchronised: device events around each op; "
                             "host ms = time spent issuing the op):\n"
                           : "per-op time (every op synchronised):\n";
  char line[200];
  if (events) {
    std::snprintf(line, sizeof line, "%-32s %9s %6s %9s %8s %9s\n", "op", "device ms", "%", "host ms", "calls",
                  "launches");
    out += line;
  }
  for (const auto& [name, v] : rows) {
    if (events)
      std::snprintf(line, sizeof line, "%-32s %9.3f %5.1f%% %9.3f %8lld %9lld\n", name.c_str(), 1e3 * v.seconds,
                    total > 0 ? 100 * v.seconds / total : 0.0, 1e3 * v.host_seconds, (long long)v.calls,
                    (long long)v.launches);
    else
      std::snprintf(line, sizeof line, "%-28s %9.4f s %5.1f%% %8lld calls\n", name.c_str(), v.seconds,
                    total > 0 ? 100 * v.seconds / total : 0.0, (long long)v.calls);
    out += line;
  }
  if (!events) {
    std::snprintf(line, sizeof line, "%-28s %9.4f s\n", "total in ops", total);
    return out + line;
  }
  const double host_wall = std::chrono::duration<double>(p.last_op_end - p.started).count();
  const double wall = p.device_wall, idle = std::max(0.0, wall - total);
  std::snprintf(line, sizeof line, "%-32s %9.3f %6s %9.3f %8s %9lld\n", "total in ops", 1e3 * total, "",
                1e3 * host_total, "", (long long)launches);
  out += line;
  std::snprintf(line, sizeof line,
                "device wall time from the first op's start to the last op's end: %.3f ms, of which idle between ops "
                "%.3f ms (%.1f%%); host wall time to the last op's issue: %.3f ms\n",
                1e3 * wall, 1e3 * idle, wall > 0 ? 100 * idle / wall : 0.0, 1e3 * host_wall);
  return out + line;
}

int current_device() { return g_device; }

static std::recursive_mutex& device_mutex() {
  static std::recursive_mutex* m = new std::recursive_mutex();
  return *m;
}

DeviceScope::DeviceScope(int device) : lock_(device_mutex(), std::defer_lock), previous_(g_device) {
  if (device >= 0) lock_.lock();
  if (device >= 0 && device != g_device) {
    require_device(device);
    ok(table().set_device(device), "set_device");
  }
  g_device = device;
}

DeviceScope::~DeviceScope() {
  if (previous_ >= 0 && previous_ != g_device) cuda::api()->set_device(previous_);
  g_device = previous_;
}

namespace {
// NCP_CUDA_TF32 as the user set it: 1 on, 0 off, -1 unset (then the model's precision decides).
int tf32_override() {
  static const int v = [] {
    const char* e = std::getenv("NCP_CUDA_TF32");
    return e && std::string(e) == "1" ? 1 : e && std::string(e) == "0" ? 0 : -1;
  }();
  return v;
}
// The innermost scope's choices (TF32 1/0, an attention mode), or -1 outside scopes, where the backend keeps what
// NCP_CUDA_TF32 and NCP_CUDA_ATTENTION set. Scopes live inside a CUDA DeviceScope, whose lock serialises them.
int g_tf32_scoped = -1, g_attention_scoped = -1;
bool tf32_in_effect(int scoped) { return scoped < 0 ? tf32_override() == 1 : scoped == 1; }
int attention_in_effect(int scoped) { return scoped < 0 ? cuda::status().attention_mode : scoped; }
}  // namespace

int unet_attention_mode(DType weight_matrices) {
  const cuda::Status& st = cuda::status();
  if (st.attention_from_env) return st.attention_mode;
  return weight_matrices == DType::BF16 ? NCP_CUDA_ATTENTION_FUSED_ASYNC8 : NCP_CUDA_ATTENTION_MATERIALIZED;
}

std::string unet_attention(DType weight_matrices) {
  return cuda::attention_mode_name(unet_attention_mode(weight_matrices));
}

PrecisionScope::PrecisionScope(DType weight_matrices) {
  if (!on_cuda()) return;
  const int forced = tf32_override();
  const int want = forced >= 0 ? forced : weight_matrices != DType::F32 ? 1 : 0;
  const int attention = unet_attention_mode(weight_matrices);
  ok(table().set_tf32(want), "set_tf32");  // a no-op in the backend when it is already so
  ok(table().set_fused_attention(attention), "set_fused_attention");
  previous_ = g_tf32_scoped, g_tf32_scoped = want;
  previous_attention_ = g_attention_scoped, g_attention_scoped = attention;
  active_ = true;
}

PrecisionScope::~PrecisionScope() {
  if (!active_) return;
  table().set_tf32(tf32_in_effect(previous_) ? 1 : 0);
  table().set_fused_attention(attention_in_effect(previous_attention_));
  g_tf32_scoped = previous_, g_attention_scoped = previous_attention_;
}

int parse_device(const std::string& s) {
  if (s == "cpu") return -1;
  if (s == "cuda") return 0;
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9 &&
      std::all_of(s.begin() + 5, s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::atoi(s.c_str() + 5);
  throw Error("NCP_EINVAL", "device '" + s + "': expected cpu, cuda or cuda:N");
}

std::string device_name(int device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }

void require_device(int device) {
  if (device < 0) return;
  const cuda::Status& s = cuda::status();
  if (!s.usable) throw Error("NCP_ENOCUDA", "device " + device_name(device) + " asked for, but the CUDA backend is not usable: " + s.reason);
  if (device >= s.device_count)
    throw Error("NCP_EINVAL", "device " + device_name(device) + " asked for, but " + std::to_string(s.device_count) +
                                  " CUDA device(s) are visible");
}

float* alloc(int64_t n) {
  if (!on_cuda()) {
    void* p = std::aligned_alloc(64, size_t((n * 4 + 63) / 64 * 64));
    if (!p) throw Error("NCP_ENOMEM", "out of host memory allocating " + std::to_string(n * 4 >> 20) + " MiB");
    return static_cast<float*>(p);
  }
  void* p = nullptr;
  const int rc = table().mem_alloc(&p, size_t(n) * sizeof(float));
  if (rc == NCP_CUDA_ENOMEM) {
    ncp_cuda_device_info info{};
    table().device_info(g_device, &info);
    throw Error("NCP_ENOMEM", "CUDA out of memory on " + device_name(g_device) + ": asked for " +
                                  std::to_string((n * 4 + (1 << 20) - 1) >> 20) + " MiB, " +
                                  std::to_string(info.free_memory >> 20) + " MiB free of " +
                                  std::to_string(info.total_memory >> 20) + " MiB");
  }
  ok(rc, "mem_alloc");
  DeviceMemory& m = device_memory();
  std::lock_guard<std::mutex> lock(m.mu);
  m.sizes[p] = n * 4;
  m.in_use += n * 4;
  m.peak = std::max(m.peak, m.in_use);
  return static_cast<float*>(p);
}

void free(float* p) {
  if (!p) return;
  if (!on_cuda()) return std::free(p);
  table().mem_free(p);
  DeviceMemory& m = device_memory();
  std::lock_guard<std::mutex> lock(m.mu);
  auto it = m.sizes.find(p);
  if (it != m.sizes.end()) m.in_use -= it->second, m.sizes.erase(it);
}

int64_t device_bytes_peak() {
  std::lock_guard<std::mutex> lock(device_memory().mu);
  return device_memory().peak;
}

void reset_device_peak() {
  std::lock_guard<std::mutex> lock(device_memory().mu);
  device_memory().peak = device_memory().in_use;
}

void zero(float* p, int64_t n) {
  OpTimer timer("zero");
  if (n <= 0) return;
  if (on_cuda()) return ok(table().mem_zero(p, size_t(n) * 4), "mem_zero");
  std::memset(p, 0, size_t(n) * 4);
}

void copy(float* dst, const float* src, int64_t n) {
  OpTimer timer("copy");
  if (n <= 0 || dst == src) return;
  if (on_cuda()) return ok(table().memcpy_d2d(dst, src, size_t(n) * 4), "memcpy_d2d");
  std::memcpy(dst, src, size_t(n) * 4);
}

void upload(float* dst, const float* host, int64_t n) {
  OpTimer timer("upload");
  if (n <= 0) return;
  if (on_cuda()) return ok(table().memcpy_h2d(dst, host, size_t(n) * 4), "memcpy_h2d");
  std::memcpy(dst, host, size_t(n) * 4);
}

void download(float* host, const float* src, int64_t n) {
  OpTimer timer("download");
  if (n <= 0) return;
  if (on_cuda()) return ok(table().memcpy_d2h(host, src, size_t(n) * 4), "memcpy_d2h");
  std::memcpy(host, src, size_t(n) * 4);
}

void synchronize() {
  if (on_cuda()) ok(table().synchronize(), "synchronize");
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  OpTimer timer("gemm");
  if (on_cuda()) return ok(table().gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), "gemm");
  cpu::gemm<float>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

namespace {
// The CUDA library's name for a weight's dtype: float32, bf16 or fp16 (DeviceWeights stores nothing else).
int32_t cuda_weight_dtype(const cpu::WeightRef& W, const char* op) {
  if (W.dtype == DType::F32) return NCP_CUDA_F32;
  if (W.dtype == DType::BF16) return NCP_CUDA_BF16;
  if (W.dtype == DType::F16) return NCP_CUDA_F16;
  throw Error("NCP_EDTYPE", std::string(op) + ": " + dtype_name(W.dtype) + " weights on a CUDA device");
}
}  // namespace

void linear_forward(float* y, const float* x, cpu::WeightRef W, const float* b, int64_t rows, int64_t in,
                    int64_t out) {
  OpTimer timer("linear_forward");
  if (on_cuda())
    return ok(table().linear_forward_w(y, x, W.data, cuda_weight_dtype(W, "linear_forward"), b, rows, in, out),
              "linear_forward");
  cpu::linear_forward_w(y, x, W, b, rows, in, out);
}

void linear_backward_input(float* dx, const float* dy, cpu::WeightRef W, int64_t rows, int64_t in, int64_t out) {
  OpTimer timer("linear_backward_input");
  if (on_cuda())
    return ok(table().linear_backward_input_w(dx, dy, W.data, cuda_weight_dtype(W, "linear_backward"), rows, in, out),
              "linear_backward");
  cpu::linear_backward_input_w(dx, dy, W, rows, in, out);
}

void lora_forward(float* y, const float* x, const float* A, const float* B, float scale, const cpu::LoraShape& s) {
  OpTimer timer("lora_forward");
  if (on_cuda()) return ok(table().lora_forward(y, x, A, B, scale, s.rows, s.in, s.out, s.rank), "lora_forward");
  cpu::lora_forward<float>(y, x, A, B, scale, s);
}

void lora_backward(float* dx, float* dA, float* dB, const float* dy, const float* x, const float* A, const float* B,
                   float scale, const cpu::LoraShape& s) {
  OpTimer timer("lora_backward");
  if (on_cuda())
    return ok(table().lora_backward(dx, dA, dB, dy, x, A, B, scale, s.rows, s.in, s.out, s.rank), "lora_backward");
  cpu::lora_backward<float>(dx, dA, dB, dy, x, A, B, scale, s);
}

void conv2d_forward(float* y, const float* x, cpu::WeightRef W, const float* b, const cpu::Conv2dShape& s) {
  OpTimer timer("conv2d_forward");
  if (on_cuda()) {
    const ncp_cuda_conv2d_shape c = conv_shape(s);
    return ok(table().conv2d_forward_w(y, x, W.data, cuda_weight_dtype(W, "conv2d_forward"), b, &c), "conv2d_forward");
  }
  cpu::conv2d_forward_w(y, x, W, b, s);
}

void conv2d_backward_input(float* dx, const float* dy, cpu::WeightRef W, const cpu::Conv2dShape& s) {
  OpTimer timer("conv2d_backward_input");
  if (on_cuda()) {
    const ncp_cuda_conv2d_shape c = conv_shape(s);
    return ok(table().conv2d_backward_input_w(dx, dy, W.data, cuda_weight_dtype(W, "conv2d_backward"), &c),
              "conv2d_backward");
  }
  cpu::conv2d_backward_input_w(dx, dy, W, s);
}

void group_norm_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma, const float* beta,
                        int64_t N, int64_t C, int64_t HW, int64_t G, double eps) {
  OpTimer timer("group_norm_forward");
  if (on_cuda())
    return ok(table().group_norm_forward(y, mean, rstd, x, gamma, beta, N, C, HW, G, eps), "group_norm_forward");
  cpu::group_norm_forward(y, mean, rstd, x, gamma, beta, N, C, HW, G, eps);
}

void group_norm_backward_input(float* dx, const float* dy, const float* x, const float* mean, const float* rstd,
                               const float* gamma, int64_t N, int64_t C, int64_t HW, int64_t G) {
  OpTimer timer("group_norm_backward_input");
  if (on_cuda())
    return ok(table().group_norm_backward(dx, nullptr, nullptr, dy, x, mean, rstd, gamma, N, C, HW, G),
              "group_norm_backward");
  cpu::group_norm_backward<float>(dx, nullptr, nullptr, dy, x, mean, rstd, gamma, N, C, HW, G);
}

void group_norm_silu_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                             const float* beta, int64_t N, int64_t C, int64_t HW, int64_t G, double eps) {
  OpTimer timer("group_norm_silu_forward");
  if (on_cuda())
    return ok(table().group_norm_silu_forward(y, mean, rstd, x, gamma, beta, N, C, HW, G, eps),
              "group_norm_silu_forward");
  cpu::group_norm_silu_forward(y, mean, rstd, x, gamma, beta, N, C, HW, G, eps);
}

void group_norm_silu_backward_input(float* dx, const float* dy, const float* x, const float* mean, const float* rstd,
                                    const float* gamma, const float* beta, int64_t N, int64_t C, int64_t HW,
                                    int64_t G) {
  OpTimer timer("group_norm_silu_backward_input");
  if (on_cuda())
    return ok(table().group_norm_silu_backward(dx, nullptr, nullptr, dy, x, mean, rstd, gamma, beta, N, C, HW, G),
              "group_norm_silu_backward");
  cpu::group_norm_silu_backward<float>(dx, nullptr, nullptr, dy, x, mean, rstd, gamma, beta, N, C, HW, G);
}

void layer_norm_forward(float* y, float* mean, float* rstd, const float* x, const float* gamma, const float* beta,
                        int64_t rows, int64_t C, double eps) {
  OpTimer timer("layer_norm_forward");
  if (on_cuda())
    return ok(table().layer_norm_forward(y, mean, rstd, x, gamma, beta, rows, C, eps), "layer_norm_forward");
  cpu::layer_norm_forward(y, mean, rstd, x, gamma, beta, rows, C, eps);
}

void layer_norm_backward_input(float* dx, const float* dy, const float* x, const float* mean, const float* rstd,
                               const float* gamma, int64_t rows, int64_t C) {
  OpTimer timer("layer_norm_backward_input");
  if (on_cuda())
    return ok(table().layer_norm_backward(dx, nullptr, nullptr, dy, x, mean, rstd, gamma, rows, C),
              "layer_norm_backward");
  cpu::layer_norm_backward<float>(dx, nullptr, nullptr, dy, x, mean, rstd, gamma, rows, C);
}

void activation_forward(cpu::Activation a, float* y, const float* x, int64_t n) {
  OpTimer timer("activation_forward");
  if (on_cuda()) return ok(table().activation_forward(int32_t(a), y, x, n), "activation_forward");
  cpu::activation_forward(a, y, x, n);
}

void activation_backward(cpu::Activation a, float* dx, const float* dy, const float* x, int64_t n) {
  OpTimer timer("activation_backward");
  if (on_cuda()) return ok(table().activation_backward(int32_t(a), dx, dy, x, n), "activation_backward");
  cpu::activation_backward<float>(a, dx, dy, x, n);
}

void geglu_forward(float* y, const float* x, int64_t rows, int64_t D) {
  OpTimer timer("geglu_forward");
  if (on_cuda()) return ok(table().geglu_forward(y, x, rows, D), "geglu_forward");
  cpu::geglu_forward(y, x, rows, D);
}

void geglu_backward(float* dx, const float* dy, const float* x, int64_t rows, int64_t D) {
  OpTimer timer("geglu_backward");
  if (on_cuda()) return ok(table().geglu_backward(dx, dy, x, rows, D), "geglu_backward");
  cpu::geglu_backward<float>(dx, dy, x, rows, D);
}

void attention_forward(float* out, float* saved_probs, const float* q, const float* k, const float* v,
                       const cpu::AttentionShape& s) {
  OpTimer timer("attention_forward");
  if (on_cuda()) {
    const ncp_cuda_attention_shape a = attn_shape(s);
    return ok(table().attention_forward(out, saved_probs, q, k, v, &a), "attention_forward");
  }
  cpu::attention_forward<float>(out, saved_probs, q, k, v, s);
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* saved_probs, const cpu::AttentionShape& s) {
  OpTimer timer("attention_backward");
  if (on_cuda()) {
    const ncp_cuda_attention_shape a = attn_shape(s);
    return ok(table().attention_backward(dq, dk, dv, dout, q, k, v, saved_probs, &a), "attention_backward");
  }
  cpu::attention_backward<float>(dq, dk, dv, dout, q, k, v, saved_probs, s);
}

void attention_backward_recompute(float* dq, float* dk, float* dv, float* out, const float* dout, const float* q,
                                  const float* k, const float* v, const cpu::AttentionShape& s) {
  OpTimer timer("attention_backward_recompute");
  if (on_cuda()) {
    const ncp_cuda_attention_shape a = attn_shape(s);
    return ok(table().attention_backward_recompute(dq, dk, dv, out, dout, q, k, v, &a),
              "attention_backward_recompute");
  }
  cpu::attention_backward_recompute<float>(dq, dk, dv, out, dout, q, k, v, s);
}

void upsample_nearest2x_forward(float* y, const float* x, int64_t N, int64_t C, int64_t H, int64_t W) {
  OpTimer timer("upsample_nearest2x_forward");
  if (on_cuda()) return ok(table().upsample_nearest2x_forward(y, x, N, C, H, W), "upsample_nearest2x_forward");
  cpu::upsample_nearest2x_forward(y, x, N, C, H, W);
}

void upsample_nearest2x_backward(float* dx, const float* dy, int64_t N, int64_t C, int64_t H, int64_t W) {
  OpTimer timer("upsample_nearest2x_backward");
  if (on_cuda()) return ok(table().upsample_nearest2x_backward(dx, dy, N, C, H, W), "upsample_nearest2x_backward");
  cpu::upsample_nearest2x_backward<float>(dx, dy, N, C, H, W);
}

void add_forward(float* y, const float* a, const float* b, int64_t n) {
  OpTimer timer("add_forward");
  if (on_cuda()) return ok(table().add_forward(y, a, b, n), "add_forward");
  cpu::add_forward(y, a, b, n);
}

void add_into(float* dst, const float* src, int64_t n) {
  OpTimer timer("add_into");
  if (on_cuda()) return ok(table().add_backward(dst, nullptr, src, n), "add_backward");
  cpu::add_backward<float>(dst, nullptr, src, n);
}

void concat_channels_forward(float* y, const float* a, const float* b, int64_t N, int64_t Ca, int64_t Cb, int64_t HW) {
  OpTimer timer("concat_channels_forward");
  if (on_cuda()) return ok(table().concat_channels_forward(y, a, b, N, Ca, Cb, HW), "concat_channels_forward");
  cpu::concat_channels_forward(y, a, b, N, Ca, Cb, HW);
}

void concat_channels_backward(float* da, float* db, const float* dy, int64_t N, int64_t Ca, int64_t Cb, int64_t HW) {
  OpTimer timer("concat_channels_backward");
  if (on_cuda()) return ok(table().concat_channels_backward(da, db, dy, N, Ca, Cb, HW), "concat_channels_backward");
  cpu::concat_channels_backward<float>(da, db, dy, N, Ca, Cb, HW);
}

void add_channel_bias_forward(float* y, const float* bias, int64_t N, int64_t C, int64_t HW) {
  OpTimer timer("add_channel_bias_forward");
  if (on_cuda()) return ok(table().add_channel_bias_forward(y, bias, N, C, HW), "add_channel_bias_forward");
  cpu::add_channel_bias_forward(y, bias, N, C, HW);
}

void timestep_embedding(float* y, const float* t, int64_t N, int64_t dim, bool flip_sin_to_cos, double freq_shift) {
  OpTimer timer("timestep_embedding");
  if (on_cuda())
    return ok(table().timestep_embedding(y, t, N, dim, flip_sin_to_cos, freq_shift, 10000.0), "timestep_embedding");
  cpu::timestep_embedding(y, t, N, dim, flip_sin_to_cos, freq_shift);
}

void transpose_batched(float* y, const float* x, int64_t N, int64_t rows, int64_t cols) {
  OpTimer timer("transpose_batched");
  if (on_cuda()) return ok(table().transpose_batched(y, x, N, rows, cols), "transpose_batched");
  cpu_transpose(y, x, N, rows, cols);
}

void scale_shift(float* y, const float* x, float a, float c, int64_t n) {
  OpTimer timer("scale_shift");
  if (on_cuda()) return ok(table().scale_shift(y, x, a, c, n), "scale_shift");
  for (int64_t i = 0; i < n; ++i) y[i] = a * x[i] + c;
}

void round_to_bf16(uint16_t* dst, const float* src, int64_t n) {
  OpTimer timer("round_to_bf16");
  if (on_cuda()) return ok(table().round_to_bf16(dst, src, n), "round_to_bf16");
  cpu::round_to_bf16(dst, src, n);
}

void widen_bf16(float* dst, const uint16_t* src, int64_t n) {
  OpTimer timer("widen_bf16");
  if (on_cuda()) return ok(table().widen_bf16(dst, src, n), "widen_bf16");
  cpu::widen_bf16(dst, src, n);
}

}  // namespace ncp::dev
