// The emulator's execution model and runtime. A launch runs its blocks one after another on the calling host
// thread; a block's threads are fibers on that thread. A fiber runs until it finishes or reaches a
// barrier (__syncthreads, or a warp shuffle's exchange); a barrier releases when every live thread of the block
// (or warp) has reached it, as on the hardware, where exited threads no longer count.
//
// Between barriers the scheduler resumes the ready fibers in ascending thread order on one round and descending on
// the next, so a missing barrier shows up as a stale read whichever side of the race the writer is on. A block
// whose live threads all wait on barriers that can never release (a barrier inside a divergent branch) is a
// kernel bug: the emulator says so and aborts.
//
// Device memory is host memory; the runtime calls do what the real ones do, synchronously.
//
// Fibers switch with a few instructions of our own on x86-64 (glibc's swapcontext makes a sigprocmask system call
// per switch, which doubled the emulated suite's time); elsewhere, or when built with NCP_EMU_UCONTEXT, with
// swapcontext.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda_emu/async_copies.h"
#include "cuda_emu/ncp_cuda_emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define NCP_EMU_ASAN 1
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace ncp_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;  // kernels keep small frames; room for sanitizer builds
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxDynamicShared = 227 * 1024;  // an sm_90 block's opt-in limit
constexpr size_t kExchangeBytes = 32;              // a lane's deposit at a shuffle or a warp gather

#if defined(__x86_64__) && !defined(NCP_EMU_UCONTEXT)
// A saved context is a stack pointer, the callee-saved registers on the stack. Every fiber runs with the launching
// thread's floating-point environment, so the control words need no saving.
struct Context {
  void* sp = nullptr;
};
extern "C" void ncp_emu_switch(void** save_sp, void* resume_sp);
extern "C" void ncp_emu_fiber_start();
asm(R"(
  .text
  .globl ncp_emu_switch
  .hidden ncp_emu_switch
  .type ncp_emu_switch, @function
ncp_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ncp_emu_switch, .-ncp_emu_switch

  .globl ncp_emu_fiber_start
  .hidden ncp_emu_fiber_start
  .type ncp_emu_fiber_start, @function
ncp_emu_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size ncp_emu_fiber_start, .-ncp_emu_fiber_start
)");
void switch_context(Context& save, Context& resume) { ncp_emu_switch(&save.sp, resume.sp); }
// The stack ncp_emu_switch pops into ncp_emu_fiber_start, which calls entry(arg) with the ABI's alignment.
void make_context(Context& c, char* stack, size_t bytes, void (*entry)(void*), void* arg) {
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15)) - 16);
  uint64_t* sp = top - 7;  // r15, r14, r13, r12, rbx, rbp, return address
  sp[0] = 0, sp[1] = 0;                                      // r15, r14
  sp[2] = reinterpret_cast<uint64_t>(entry);                 // r13
  sp[3] = reinterpret_cast<uint64_t>(arg);                   // r12
  sp[4] = 0, sp[5] = 0;                                      // rbx, rbp
  sp[6] = reinterpret_cast<uint64_t>(&ncp_emu_fiber_start);  // popped by ret (at 8 mod 16: the call inside aligns)
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
void switch_context(Context& save, Context& resume) { swapcontext(&save.uc, &resume.uc); }
void (*g_entry)(void*);
void ucontext_entry(unsigned lo, unsigned hi) { g_entry(reinterpret_cast<void*>((uintptr_t(hi) << 32) | lo)); }
void make_context(Context& c, char* stack, size_t bytes, void (*entry)(void*), void* arg) {
  g_entry = entry;
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  const uintptr_t a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2, unsigned(a & 0xffffffffu), unsigned(a >> 32));
}
#endif

