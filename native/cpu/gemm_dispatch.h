// Which implementation serves ncp::cpu::gemm. The rule: NCP_GEMM=own|openblas when set (and available),
// else ncp's AVX-512 kernels when the CPU has AVX-512 (faster here than OpenBLAS, which this workplace pins
// to its Haswell kernels), else OpenBLAS when linked, else ncp's AVX2 kernels.
#pragma once

namespace ncp::cpu {

enum class GemmBackend { Auto, OwnAvx512, OwnAvx2, OpenBLAS };

// Forces a backend (tests and benchmarks). OwnAvx512 / OwnAvx2 pick the ISA of ncp's kernels for float and
// double; OpenBLAS applies to float (double always runs ncp's kernels at the best ISA). Auto restores the
// rule above. Returns false, changing nothing, when the backend is not available in this build or CPU.
bool set_gemm_backend(GemmBackend b);
// The backend in use (never Auto).
GemmBackend gemm_backend();

}  // namespace ncp::cpu
