// Device discovery, memory, synchronisation, error strings and the scratch arenas.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/entries.h"

namespace ncp::cuda {
namespace {

thread_local std::string g_last_error;

struct Arena {
  void* ptr = nullptr;
  size_t size = 0;
};
Arena g_arenas[4];

// Profiling events: every event made so far (handles index it) and the handles free for reuse. Events are kept
// for the life of the process (a profile needs a few thousand at most), so the lists are never destroyed: no
// exit-time teardown that would race the CUDA context's, and the events stay reachable for leak checkers.
std::vector<cudaEvent_t>& g_events = *new std::vector<cudaEvent_t>();
std::vector<int64_t>& g_free_events = *new std::vector<int64_t>();
int64_t g_launches = 0;

bool valid_event(int64_t id) { return id >= 0 && id < int64_t(g_events.size()); }

int status_of(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation: return NCP_CUDA_ENOMEM;
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice: return NCP_CUDA_ENODRIVER;
    case cudaErrorNoDevice: return NCP_CUDA_ENODEV;
    default: return NCP_CUDA_ECUDA;
  }
}

// The driver version says more than cudaGetDeviceCount's error: a missing libcuda.so.1 and a too-old driver
// both come back from it as cudaErrorInsufficientDriver.
int check_driver() {
  int driver = 0;
  cudaDriverGetVersion(&driver);
  if (driver == 0)
    return fail(NCP_CUDA_ENODRIVER, "no NVIDIA driver found (libcuda.so.1 could not be loaded)");
  if (driver / 1000 < CUDART_VERSION / 1000)
    return fail(NCP_CUDA_ENODRIVER,
                "the NVIDIA driver supports CUDA %d.%d but this backend was built with CUDA %d.%d: update the "
                "driver (CUDA %d needs driver branch 580 or newer)",
                driver / 1000, driver % 1000 / 10, CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10,
                CUDART_VERSION / 1000);
  return NCP_CUDA_OK;
}

}  // namespace

int fail(int status, const char* fmt, ...) {
  char buf[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  g_last_error = buf;
  return status;
}

int cuda_fail(cudaError_t e, const char* what) {
  return fail(status_of(e), "%s: %s: %s", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

int check_launch(const char* op) {
  ++g_launches;
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, op);
}

int scratch(int slot, size_t bytes, void** out) {
  Arena& a = g_arenas[slot];
  if (bytes > a.size) {
    if (a.ptr) {
      // Kernels queued earlier may still read the old arena.
      const cudaError_t e = cudaDeviceSynchronize();
      if (e != cudaSuccess) return cuda_fail(e, "scratch: synchronize before growing");
      cudaFree(a.ptr);
      a = Arena{};
    }
    const size_t rounded = (bytes + (1u << 20) - 1) & ~size_t((1u << 20) - 1);
    const cudaError_t e = cudaMalloc(&a.ptr, rounded);
    if (e != cudaSuccess) {
      a.ptr = nullptr;
      cudaGetLastError();
      return fail(NCP_CUDA_ENOMEM, "scratch: cannot allocate %zu bytes of device memory: %s", rounded,
                  cudaGetErrorString(e));
    }
    a.size = rounded;
  }
  *out = a.ptr;
  return NCP_CUDA_OK;
}

int device_count(int32_t* count) {
  NCP_REQUIRE(count, "device_count: count is NULL");
  *count = 0;
  NCP_TRY(check_driver());
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
    cudaGetLastError();
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    return fail(NCP_CUDA_ENODEV, "the NVIDIA driver is loaded but no CUDA device is visible (CUDA_VISIBLE_DEVICES=%s)",
                visible ? visible : "<unset>");
  }
  if (e != cudaSuccess) return cuda_fail(e, "cudaGetDeviceCount");
  *count = n;
  return NCP_CUDA_OK;
}

int device_info(int32_t device, ncp_cuda_device_info* info) {
  NCP_REQUIRE(info, "device_info: info is NULL");
  cudaDeviceProp p;
  cudaError_t e = cudaGetDeviceProperties(&p, device);
  if (e != cudaSuccess) return cuda_fail(e, "cudaGetDeviceProperties");
  std::snprintf(info->name, sizeof info->name, "%s", p.name);
  info->cc_major = p.major;
  info->cc_minor = p.minor;
  info->multiprocessors = p.multiProcessorCount;
  info->total_memory = p.totalGlobalMem;
  // Free memory is a property of the current device's context: switch there and back.
  int current = 0;
  if ((e = cudaGetDevice(&current)) != cudaSuccess) return cuda_fail(e, "cudaGetDevice");
  size_t free_bytes = 0, total_bytes = 0;
  if ((e = cudaSetDevice(device)) != cudaSuccess) return cuda_fail(e, "cudaSetDevice");
  e = cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaSetDevice(current);
  if (e != cudaSuccess) return cuda_fail(e, "cudaMemGetInfo");
  info->free_memory = free_bytes;
  return NCP_CUDA_OK;
}

// The scratch arenas and the cuBLAS handle belong to the device current at the first op: call this first.
int set_device(int32_t device) {
  const cudaError_t e = cudaSetDevice(device);
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "cudaSetDevice");
}

