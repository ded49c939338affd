// Conv2d as GEMM on ncp's blocked kernels (gemm_driver.h) with an implicit im2col: the packers gather the
// column matrix straight from the images, so it is never materialised.
//  - forward: y[n] = W[Cout, Cin k k] col(x[n]);
//  - weight gradient: dW += dy[Cout, (n, q)] col(x)^T, one GEMM whose k dimension runs over the whole batch;
//  - data gradient, stride 1: a forward convolution of dy with the flipped, channel-transposed kernel and
//    padding k - 1 - pad; stride 2: dcol = W^T dy[n] (gemm) scattered back by col2im.
#include <algorithm>
#include <string>

#include "core/error.h"
#include "core/threads.h"
#include "cpu/gemm_own.h"
#include "cpu/half_load.h"
#include "cpu/ops.h"

namespace ncp::cpu {
namespace {
using gemm_detail::Blocking;
using gemm_detail::MicroKernel;
using gemm_detail::pack_panels;
using gemm_detail::Scratch;

int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -(-a / b); }

// The column matrix of images for a k x k window: row r = (c, kh, kw) of C k k, column q = (n, oh, ow) of
// batch Ho Wo, col[r][q] = img[n, c, oh stride + kh + shift, ow stride + kw + shift]. img [batch, C, Hp, Wp] is
// padded (make_columns) so that every window lies inside it: the packers copy runs without bounds checks.
template <class T>
struct Columns {
  const T* img;
  int64_t C, Hp, Wp, k, stride, shift, Ho, Wo;

  int64_t rows() const { return C * k * k; }
  const T* at(int64_t n, int64_t c, int64_t kh, int64_t kw, int64_t oh, int64_t ow) const {
    return img + ((n * C + c) * Hp + oh * stride + kh + shift) * Wp + ow * stride + kw + shift;
  }
  Columns image(int64_t n) const {
    Columns one = *this;
    one.img = img + n * C * Hp * Wp;
    return one;
  }

  // d[t] = col[r][q0 + t] for t < count: one copy per run of columns on the same output row.
  void gather_row(int64_t r, int64_t q0, int64_t count, T* d) const {
    const int64_t c = r / (k * k), kh = r / k % k, kw = r % k, HoWo = Ho * Wo;
    int64_t n = q0 / HoWo, oh = q0 % HoWo / Wo, ow = q0 % Wo;
    for (int64_t t = 0; t < count;) {
      const int64_t len = std::min(count - t, Wo - ow);
      const T* src = at(n, c, kh, kw, oh, ow);
      if (stride == 1)
        std::copy(src, src + len, d + t);
      else
        for (int64_t i = 0; i < len; ++i) d[t + i] = src[i * stride];
      t += len;
      ow = 0;
      if (++oh == Ho) oh = 0, ++n;
    }
  }

