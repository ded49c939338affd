// dlopen/dlsym of the few cuBLAS v2 entry points we use. Their C ABI (cublas_api.h) has not changed from
// cuBLAS 11 to 13, so the prototypes are declared here instead of including the headers.
#include "cuda/cublas_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <string>

#ifdef NCP_CUDA_EMULATED
#include "cuda_emu/cublas_emu.h"
#endif

namespace ncp::cuda::cublas {
namespace {

using Handle = void*;
constexpr int kOpN = 0, kOpT = 1;                 // cublasOperation_t
constexpr int kDefaultMath = 0, kTf32Math = 3;    // cublasMath_t: CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH
using CreateFn = int (*)(Handle*);
using GetVersionFn = int (*)(Handle, int*);
using SetMathModeFn = int (*)(Handle, int);
using SgemmFn = int (*)(Handle, int, int, int, int, int, const float*, const float*, int, const float*, int,
                        const float*, float*, int);
using SgemmStridedBatchedFn = int (*)(Handle, int, int, int, int, int, const float*, const float*, int, long long,
                                      const float*, int, long long, const float*, float*, int, long long, int);
// cublasGemmStridedBatchedEx: cudaDataType_t and cublasComputeType_t are plain enums (ints) in the C ABI.
using GemmStridedBatchedExFn = int (*)(Handle, int, int, int, int, int, const void*, const void*, int, int, long long,
                                       const void*, int, int, long long, const void*, void*, int, int, long long, int,
                                       int, int);
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;  // cudaDataType_t: CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF
constexpr int kCompute32F = 68;        // cublasComputeType_t: CUBLAS_COMPUTE_32F
constexpr int kGemmDefault = -1;       // cublasGemmAlgo_t: CUBLAS_GEMM_DEFAULT

struct Library {
  bool ok = false;
  bool tf32 = false;
  std::string description;
  Handle handle = nullptr;
  SetMathModeFn set_math_mode = nullptr;
  SgemmFn sgemm = nullptr;
  SgemmStridedBatchedFn sgemm_strided_batched = nullptr;
  GemmStridedBatchedExFn gemm_ex = nullptr;  // optional: bf16 and fp16 GEMMs only
};

// Creates the handle and reads the version through the entry points found; ok when every step succeeded.
void start(Library& lib, CreateFn create, GetVersionFn get_version, const std::string& soname) {
  if (!create || !get_version || !lib.set_math_mode || !lib.sgemm || !lib.sgemm_strided_batched) {
    lib.description = soname + " lacks a cuBLAS v2 entry point we need";
    return;  // the library stays open: unloading cuBLAS mid-process is not worth the risk
  }
  int st = create(&lib.handle);
  if (st != 0) {
    lib.description = soname + ": cublasCreate failed with status " + std::to_string(st);
    return;
  }
  if ((st = lib.set_math_mode(lib.handle, kDefaultMath)) != 0) {
    lib.description = soname + ": cublasSetMathMode failed with status " + std::to_string(st);
    return;
  }
  int version = 0;
  get_version(lib.handle, &version);
  lib.description = "cublas " + std::to_string(version / 10000) + "." + std::to_string(version % 10000 / 100) + "." +
                    std::to_string(version % 100) + " (" + soname + ")";
  lib.ok = true;
}

Library open_library() {
  Library lib;
#ifdef NCP_CUDA_EMULATED
  // The emulator's device pointers are host memory: no real cuBLAS may see them. Its own cuBLAS on the CPU
  // (native/cuda_emu/cublas_emu.cpp) stands in, so the path a GPU takes is the one emulated;
  // NCP_CUDA_EMU_CUBLAS=0 leaves the backend on its own GEMM kernels, as on a machine without cuBLAS.
  const char* use = std::getenv("NCP_CUDA_EMU_CUBLAS");
  if (use && std::string(use) == "0") {
    lib.description = "cuBLAS turned off in the CUDA emulator (NCP_CUDA_EMU_CUBLAS=0)";
    return lib;
  }
  lib.set_math_mode = &ncp_emu::cublas::set_math_mode;
  lib.sgemm = &ncp_emu::cublas::sgemm;
  lib.sgemm_strided_batched = &ncp_emu::cublas::sgemm_strided_batched;
  lib.gemm_ex = &ncp_emu::cublas::gemm_strided_batched_ex;
  start(lib, &ncp_emu::cublas::create, &ncp_emu::cublas::get_version, "emulated");
  if (lib.ok) lib.description = "cublas emulated on the CPU (native/cuda_emu/cublas_emu.cpp)";
  return lib;
#else
  std::string tried;
  void* so = nullptr;
  std::string soname;
  const char* env = std::getenv("NCP_CUBLAS_LIB");
  std::string candidates[] = {env && *env ? env : "", "libcublas.so.13", "libcublas.so.12", "libcublas.so.11"};
  for (const std::string& name : candidates) {
    if (name.empty()) continue;
    so = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (so) {
      soname = name;
      break;
    }
    const char* why = dlerror();
    tried += (tried.empty() ? "" : "; ") + std::string(why ? why : name.c_str());
  }
  if (!so) {
    lib.description = "cuBLAS not found: " + tried;
    return lib;
  }
  auto create = reinterpret_cast<CreateFn>(dlsym(so, "cublasCreate_v2"));
  auto get_version = reinterpret_cast<GetVersionFn>(dlsym(so, "cublasGetVersion_v2"));
  lib.set_math_mode = reinterpret_cast<SetMathModeFn>(dlsym(so, "cublasSetMathMode"));
  lib.sgemm = reinterpret_cast<SgemmFn>(dlsym(so, "cublasSgemm_v2"));
  lib.sgemm_strided_batched = reinterpret_cast<SgemmStridedBatchedFn>(dlsym(so, "cublasSgemmStridedBatched"));
  lib.gemm_ex = reinterpret_cast<GemmStridedBatchedExFn>(dlsym(so, "cublasGemmStridedBatchedEx"));
  start(lib, create, get_version, soname);
  return lib;
#endif
}

Library& library() {
  static Library lib = open_library();
  return lib;
}

}  // namespace

bool available() { return library().ok; }
const char* description() { return library().description.c_str(); }
bool tf32() { return library().tf32; }

void set_tf32(bool allow) {
  Library& lib = library();
  if (!lib.ok || lib.tf32 == allow) return;
  if (lib.set_math_mode(lib.handle, allow ? kTf32Math : kDefaultMath) == 0) lib.tf32 = allow;
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands and M with N.
int sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, long long stride_a,
          const float* B, int ldb, long long stride_b, float beta, float* C, int ldc, long long stride_c, int batch) {
  Library& lib = library();
  const int op_a = trans_a ? kOpT : kOpN, op_b = trans_b ? kOpT : kOpN;
  if (batch == 1) return lib.sgemm(lib.handle, op_b, op_a, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc);
  return lib.sgemm_strided_batched(lib.handle, op_b, op_a, N, M, K, &alpha, B, ldb, stride_b, A, lda, stride_a,
                                   &beta, C, ldc, stride_c, batch);
}

bool half_available() { return library().ok && library().gemm_ex != nullptr; }

int gemm_half(bool fp16, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const void* A, int lda,
              long long stride_a, const void* B, int ldb, long long stride_b, float beta, float* C, int ldc,
              long long stride_c, int batch) {
  Library& lib = library();
  const int op_a = trans_a ? kOpT : kOpN, op_b = trans_b ? kOpT : kOpN, type = fp16 ? kR16F : kR16BF;
  return lib.gemm_ex(lib.handle, op_b, op_a, N, M, K, &alpha, B, type, ldb, stride_b, A, type, lda, stride_a, &beta,
                     C, kR32F, ldc, stride_c, batch, kCompute32F, kGemmDefault);
}

}  // namespace ncp::cuda::cublas