struct Fiber {
  Context context;
  bool done = false;  // exited: leaves the barriers' counts, and its lane may not be read
  char* stack = nullptr;
#ifdef NCP_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct BlockRun {
  int threads = 0, live = 0;
  std::vector<AsyncCopies> async;  // per thread: its cp.async copies
  std::vector<int> warp_live;
  std::vector<int> block_waiters;               // at __syncthreads
  std::vector<std::vector<int>> warp_waiters;  // at a shuffle's exchange, per warp
  std::vector<int> ready, next;                // resumed this round; released for the next
  size_t position = 0;                         // of the running fiber in ready
  std::vector<Fiber>* fibers = nullptr;
  int current = -1;
  Context scheduler;
#ifdef NCP_EMU_ASAN
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
  bool from_scheduler = false;  // whether the switch into a starting fiber came from the scheduler
#endif
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  // Warp shuffles: one slot per thread, in two banks used alternately, so one barrier per shuffle suffices (a
  // lane can only write a bank again after every lane has passed the next shuffle's barrier, so after its read).
  unsigned char exchange[2][kMaxThreads][kExchangeBytes];
  std::vector<unsigned char> exchange_bank;
};

// The emulator serves one launch at a time (the backend's callers serialise on a process-wide lock anyway); its
// state is plain globals, which the kernels read at every threadIdx.
std::mutex g_launch_mutex;
BlockRun* g_run = nullptr;
std::vector<Fiber> g_fibers;  // stacks kept for the next launch
std::vector<unsigned char> g_shared_storage;
unsigned char* g_shared = nullptr;
size_t g_shared_bytes = 0;  // the running launch's dynamic shared memory
thread_local cudaError_t t_last_error = cudaSuccess;  // per host thread, as in CUDA
int g_dynamic_shared_limit = 48 * 1024;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "ncp CUDA emulator: %s (block %u,%u,%u of a %ux%ux%u grid, %ux%ux%u threads)\n", what,
               blockIdx.x, blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z, blockDim.x, blockDim.y,
               blockDim.z);
  std::abort();
}

void set_thread_index(int t) {
  threadIdx = {unsigned(t) % blockDim.x, unsigned(t) / blockDim.x % blockDim.y,
               unsigned(t) / (blockDim.x * blockDim.y)};
}

// Each round the scheduler starts the first fiber of its ready list; a fiber that stops (at a barrier, or done)
// hands over to the next one on the list directly, and the last returns to the scheduler. Half the switches of
// going through the scheduler every time.
void start_round(BlockRun& r) {
  const int t = r.ready[0];
  Fiber& f = (*r.fibers)[size_t(t)];
  r.position = 0, r.current = t;
  set_thread_index(t);
#ifdef NCP_EMU_ASAN
  r.from_scheduler = true;
  __sanitizer_start_switch_fiber(&r.scheduler_fake_stack, f.stack, kStackBytes);
#endif
  switch_context(r.scheduler, f.context);
#ifdef NCP_EMU_ASAN
  __sanitizer_finish_switch_fiber(r.scheduler_fake_stack, nullptr, nullptr);
#endif
}

// From the current fiber to the next ready one of the round, or back to the scheduler; returns when something
// switches back to this fiber.
void stop_current(BlockRun& r, bool finished) {
  Fiber& f = (*r.fibers)[size_t(r.current)];
  Context* target = &r.scheduler;
#ifdef NCP_EMU_ASAN
  const void* bottom = r.scheduler_stack_bottom;
  size_t size = r.scheduler_stack_size;
  r.from_scheduler = false;
#endif
  if (++r.position < r.ready.size()) {
    const int t = r.ready[r.position];
    Fiber& next = (*r.fibers)[size_t(t)];
    r.current = t;
    set_thread_index(t);
    target = &next.context;
#ifdef NCP_EMU_ASAN
    bottom = next.stack, size = kStackBytes;
#endif
  }
#ifdef NCP_EMU_ASAN
  __sanitizer_start_switch_fiber(finished ? nullptr : &f.fake_stack, bottom, size);
#else
  (void)finished;
#endif
  switch_context(f.context, *target);
#ifdef NCP_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

void release(BlockRun& r, std::vector<int>& waiters) {
  for (int t : waiters) r.next.push_back(t);
  waiters.clear();
}

void wait_at_warp_barrier(BlockRun& r) {
  const int warp = r.current / 32;
  std::vector<int>& waiters = r.warp_waiters[size_t(warp)];
  waiters.push_back(r.current);
  if (int(waiters.size()) == r.warp_live[size_t(warp)]) release(r, waiters);
  stop_current(r, false);
}

void fiber_main(void* run) {
  BlockRun& r = *static_cast<BlockRun*>(run);
#ifdef NCP_EMU_ASAN
  const void* from_bottom = nullptr;
  size_t from_size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &from_bottom, &from_size);
  if (r.from_scheduler) r.scheduler_stack_bottom = from_bottom, r.scheduler_stack_size = from_size;
#endif
  r.body(r.context);
  // Exited threads leave the barriers' counts: a barrier the others already wait at may now be complete.
  const int t = r.current, warp = t / 32;
  (*r.fibers)[size_t(t)].done = true;
  --r.live, --r.warp_live[size_t(warp)];
  if (!r.block_waiters.empty() && int(r.block_waiters.size()) == r.live) release(r, r.block_waiters);
  std::vector<int>& warp_waiters = r.warp_waiters[size_t(warp)];
  if (!warp_waiters.empty() && int(warp_waiters.size()) == r.warp_live[size_t(warp)]) release(r, warp_waiters);
  stop_current(r, true);
  die("a finished fiber was resumed");
}

