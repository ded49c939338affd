// The CUDA surface that libncp_cuda's sources use, for compiling them as C++ into libncp_cuda_emu.so: a CUDA
// emulator on the CPU with the backend's exact code and ABI. The fake <cuda_runtime.h>, <cuda_bf16.h>,
// <cuda_fp16.h> and <mma.h> beside this file all lead here, so the sources build unchanged (launches go through
// NCP_LAUNCH, which is `kernel<<<...>>>` under nvcc).
//
// Why: most of the backend's logic (tiling, bounds, barriers, the dispatch from the model, the mixed-precision
// paths) can then be checked against the CPU on any machine, in CI, before a GPU is ever lent. What it cannot
// check is the hardware: timing, the tensor cores' own arithmetic and WMMA's fragment layout (undocumented; the
// documented one of mma.sync and ldmatrix is emulated, flash_mma_kernels.cuh), memory limits, races the
// emulation's schedule does not provoke. simt.cpp has the execution model.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cuda_emu/half_emu.h"

#ifndef NCP_CUDA_EMULATED
#define NCP_CUDA_EMULATED 1
#endif
#define CUDART_VERSION 13000

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One block runs at a time on one host thread, so a block's shared memory can be a function-local static.
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

// ---- built-in variables and types
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
// One launch runs at a time (simt.cpp), so these are plain globals.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

namespace ncp_emu {
void block_barrier();
// Every live lane of the calling thread's warp deposits `bytes` from `in`; each then reads lane src_lane's.
void warp_exchange(const void* in, void* out, size_t bytes, int src_lane);
// Every lane of the calling thread's (full) warp deposits `bytes` from `in`; each then reads all 32 deposits into
// all[lane * bytes]: what a warp-wide matrix instruction (mma.sync) needs to see of the other lanes' registers.
void warp_gather(const void* in, void* all, size_t bytes);
unsigned char* dynamic_shared();
// cp.async: queues a copy of src_bytes from src (then zeros up to `bytes`) into shared memory for the calling
// thread; commit closes its group; wait makes the copies of all but its `pending` newest committed groups. The
// copies land at the wait, not before, so a kernel that reads a tile it has not waited for reads stale data.
void cp_async(void* dst, const void* src, int src_bytes, int bytes);
void cp_async_commit();
void cp_async_wait(int pending);
// Whether [p, p + bytes) lies inside one device allocation (the emulated cuBLAS checks its operands with it).
bool device_range_ok(const void* p, size_t bytes);
// Reports a fault the hardware would raise (with the block that raised it, inside a kernel) and aborts.
[[noreturn]] void fatal(const char* what);
}  // namespace ncp_emu

// ---- device intrinsics
inline void __syncthreads() { ncp_emu::block_barrier(); }
template <class T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int width = 32) {
  const int lane = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31;
  const int src = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  T out;
  ncp_emu::warp_exchange(&v, &out, sizeof(T), src);
  return out;
}
// Fibers of one block never run at the same time: plain read-modify-writes are atomic here.
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
inline double atomicAdd(double* p, double v) {
  const double old = *p;
  *p = old + v;
  return old;
}
inline float __expf(float x) { return std::exp(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
using std::max;
using std::min;

#include "cuda_emu/wmma_emu.h"

// ---- the runtime API subset the backend calls
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorNotReady = 600,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
};
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor, multiProcessorCount;
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaDeviceSynchronize();
// Events: the emulator runs every launch before it returns, so an event completes when it is recorded and holds
// the host clock of that moment.
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaGetLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t ncp_emu_set_dynamic_shared_limit(int bytes);
template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int value) {
  return ncp_emu_set_dynamic_shared_limit(value);
}

// ---- launches
namespace ncp_emu {

// Runs body once per thread of every block of grid; blocks one after another on the calling thread. A bad
// configuration (as the hardware would refuse it) runs nothing and becomes the next cudaGetLastError().
void run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*body)(void*), void* context);

template <class Kernel>
struct Launcher {
  dim3 grid, block;
  size_t smem;
  Kernel kernel;
  template <class... Args>
  void operator()(Args... args) {
    auto call = [&] { kernel(args...); };  // the kernel takes its parameters by value: one copy per thread
    run_grid(grid, block, smem, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
  }
};
template <class Kernel>
Launcher<Kernel> launcher(dim3 grid, dim3 block, size_t smem, Kernel kernel) {
  return Launcher<Kernel>{grid, block, smem, kernel};
}

}  // namespace ncp_emu

#define NCP_LAUNCH(kernel, grid, block, smem) \
  ::ncp_emu::launcher(grid, block, smem, [=](auto... ncp_emu_args) { kernel(ncp_emu_args...); })
#define NCP_DYNAMIC_SHARED(name) unsigned char* const name = ::ncp_emu::dynamic_shared()