  // B packer for col[p0 : p0+kc, j0 : j0+cols] (see gemm_driver.h). The (n, oh, ow) runs of a panel are
  // found once and reused for every row, whose (c, kh, kw) advances without divisions.
  template <int NR>
  void pack(T* dst, int64_t j0, int64_t cols, int64_t p0, int64_t kc) const {
    struct Run {
      int64_t t, n, oh, ow, len;
    };
    const int64_t HoWo = Ho * Wo;
    for (int64_t j = 0; j < cols; j += NR, dst += NR * kc) {
      const int64_t width = std::min<int64_t>(NR, cols - j);
      Run runs[NR];
      int nruns = 0;
      for (int64_t t = 0, q = j0 + j; t < width; ++nruns) {
        const int64_t ow = q % Wo, len = std::min(width - t, Wo - ow);
        runs[nruns] = {t, q / HoWo, q % HoWo / Wo, ow, len};
        t += len;
        q += len;
      }
      const bool one_row = nruns == 1 && width == NR && stride == 1;  // the common case: Wo a multiple of NR
      int64_t c = p0 / (k * k), kh = p0 / k % k, kw = p0 % k;
      for (int64_t p = 0; p < kc; ++p) {
        T* d = dst + p * NR;
        if (one_row) {
          const T* src = at(runs[0].n, c, kh, kw, runs[0].oh, runs[0].ow);
          for (int i = 0; i < NR; ++i) d[i] = src[i];
        } else {
          for (int i = 0; i < nruns; ++i) {
            const Run& u = runs[i];
            const T* src = at(u.n, c, kh, kw, u.oh, u.ow);
            for (int64_t t = 0; t < u.len; ++t) d[u.t + t] = src[t * stride];
          }
          std::fill(d + width, d + NR, T(0));
        }
        if (++kw == k) {
          kw = 0;
          if (++kh == k) kh = 0, ++c;
        }
      }
    }
  }
};

// Columns of img [batch, C, H, W] for a k x k window with stride and zero padding `pad`. A positive pad is
// materialised into `padded` once (an input-sized copy, cheap next to the GEMM); pad <= 0 (the stride-1 data
// gradient of a conv with pad > k - 1) only crops, so the window stays inside the image and just shifts.
template <class T>
Columns<T> make_columns(const T* img, int64_t batch, int64_t C, int64_t H, int64_t W, int64_t k, int64_t stride,
                        int64_t pad, Scratch<T>& padded) {
  const int64_t Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
  if (pad <= 0) return {img, C, H, W, k, stride, -pad, Ho, Wo};
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad;
  T* out = padded.get(batch * C * Hp * Wp);
  parallel_for(batch * C, std::max<int64_t>(1, 4096 / (Hp * Wp)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      T* plane = out + i * Hp * Wp;
      std::fill(plane, plane + pad * Wp, T(0));
      for (int64_t h = 0; h < H; ++h) {
        T* row = plane + (h + pad) * Wp;
        std::fill(row, row + pad, T(0));
        std::copy(img + (i * H + h) * W, img + (i * H + h + 1) * W, row + pad);
        std::fill(row + pad + W, row + Wp, T(0));
      }
      std::fill(plane + (H + pad) * Wp, plane + Hp * Wp, T(0));
    }
  });
  return {out, C, Hp, Wp, k, stride, 0, Ho, Wo};
}

// C[M, cols] = beta C + A[M, K] col (K = col rows, lda = K) on ncp's kernels. SA: A's stored type (T, or
// F16/BF16 weights widened while packing).
template <class T, class SA>
void gemm_with_columns(T* C, int64_t ldc, int64_t M, const SA* A, const Columns<T>& col, int64_t cols, T beta) {
  const int64_t K = col.rows();
  gemm_detail::with_own_kernel<T>([&](auto mr, auto nr, MicroKernel<T> ukr, const Blocking& bk) {
    constexpr int MR = decltype(mr)::value, NR = decltype(nr)::value;
    auto pack_a = [&](T* dst, int64_t i0, int64_t rows, int64_t p0, int64_t kc) {
      pack_panels<MR>(dst, MR * kc, A + i0 * K + p0, K, 1, rows, kc, T(1));
    };
    auto pack_b = [&](T* dst, int64_t j0, int64_t n, int64_t p0, int64_t kc) {
      col.template pack<NR>(dst, j0, n, p0, kc);
    };
    gemm_detail::blocked_gemm<T, MR, NR>(M, cols, K, pack_a, pack_b, beta, C, ldc, ukr, bk, num_threads());
  });
}

// out[n, m, q] (+)= sum_r A[m, r] col[r, (n, q)] (+ bias[m]) for every image n of the batch. One GEMM per
// image repacks A (M x K) each time; one GEMM over the whole batch packs it once but stages its output
// (M x HoWo per image) through a copy, which costs about as much per element as packing ~4 of A's: so the
// batch goes in one GEMM when A's rows are much longer than an image (deep, low-resolution layers).
template <class T, class SA>
void conv_as_gemm(T* out, bool accumulate, const T* bias, const SA* A, int64_t M, const Columns<T>& col,
                  int64_t batch) {
  const int64_t HoWo = col.Ho * col.Wo;
  if (batch > 1 && col.rows() >= 4 * HoWo) {
    static thread_local Scratch<T> staging;
    T* tmp = staging.get(M * batch * HoWo);
    gemm_with_columns(tmp, batch * HoWo, M, A, col, batch * HoWo, T(0));
    parallel_for(batch * M, std::max<int64_t>(1, 4096 / HoWo), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = i / M, m = i % M;
        const T* src = tmp + m * batch * HoWo + n * HoWo;
        const T b = bias ? bias[m] : T(0);
        T* o = out + i * HoWo;
        for (int64_t q = 0; q < HoWo; ++q) o[q] = (accumulate ? o[q] : T(0)) + src[q] + b;
      }
    });
    return;
  }
  for (int64_t n = 0; n < batch; ++n)
    gemm_with_columns(out + n * M * HoWo, HoWo, M, A, col.image(n), HoWo, accumulate ? T(1) : T(0));
  if (bias)
    parallel_for(batch * M, std::max<int64_t>(1, 4096 / HoWo), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t q = 0; q < HoWo; ++q) out[i * HoWo + q] += bias[i % M];
    });
}