void run_block(BlockRun& r) {
  std::vector<Fiber>& fibers = *r.fibers;
  r.ready.clear(), r.next.clear();
  for (int t = 0; t < r.threads; ++t) {
    Fiber& f = fibers[size_t(t)];
    if (!f.stack) {
      void* s = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (s == MAP_FAILED) die("cannot map a fiber stack");
      f.stack = static_cast<char*>(s);
    }
    f.done = false;
    make_context(f.context, f.stack, kStackBytes, &fiber_main, &r);
    r.ready.push_back(t);
  }
  r.live = r.threads;
  r.block_waiters.clear();
  r.warp_live.assign(size_t((r.threads + 31) / 32), 0);
  r.warp_waiters.resize(r.warp_live.size());
  for (auto& w : r.warp_waiters) w.clear();
  for (int t = 0; t < r.threads; ++t) ++r.warp_live[size_t(t / 32)];
  r.exchange_bank.assign(size_t(r.threads), 0);
  r.async.assign(size_t(r.threads), AsyncCopies{});  // copies never waited for end with their block
  bool ascending = true;
  while (r.live > 0) {
    if (r.ready.empty()) die("deadlock: every live thread waits at a barrier that can never complete");
    if (!ascending) std::reverse(r.ready.begin(), r.ready.end());
    start_round(r);
    std::swap(r.ready, r.next);
    r.next.clear();
    ascending = !ascending;
  }
}

}  // namespace

void block_barrier() {
  BlockRun* r = g_run;
  if (!r) die("__syncthreads outside a kernel");
  r->block_waiters.push_back(r->current);
  if (int(r->block_waiters.size()) == r->live) release(*r, r->block_waiters);
  stop_current(*r, false);
}

void warp_exchange(const void* in, void* out, size_t bytes, int src_lane) {
  BlockRun* r = g_run;
  if (!r || bytes > 16) die("warp shuffle outside a kernel, or of a type over 16 bytes");
  const int me = r->current, src = (me & ~31) | src_lane;
  if (src >= r->threads || (*r->fibers)[size_t(src)].done)
    die("warp shuffle reads a lane that does not exist or has exited");
  unsigned char& bank = r->exchange_bank[size_t(me)];
  std::memcpy(r->exchange[bank][me], in, bytes);
  wait_at_warp_barrier(*r);  // every lane has written
  std::memcpy(out, r->exchange[bank][src], bytes);
  bank ^= 1;
}

