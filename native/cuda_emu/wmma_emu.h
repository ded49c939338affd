// nvcuda::wmma for kernels compiled as C++ on the CPU: a fragment holds its whole 16x16 tile and lane 0 of the
// warp does the fragment's work (the other lanes' fragments are never read: all data leave through
// store_matrix_sync). Every call checks what the hardware requires of pointers (32-byte alignment) and leading
// dimensions, and reports a breach through ncp_emu_wmma_violation(), which the including emulator defines.
// Needs threadIdx, __nv_bfloat16 and __bfloat162float declared first.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

void ncp_emu_wmma_violation();

namespace nvcuda::wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float x[16][16];
};

inline bool lane0() { return (threadIdx.x & 31) == 0; }
inline void require(const void* p, unsigned ld, unsigned ld_multiple) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || ld % ld_multiple != 0) ncp_emu_wmma_violation();
}

template <class Use, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p, unsigned ld) {
  if (!lane0()) return;
  require(p, ld, 8);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r][c] = __bfloat162float(p[std::is_same_v<Layout, row_major> ? r * ld + c : r + c * ld]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ld, layout_t l) {
  if (!lane0()) return;
  require(p, ld, 4);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r][c] = p[l == mem_row_major ? r * ld + c : r + c * ld];
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  if (!lane0()) return;
  for (auto& row : f.x)
    for (float& e : row) e = v;
}
template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  if (!lane0()) return;
  float out[16][16];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float s = c.x[r][n];
      for (int k = 0; k < 16; ++k) s += a.x[r][k] * b.x[k][n];
      out[r][n] = s;
    }
  std::memcpy(d.x, out, sizeof out);
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ld, layout_t l) {
  if (!lane0()) return;
  require(p, ld, 4);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) p[l == mem_row_major ? r * ld + c : r + c * ld] = f.x[r][c];
}
}  // namespace nvcuda::wmma