void check_shape(const Conv2dShape& s, const char* op) {
  const auto dims = "[N=" + std::to_string(s.N) + ", Cin=" + std::to_string(s.Cin) + ", H=" + std::to_string(s.H) +
                    ", W=" + std::to_string(s.W) + ", Cout=" + std::to_string(s.Cout) + ", k=" + std::to_string(s.k) +
                    ", stride=" + std::to_string(s.stride) + ", pad=" + std::to_string(s.pad) + "]";
  check(s.N > 0 && s.Cin > 0 && s.H > 0 && s.W > 0 && s.Cout > 0 && s.k > 0 && s.stride > 0 && s.pad >= 0,
        "NCP_EINVAL", std::string(op) + ": invalid conv2d shape " + dims);
  check(s.H + 2 * s.pad >= s.k && s.W + 2 * s.pad >= s.k, "NCP_EINVAL",
        std::string(op) + ": kernel larger than the padded input " + dims);
}

// dx[n] += col2im(dcol): every (c, kh, kw) row of dcol adds back onto the input pixels it was gathered from.
template <class T>
void col2im_add(T* dx, const T* dcol, const Conv2dShape& s) {
  const int64_t k = s.k, Ho = s.Ho(), Wo = s.Wo();
  parallel_for(s.Cin, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t kh = 0; kh < k; ++kh)
        for (int64_t kw = 0; kw < k; ++kw) {
          const T* src = dcol + ((c * k + kh) * k + kw) * Ho * Wo;
          const int64_t iw0 = kw - s.pad;
          const int64_t lo = std::clamp<int64_t>(ceil_div(-iw0, s.stride), 0, Wo);
          const int64_t hi = std::clamp<int64_t>(ceil_div(s.W - iw0, s.stride), lo, Wo);
          for (int64_t oh = 0; oh < Ho; ++oh) {
            const int64_t ih = oh * s.stride - s.pad + kh;
            if (ih < 0 || ih >= s.H) continue;
            T* row = dx + (c * s.H + ih) * s.W + iw0;
            for (int64_t ow = lo; ow < hi; ++ow) row[ow * s.stride] += src[oh * Wo + ow];
          }
        }
  });
}

template <class T, class SW>
void forward_impl(T* y, const T* x, const SW* W, const T* b, const Conv2dShape& s) {
  check_shape(s, "conv2d_forward");
  static thread_local Scratch<T> padded;
  const auto col = make_columns(x, s.N, s.Cin, s.H, s.W, s.k, s.stride, s.pad, padded);
  conv_as_gemm(y, false, b, W, s.Cout, col, s.N);
}

// dx += conv^T dy. SW: W's stored type (T, or F16/BF16 for float).
template <class T, class SW>
void backward_input_impl(T* dx, const T* dy, const SW* W, const Conv2dShape& s) {
  const int64_t k = s.k, kk = k * k, Ho = s.Ho(), Wo = s.Wo(), HoWo = Ho * Wo, K = s.Cin * kk;
  auto w = [&](int64_t i) -> T {
    if constexpr (kIsHalf<SW>)
      return load_f32(W + i);
    else
      return W[i];
  };
  if (s.stride == 1) {
    // dx[ci, i, j] = sum_{co, kh, kw} dy[co, i + pad - kh, j + pad - kw] W[co, ci, kh, kw]: a convolution of dy
    // (padding k - 1 - pad) with Wt[ci, (co, kh', kw')] = W[co, ci, k-1-kh', k-1-kw'].
    static thread_local Scratch<T> flipped;
    T* Wt = flipped.get(s.Cin * s.Cout * kk);
    parallel_for(s.Cin, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ci = c0; ci < c1; ++ci)
        for (int64_t co = 0; co < s.Cout; ++co)
          for (int64_t r = 0; r < kk; ++r) Wt[(ci * s.Cout + co) * kk + r] = w((co * s.Cin + ci) * kk + kk - 1 - r);
    });
    static thread_local Scratch<T> padded;
    const auto col = make_columns(dy, s.N, s.Cout, Ho, Wo, k, int64_t(1), k - 1 - s.pad, padded);
    conv_as_gemm(dx, true, static_cast<const T*>(nullptr), static_cast<const T*>(Wt), s.Cin, col, s.N);
    return;
  }
  static thread_local Scratch<T> columns;
  T* dcol = columns.get(K * HoWo);
  for (int64_t n = 0; n < s.N; ++n) {
    if constexpr (kIsHalf<SW>)
      gemm_w(true, false, K, HoWo, s.Cout, 1.0f, WeightRef(W, stored_dtype<SW>()), K, dy + n * s.Cout * HoWo, HoWo,
             0.0f, dcol, HoWo);
    else
      gemm<T>(true, false, K, HoWo, s.Cout, T(1), W, K, dy + n * s.Cout * HoWo, HoWo, T(0), dcol, HoWo);
    col2im_add(dx + n * s.Cin * s.H * s.W, dcol, s);
  }
}

}  // namespace