void warp_gather(const void* in, void* all, size_t bytes) {
  BlockRun* r = g_run;
  if (!r || bytes > kExchangeBytes) die("warp gather outside a kernel, or of more than 32 bytes a lane");
  const int me = r->current, base = me & ~31;
  if (base + 32 > r->threads) die("a warp-wide matrix instruction in a warp of fewer than 32 threads");
  // Checked on arrival: a lane that has passed this gather's barrier may exit before the others have read.
  for (int lane = 0; lane < 32; ++lane)
    if ((*r->fibers)[size_t(base + lane)].done) die("a warp-wide matrix instruction with an exited lane");
  unsigned char& bank = r->exchange_bank[size_t(me)];
  std::memcpy(r->exchange[bank][me], in, bytes);
  wait_at_warp_barrier(*r);  // every lane has written
  for (int lane = 0; lane < 32; ++lane)
    std::memcpy(static_cast<unsigned char*>(all) + size_t(lane) * bytes, r->exchange[bank][base + lane], bytes);
  bank ^= 1;
}

unsigned char* dynamic_shared() { return g_shared; }

std::atomic<uint64_t> g_cp_async_copies{0};

void cp_async(void* dst, const void* src, int src_bytes, int bytes) {
  ++g_cp_async_copies;
  BlockRun* r = g_run;
  if (!r) die("cp.async outside a kernel");
  if (src_bytes < 0 || src_bytes > bytes || (bytes != 4 && bytes != 8 && bytes != 16))
    die("cp.async of a size other than 4, 8 or 16 bytes, or with a source size past it");
  if (reinterpret_cast<uintptr_t>(dst) % size_t(bytes) || (src_bytes && reinterpret_cast<uintptr_t>(src) % size_t(bytes)))
    die("cp.async at an address not aligned to its size");
  const auto* d = static_cast<const unsigned char*>(dst);
  if (d < g_shared || d + bytes > g_shared + g_shared_bytes)
    die("cp.async into memory outside the block's shared memory");
  if (src_bytes && !device_range_ok(src, size_t(src_bytes))) die("cp.async reads outside every device allocation");
  r->async[size_t(r->current)].add(dst, src, src_bytes, bytes);
}

void cp_async_commit() {
  BlockRun* r = g_run;
  if (!r) die("cp.async.commit_group outside a kernel");
  r->async[size_t(r->current)].commit();
}

void cp_async_wait(int pending) {
  BlockRun* r = g_run;
  if (!r) die("cp.async.wait_group outside a kernel");
  r->async[size_t(r->current)].wait(pending);
}

void run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*body)(void*), void* context) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
    t_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (dynamic_shared_bytes > size_t(std::max(g_dynamic_shared_limit, 48 * 1024)) ||
      dynamic_shared_bytes > kMaxDynamicShared) {
    t_last_error = cudaErrorInvalidValue;  // what a launch over the kernel's shared-memory limit gets
    return;
  }
  thread_local bool launching = false;
  if (launching) die("a kernel launched from inside a kernel");
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  launching = true;
  if (g_shared_storage.size() < dynamic_shared_bytes + 128) g_shared_storage.resize(dynamic_shared_bytes + 128);
  g_shared = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(g_shared_storage.data()) + 127) &
                                              ~uintptr_t(127));
  g_shared_bytes = dynamic_shared_bytes;
  if (g_fibers.size() < threads) g_fibers.resize(threads);
  auto run = std::make_unique<BlockRun>();
  run->threads = int(threads);
  run->fibers = &g_fibers;
  run->body = body;
  run->context = context;
  gridDim = grid, blockDim = block;
  g_run = run.get();
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        run_block(*run);
      }
  g_run = nullptr;
  launching = false;
}

}  // namespace ncp_emu

void ncp_emu::fatal(const char* what) {
  if (g_run) die(what);  // inside a kernel: name the block
  std::fprintf(stderr, "ncp CUDA emulator: %s\n", what);
  std::abort();
}

void ncp_emu_wmma_violation() { ncp_emu::die("a WMMA call breaks the pointer alignment or leading-dimension rule"); }

