// Half-precision weights used in place (cpu::WeightRef): the linear and conv ops and gemm_w on F16/BF16 weights
// must give exactly the float32 ops' results on the widened weights, on every GEMM backend, for edge-sized
// panels, several k blocks, the batched and per-image conv paths, both data-gradient paths (stride 1 and 2),
// and weights at an odd byte address (a tensor inside a safetensors file need not be aligned).
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/gemm_dispatch.h"
#include "cpu/ops.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using ncp::DType;
using ncp::cpu::Conv2dShape;
using ncp::cpu::GemmBackend;
using ncp::cpu::WeightRef;

// n weights rounded to `dt`, stored from byte `offset` of the buffer (1: every value misaligned), and their
// exact float32 widening.
struct HalfWeights {
  std::vector<unsigned char> bytes;
  std::vector<float> widened;
  WeightRef ref;
  HalfWeights(int64_t n, DType dt, uint64_t seed, size_t offset) : bytes(size_t(2 * n) + offset + 16) {
    std::vector<float> w(static_cast<size_t>(n));
    fill_uniform(w, seed, -0.5, 0.5);
    ncp::convert_from_f32(bytes.data() + offset, w.data(), dt, n);
    widened.resize(size_t(n));
    ncp::convert_to_f32(widened.data(), bytes.data() + offset, dt, n);
    ref = WeightRef(bytes.data() + offset, dt);
  }
};