template <class T>
void conv2d_forward(T* y, const T* x, const T* W, const T* b, const Conv2dShape& s) {
  forward_impl(y, x, W, b, s);
}

void conv2d_forward_w(float* y, const float* x, WeightRef W, const float* b, const Conv2dShape& s) {
  with_stored_type(W, "conv2d_forward", [&](auto w) { forward_impl(y, x, w, b, s); });
}

void conv2d_backward_input_w(float* dx, const float* dy, WeightRef W, const Conv2dShape& s) {
  check_shape(s, "conv2d_backward");
  with_stored_type(W, "conv2d_backward", [&](auto w) { backward_input_impl(dx, dy, w, s); });
}

template <class T>
void conv2d_backward(T* dx, T* dW, T* db, const T* dy, const T* x, const T* W, const Conv2dShape& s) {
  check_shape(s, "conv2d_backward");
  const int64_t k = s.k, kk = k * k, Ho = s.Ho(), Wo = s.Wo(), HoWo = Ho * Wo, K = s.Cin * kk;

  if (db)
    parallel_for(s.Cout, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double sum = 0;
        for (int64_t n = 0; n < s.N; ++n)
          for (int64_t q = 0; q < HoWo; ++q) sum += double(dy[(n * s.Cout + c) * HoWo + q]);
        db[c] += T(sum);
      }
    });

  if (dW) {
    // dW[Cout, K] += dy[Cout, (n, q)] col(x)^T[(n, q), K]: A is dy with its batch folded into k, B the
    // transposed column matrix, each of its rows gathered along q.
    static thread_local Scratch<T> padded;
    const auto col = make_columns(x, s.N, s.Cin, s.H, s.W, k, s.stride, s.pad, padded);
    gemm_detail::with_own_kernel<T>([&](auto mr, auto nr, MicroKernel<T> ukr, const Blocking& bk) {
      constexpr int MR = decltype(mr)::value, NR = decltype(nr)::value;
      auto pack_a = [&](T* dst, int64_t i0, int64_t rows, int64_t p0, int64_t kc) {
        for (int64_t p = p0; p < p0 + kc;) {
          const int64_t n = p / HoWo, q = p % HoWo, len = std::min(p0 + kc - p, HoWo - q);
          pack_panels<MR>(dst + (p - p0) * MR, MR * kc, dy + (n * s.Cout + i0) * HoWo + q, HoWo, 1, rows, len,
                          T(1));
          p += len;
        }
      };
      // Gather NR rows of col contiguously, then transpose them into the panel in register blocks.
      auto pack_b = [&](T* dst, int64_t j0, int64_t cols, int64_t p0, int64_t kc) {
        static thread_local Scratch<T> rows;
        T* tmp = rows.get(NR * kc);
        for (int64_t j = 0; j < cols; j += NR, dst += NR * kc) {
          const int64_t width = std::min<int64_t>(NR, cols - j);
          for (int64_t r = 0; r < width; ++r) col.gather_row(j0 + j + r, p0, kc, tmp + r * kc);
          pack_panels<NR>(dst, NR * kc, tmp, kc, 1, width, kc, T(1));
        }
      };
      gemm_detail::blocked_gemm<T, MR, NR>(s.Cout, K, s.N * HoWo, pack_a, pack_b, T(1), dW, K, ukr, bk,
                                           num_threads());
    });
  }

  if (dx) backward_input_impl(dx, dy, W, s);
}

template void conv2d_forward<float>(float*, const float*, const float*, const float*, const Conv2dShape&);
template void conv2d_forward<double>(double*, const double*, const double*, const double*, const Conv2dShape&);
template void conv2d_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                     const Conv2dShape&);
template void conv2d_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      const Conv2dShape&);

}  // namespace ncp::cpu