// ---- runtime
namespace {
std::mutex g_memory_mutex;
std::map<const void*, size_t> g_allocations;
size_t g_allocated = 0;
int g_device = 0;

size_t host_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? size_t(pages) * size_t(page) : size_t(1) << 34;
}
// Whether [p, p + bytes) lies inside one allocation.
bool is_allocated_range(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  auto it = g_allocations.upper_bound(p);
  if (it == g_allocations.begin()) return false;
  --it;
  const char* begin = static_cast<const char*>(it->first);
  return static_cast<const char*>(p) + bytes <= begin + it->second;
}
cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) ncp_emu::t_last_error = e;
  return e;
}
// Device ranges must lie inside an allocation: a host pointer passed as a device one, or a copy past an
// allocation's end, is a bug the hardware would fault on.
cudaError_t check_device_range(const void* p, size_t bytes) {
  return bytes == 0 || is_allocated_range(p, bytes) ? cudaSuccess : record(cudaErrorInvalidValue);
}
}  // namespace

bool ncp_emu::device_range_ok(const void* p, size_t bytes) { return bytes == 0 || is_allocated_range(p, bytes); }

cudaError_t cudaGetDeviceCount(int* count) { return *count = 1, cudaSuccess; }
cudaError_t cudaGetDevice(int* device) { return *device = g_device, cudaSuccess; }
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : record(cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0) return record(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "ncp CUDA emulator on the CPU");
  p->totalGlobalMem = host_memory();
  p->major = 9, p->minor = 0, p->multiProcessorCount = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return record(cudaErrorInvalidDevice);
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return record(cudaErrorInvalidValue);
  *value = int(ncp_emu::kMaxDynamicShared);
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) { return *v = CUDART_VERSION, cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int* v) { return *v = CUDART_VERSION, cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  *total_bytes = host_memory();
  *free_bytes = *total_bytes > g_allocated ? *total_bytes - g_allocated : 0;
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  // NCP_CUDA_EMU_MEMORY caps the emulated device, so out-of-memory paths can be tested.
  static const size_t cap = [] {
    const char* env = std::getenv("NCP_CUDA_EMU_MEMORY");
    return env ? size_t(std::strtoull(env, nullptr, 10)) : host_memory();
  }();
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  if (g_allocated + bytes > cap) return record(cudaErrorMemoryAllocation);
  // 256-byte aligned like cudaMalloc, but not rounded up: under AddressSanitizer a kernel that reads or writes past
  // the size asked for is reported.
  void* p = nullptr;
  if (posix_memalign(&p, 256, std::max<size_t>(bytes, 1)) != 0) return record(cudaErrorMemoryAllocation);
  g_allocations[p] = bytes, g_allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  auto it = g_allocations.find(ptr);
  if (it == g_allocations.end()) return record(cudaErrorInvalidValue);
  g_allocated -= it->second;
  g_allocations.erase(it);
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_dev && check_device_range(dst, bytes)) || (src_dev && check_device_range(src, bytes)))
    return cudaErrorInvalidValue;
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  if (check_device_range(ptr, bytes)) return cudaErrorInvalidValue;
  if (bytes) std::memset(ptr, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
struct CUevent_st {
  std::chrono::steady_clock::time_point at;
  bool recorded = false;
};
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (!event) return cudaErrorInvalidValue;
  *event = new CUevent_st();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (!event) return cudaErrorInvalidValue;
  event->at = std::chrono::steady_clock::now();
  event->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) { return event ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaEventSynchronize(cudaEvent_t event) { return event ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms || !start || !end || !start->recorded || !end->recorded) return cudaErrorInvalidValue;
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = ncp_emu::t_last_error;
  ncp_emu::t_last_error = cudaSuccess;
  return e;
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulator: also a device pointer outside every allocation)";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return cudaGetErrorName(e);
  }
}
cudaError_t ncp_emu_set_dynamic_shared_limit(int bytes) {
  if (bytes < 0 || size_t(bytes) > ncp_emu::kMaxDynamicShared) return record(cudaErrorInvalidValue);
  ncp_emu::g_dynamic_shared_limit = std::max(ncp_emu::g_dynamic_shared_limit, bytes);
  return cudaSuccess;
}

// For tests: how many cp.async copies kernels have issued so far (whether a launch took the double-buffered path).
extern "C" __attribute__((visibility("default"))) uint64_t ncp_emu_cp_async_copies() {
  return ncp_emu::g_cp_async_copies.load();
}