bool same(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The backends to run on, each with the own-kernel backend whose float results the half path must equal
// (OpenBLAS cannot read halves, so under it half weights take ncp's kernels of the CPU's best ISA).
struct BackendCase {
  GemmBackend backend, reference;
  const char* name;
};
std::vector<BackendCase> backends() {
  std::vector<BackendCase> out;
  const bool avx512 = ncp::cpu::set_gemm_backend(GemmBackend::OwnAvx512);
  if (avx512) out.push_back({GemmBackend::OwnAvx512, GemmBackend::OwnAvx512, "avx512"});
  out.push_back({GemmBackend::OwnAvx2, GemmBackend::OwnAvx2, "avx2"});
  if (ncp::cpu::set_gemm_backend(GemmBackend::OpenBLAS))
    out.push_back({GemmBackend::OpenBLAS, avx512 ? GemmBackend::OwnAvx512 : GemmBackend::OwnAvx2, "openblas"});
  ncp::cpu::set_gemm_backend(GemmBackend::Auto);
  return out;
}

struct RestoreBackend {
  ~RestoreBackend() { ncp::cpu::set_gemm_backend(GemmBackend::Auto); }
};

NCP_TEST("half weights: linear forward and input gradient equal float32 on the widened weights, bit for bit") {
  RestoreBackend restore;
  struct Shape {
    int64_t rows, in, out;
  };
  // Edges of every tile, a threaded size, and in > kc (several k blocks).
  const Shape shapes[] = {{1, 3, 5}, {37, 129, 70}, {600, 96, 80}, {33, 1100, 40}};
  for (const BackendCase& bc : backends())
    for (const DType dt : {DType::F16, DType::BF16})
      for (const size_t offset : {size_t(0), size_t(1)})
        for (const Shape& s : shapes) {
          const std::string what = std::string(bc.name) + " " + ncp::dtype_name(dt) + " offset " +
                                   std::to_string(offset) + " " + std::to_string(s.rows) + "x" +
                                   std::to_string(s.in) + "->" + std::to_string(s.out);
          const HalfWeights W(s.out * s.in, dt, 7 + uint64_t(s.in), offset);
          std::vector<float> x(static_cast<size_t>(s.rows * s.in)), b(static_cast<size_t>(s.out)),
              dy(static_cast<size_t>(s.rows * s.out));
          fill_uniform(x, 1), fill_uniform(b, 2), fill_uniform(dy, 3);
          std::vector<float> y(dy.size()), y_ref(dy.size()), dx(x.size(), 0.25f), dx_ref(x.size(), 0.25f);

          ncp::cpu::set_gemm_backend(bc.reference);
          ncp::cpu::linear_forward<float>(y_ref.data(), x.data(), W.widened.data(), b.data(), s.rows, s.in, s.out);
          ncp::cpu::linear_backward<float>(dx_ref.data(), nullptr, nullptr, dy.data(), nullptr, W.widened.data(),
                                           s.rows, s.in, s.out);
          ncp::cpu::set_gemm_backend(bc.backend);
          ncp::cpu::linear_forward_w(y.data(), x.data(), W.ref, b.data(), s.rows, s.in, s.out);
          ncp::cpu::linear_backward_input_w(dx.data(), dy.data(), W.ref, s.rows, s.in, s.out);
          NCP_EXPECT(same(y, y_ref), what << " forward rel err " << rel_error(y.data(), y_ref.data(), int64_t(y.size())));
          NCP_EXPECT(same(dx, dx_ref),
                     what << " backward rel err " << rel_error(dx.data(), dx_ref.data(), int64_t(dx.size())));
        }
}

NCP_TEST("half weights: conv2d forward and input gradient equal float32 on the widened weights, bit for bit") {
  RestoreBackend restore;
  const Conv2dShape shapes[] = {
      {2, 3, 9, 7, 5, 3, 1, 1},    // odd everything, per-image GEMMs
      {2, 16, 8, 8, 24, 3, 2, 1},  // stride 2: the data gradient goes through gemm_w with W as A^T
      {2, 8, 5, 5, 6, 1, 1, 0},    // 1x1
      {2, 64, 4, 4, 32, 3, 1, 1},  // deep and small: the whole batch in one GEMM
  };
  for (const BackendCase& bc : backends())
    for (const DType dt : {DType::F16, DType::BF16})
      for (const size_t offset : {size_t(0), size_t(1)})
        for (const Conv2dShape& s : shapes) {
          const std::string what = std::string(bc.name) + " " + ncp::dtype_name(dt) + " offset " +
                                   std::to_string(offset) + " Cin " + std::to_string(s.Cin) + " Cout " +
                                   std::to_string(s.Cout) + " k " + std::to_string(s.k) + " stride " +
                                   std::to_string(s.stride);
          const HalfWeights W(s.Cout * s.Cin * s.k * s.k, dt, 11 + uint64_t(s.Cin), offset);
          const int64_t nx = s.N * s.Cin * s.H * s.W, ny = s.N * s.Cout * s.Ho() * s.Wo();
          std::vector<float> x(static_cast<size_t>(nx)), b(static_cast<size_t>(s.Cout)), dy(static_cast<size_t>(ny));
          fill_uniform(x, 4), fill_uniform(b, 5), fill_uniform(dy, 6);
          std::vector<float> y(dy.size()), y_ref(dy.size()), dx(x.size(), -0.5f), dx_ref(x.size(), -0.5f);

          ncp::cpu::set_gemm_backend(bc.reference);
          ncp::cpu::conv2d_forward<float>(y_ref.data(), x.data(), W.widened.data(), b.data(), s);
          ncp::cpu::conv2d_backward<float>(dx_ref.data(), nullptr, nullptr, dy.data(), x.data(), W.widened.data(), s);
          ncp::cpu::set_gemm_backend(bc.backend);
          ncp::cpu::conv2d_forward_w(y.data(), x.data(), W.ref, b.data(), s);
          ncp::cpu::conv2d_backward_input_w(dx.data(), dy.data(), W.ref, s);
          NCP_EXPECT(same(y, y_ref), what << " forward rel err " << rel_error(y.data(), y_ref.data(), int64_t(y.size())));
          NCP_EXPECT(same(dx, dx_ref),
                     what << " backward rel err " << rel_error(dx.data(), dx_ref.data(), int64_t(dx.size())));
        }
}

NCP_TEST("half weights: gemm_w with either operand half, transposed or not, equals gemm on the widened values") {
  RestoreBackend restore;
  const int64_t M = 45, N = 38, K = 530;  // edges on M and N, two k blocks
  for (const BackendCase& bc : backends())
    for (const DType dt : {DType::F16, DType::BF16})
      for (const bool half_a : {false, true})
        for (const bool ta : {false, true})
          for (const bool tb : {false, true}) {
            const std::string what = std::string(bc.name) + " " + ncp::dtype_name(dt) + (half_a ? " A" : " B") +
                                     " half, ta " + std::to_string(ta) + " tb " + std::to_string(tb);
            const HalfWeights H(half_a ? M * K : K * N, dt, 21, 1);
            std::vector<float> F(static_cast<size_t>(half_a ? K * N : M * K));
            fill_uniform(F, 22);
            const int64_t lda = ta ? M : K, ldb = tb ? K : N;
            std::vector<float> C(static_cast<size_t>(M * N)), C_ref;
            fill_uniform(C, 23);
            C_ref = C;
            const float* A32 = half_a ? H.widened.data() : F.data();
            const float* B32 = half_a ? F.data() : H.widened.data();
            ncp::cpu::set_gemm_backend(bc.reference);
            ncp::cpu::gemm<float>(ta, tb, M, N, K, 0.75f, A32, lda, B32, ldb, 0.5f, C_ref.data(), N);
            ncp::cpu::set_gemm_backend(bc.backend);
            const WeightRef A = half_a ? H.ref : WeightRef(F.data()), B = half_a ? WeightRef(F.data()) : H.ref;
            ncp::cpu::gemm_w(ta, tb, M, N, K, 0.75f, A, lda, B, ldb, 0.5f, C.data(), N);
            NCP_EXPECT(same(C, C_ref), what << " rel err " << rel_error(C.data(), C_ref.data(), M * N));
          }
}

NCP_TEST("half weights: a weight dtype the packers do not read is an NCP_EDTYPE error naming the op") {
  std::vector<double> w(6);
  std::vector<float> x(4), y(6);
  try {
    ncp::cpu::linear_forward_w(y.data(), x.data(), WeightRef(w.data(), DType::F64), nullptr, 2, 2, 3);
    NCP_EXPECT(false, "F64 weights accepted");
  } catch (const ncp::Error& e) {
    const std::string m = e.what();
    NCP_EXPECT(e.code() == "NCP_EDTYPE" && m.find("gemm") != std::string::npos && m.find("F64") != std::string::npos,
               e.code() << " " << m);
  }
}

}  // namespace