int versions(int32_t* driver, int32_t* runtime) {
  int d = 0, r = 0;
  cudaDriverGetVersion(&d);
  cudaRuntimeGetVersion(&r);
  if (driver) *driver = d;
  if (runtime) *runtime = r;
  return NCP_CUDA_OK;
}

const char* last_error() { return g_last_error.c_str(); }

int mem_alloc(void** ptr, size_t bytes) {
  NCP_REQUIRE(ptr, "mem_alloc: ptr is NULL");
  *ptr = nullptr;
  const cudaError_t e = cudaMalloc(ptr, bytes);
  if (e == cudaSuccess) return NCP_CUDA_OK;
  *ptr = nullptr;
  cudaGetLastError();
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  return fail(status_of(e), "cudaMalloc of %zu bytes failed (%zu of %zu bytes free): %s", bytes, free_bytes,
              total_bytes, cudaGetErrorString(e));
}

int mem_free(void* ptr) {
  const cudaError_t e = cudaFree(ptr);
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "cudaFree");
}

int memcpy_h2d(void* dst, const void* src, size_t bytes) {
  const cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "memcpy_h2d");
}

int memcpy_d2h(void* dst, const void* src, size_t bytes) {
  const cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "memcpy_d2h");
}

int memcpy_d2d(void* dst, const void* src, size_t bytes) {
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0);
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "memcpy_d2d");
}

int mem_zero(void* ptr, size_t bytes) {
  const cudaError_t e = cudaMemsetAsync(ptr, 0, bytes, 0);
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "mem_zero");
}

int synchronize() {
  const cudaError_t e = cudaDeviceSynchronize();
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "synchronize");
}

int event_record(int64_t* id) {
  NCP_REQUIRE(id, "event_record: null handle pointer");
  int64_t h = -1;
  if (!g_free_events.empty()) {
    h = g_free_events.back();
    g_free_events.pop_back();
  } else {
    cudaEvent_t e = nullptr;
    const cudaError_t err = cudaEventCreate(&e);
    if (err != cudaSuccess) return cuda_fail(err, "event_record (cudaEventCreate)");
    h = int64_t(g_events.size());
    g_events.push_back(e);
  }
  const cudaError_t err = cudaEventRecord(g_events[size_t(h)], 0);
  if (err != cudaSuccess) {
    g_free_events.push_back(h);
    return cuda_fail(err, "event_record (cudaEventRecord)");
  }
  *id = h;
  return NCP_CUDA_OK;
}

int event_query(int64_t id, int32_t* done) {
  NCP_REQUIRE(valid_event(id) && done, "event_query: unknown event %lld or null result", (long long)id);
  const cudaError_t e = cudaEventQuery(g_events[size_t(id)]);
  if (e == cudaErrorNotReady) {
    cudaGetLastError();  // "not ready" is an answer, not an error: keep it out of the next check_launch
    *done = 0;
    return NCP_CUDA_OK;
  }
  if (e != cudaSuccess) return cuda_fail(e, "event_query");
  *done = 1;
  return NCP_CUDA_OK;
}

int event_elapsed(int64_t start, int64_t end, float* ms) {
  NCP_REQUIRE(valid_event(start) && valid_event(end) && ms, "event_elapsed: unknown event %lld or %lld",
              (long long)start, (long long)end);
  cudaError_t e = cudaEventSynchronize(g_events[size_t(end)]);
  if (e == cudaSuccess) e = cudaEventElapsedTime(ms, g_events[size_t(start)], g_events[size_t(end)]);
  return e == cudaSuccess ? NCP_CUDA_OK : cuda_fail(e, "event_elapsed");
}

int event_release(int64_t id) {
  NCP_REQUIRE(valid_event(id), "event_release: unknown event %lld", (long long)id);
  g_free_events.push_back(id);
  return NCP_CUDA_OK;
}

int64_t launch_count() { return g_launches; }

}  // namespace ncp::cuda
