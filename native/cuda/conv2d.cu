// Conv2d as im2col + GEMM. Images are processed in chunks whose column matrices fit a fixed scratch budget,
// each chunk as one strided-batched GEMM against the shared weight matrix. A 1x1, stride-1, unpadded conv
// multiplies the input directly.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/entries.h"
#include "cuda/half_types.cuh"

namespace ncp::cuda {
namespace {

constexpr size_t kColumnBudget = size_t(256) << 20;  // bytes of column matrices per chunk

struct Geometry {
  int64_t N, Cin, H, W, Cout, k, stride, pad, Ho, Wo, P, CKK;
  bool direct;  // 1x1, stride 1, no padding: the input already is the column matrix
};

int geometry(const char* op, const ncp_cuda_conv2d_shape* s, Geometry* g) {
  NCP_REQUIRE(s, "%s: shape is NULL", op);
  NCP_REQUIRE(s->N >= 0 && s->Cin > 0 && s->H > 0 && s->W > 0 && s->Cout > 0 && s->k > 0 && s->stride > 0 &&
                  s->pad >= 0,
              "%s: bad shape (N %lld, Cin %lld, H %lld, W %lld, Cout %lld, k %lld, stride %lld, pad %lld)", op,
              (long long)s->N, (long long)s->Cin, (long long)s->H, (long long)s->W, (long long)s->Cout,
              (long long)s->k, (long long)s->stride, (long long)s->pad);
  *g = Geometry{s->N, s->Cin, s->H, s->W, s->Cout, s->k, s->stride, s->pad, 0, 0, 0, 0, false};
  g->Ho = (g->H + 2 * g->pad - g->k) / g->stride + 1;
  g->Wo = (g->W + 2 * g->pad - g->k) / g->stride + 1;
  NCP_REQUIRE(g->H + 2 * g->pad >= g->k && g->W + 2 * g->pad >= g->k, "%s: kernel %lld larger than padded input",
              op, (long long)g->k);
  g->P = g->Ho * g->Wo;
  g->CKK = g->Cin * g->k * g->k;
  g->direct = g->k == 1 && g->stride == 1 && g->pad == 0;
  return NCP_CUDA_OK;
}

// Images per chunk whose column matrices, of `element` bytes per entry, fit the budget.
int64_t chunk_images(const Geometry& g, size_t element = sizeof(float)) {
  const int64_t per_image = g.CKK * g.P * int64_t(element);
  return std::max<int64_t>(1, std::min<int64_t>({g.N, int64_t(kColumnBudget) / per_image, 65535}));
}

// col[b][(c k + kh) k + kw][oh Wo + ow] = x[b][c][oh s - pad + kh][ow s - pad + kw] (0 outside the image), as float
// or rounded to a half type T.
__device__ inline float to_column(float v, float*) { return v; }
template <class T>
__device__ inline T to_column(float v, T*) { return round_half<T>(v); }

// im2col and col2im with their index arithmetic out of the per-value path: a block per (pixel range, input channel,
// image), so a thread finds its pixel with one 32-bit division and walks the k x k kernel offsets by increments.
// The generic one-index-per-value kernels these replace made about ten 64-bit divisions per value, some 300
// instructions: at SDXL's first level (94 million column entries a 3x3 conv) about 1 ms of integer work against
// 0.04 ms of memory traffic, by that count (not measured: run 3's profile has the whole conv forward at 1.1 ms a
// call on average). Offsets into the tensors stay 64-bit.
struct Geometry32 {
  int Cin, H, W, k, stride, pad, Ho, Wo, P, CKK;
};
int geometry32(const char* op, const Geometry& g, Geometry32* q) {
  NCP_REQUIRE(g.CKK <= INT32_MAX && g.P <= INT32_MAX && g.H * g.W <= INT32_MAX,
              "%s: image too large for 32-bit pixel indices (%lld x %lld, %lld column rows)", op, (long long)g.H,
              (long long)g.W, (long long)g.CKK);
  *q = Geometry32{int(g.Cin), int(g.H), int(g.W), int(g.k), int(g.stride), int(g.pad),
                  int(g.Ho), int(g.Wo), int(g.P), int(g.CKK)};
  return NCP_CUDA_OK;
}
constexpr unsigned kMaxGridY = 65535;

// Grid (pixel blocks, input channels (strided past 65535), images): a thread takes one output pixel p of one
// channel c and writes its k x k column entries col[b][r][p], r = (c k + kh) k + kw: one division per k^2 values.
template <class T>
__global__ void im2col_kernel(T* __restrict__ col, const float* __restrict__ x, Geometry32 q) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= q.P) return;
  const int b = blockIdx.z, oh = p / q.Wo, ow = p - oh * q.Wo;
  const int ih0 = oh * q.stride - q.pad, iw0 = ow * q.stride - q.pad;
  for (int c = blockIdx.y; c < q.Cin; c += gridDim.y) {
    const float* xc = x + (int64_t(b) * q.Cin + c) * q.H * q.W;
    T* out = col + (int64_t(b) * q.CKK + int64_t(c) * q.k * q.k) * q.P + p;
    for (int kh = 0; kh < q.k; ++kh) {
      const int ih = ih0 + kh;
      const bool row_in = ih >= 0 && ih < q.H;
      for (int kw = 0; kw < q.k; ++kw, out += q.P) {
        const int iw = iw0 + kw;
        *out = to_column(row_in && iw >= 0 && iw < q.W ? xc[int64_t(ih) * q.W + iw] : 0.f, col);
      }
    }
  }
}

template <class T>
int im2col(T* col, const float* x, const Geometry& g, int64_t images) {
  Geometry32 q;
  NCP_TRY(geometry32("conv2d im2col", g, &q));
  if (images <= 0) return NCP_CUDA_OK;
  const dim3 grid(blocks_for(q.P), unsigned(std::min<int64_t>(q.Cin, kMaxGridY)), unsigned(images));
  NCP_LAUNCH(im2col_kernel<T>, grid, kThreads, 0)(col, x, q);
  return check_launch("conv2d im2col");
}

// Grid (pixel blocks, input channels (strided past 65535), images): dx[b][c][ih][iw] += the sum of every column
// entry im2col read from that pixel (one writer per pixel), in the order kh, kw.
__global__ void col2im_add_kernel(float* __restrict__ dx, const float* __restrict__ col, Geometry32 q) {
  const int pix = blockIdx.x * blockDim.x + threadIdx.x;
  if (pix >= q.H * q.W) return;
  const int b = blockIdx.z, ih = pix / q.W, iw = pix - ih * q.W;
  for (int c = blockIdx.y; c < q.Cin; c += gridDim.y) {
    const float* cb = col + (int64_t(b) * q.CKK + int64_t(c) * q.k * q.k) * q.P;
    float acc = 0.f;
    for (int kh = 0; kh < q.k; ++kh) {
      const int th = ih + q.pad - kh;
      if (th < 0) continue;
      const int oh = q.stride == 1 ? th : th / q.stride;  // stride 1 (most convs): no division
      if (oh * q.stride != th || oh >= q.Ho) continue;
      for (int kw = 0; kw < q.k; ++kw) {
        const int tw = iw + q.pad - kw;
        if (tw < 0) continue;
        const int ow = q.stride == 1 ? tw : tw / q.stride;
        if (ow * q.stride != tw || ow >= q.Wo) continue;
        acc += cb[int64_t(kh * q.k + kw) * q.P + oh * q.Wo + ow];
      }
    }
    dx[(int64_t(b) * q.Cin + c) * q.H * q.W + pix] += acc;
  }
}

int col2im_add(float* dx, const float* col, const Geometry& g, int64_t images) {
  Geometry32 q;
  NCP_TRY(geometry32("conv2d col2im", g, &q));
  if (images <= 0) return NCP_CUDA_OK;
  const dim3 grid(blocks_for(int64_t(q.H) * q.W), unsigned(std::min<int64_t>(q.Cin, kMaxGridY)), unsigned(images));
  NCP_LAUNCH(col2im_add_kernel, grid, kThreads, 0)(dx, col, q);
  return check_launch("conv2d col2im");
}

}  // namespace

namespace {

// The forward with the weights in float32, bf16 or fp16 (w_dtype). With half weights im2col writes the column
// matrices in the weights' type: the mixed GEMM would round float columns to it anyway, so the values are the same,
// and one pass writing 2 bytes an entry replaces writing 4, reading 4 and writing 2 again.
template <class T>
int conv2d_forward_as(float* y, const float* x, const void* W, int32_t w_dtype, const float* b, const Geometry& g) {
  const int32_t col_dtype = g.direct ? NCP_CUDA_F32 : w_dtype;
  const int64_t chunk = g.direct ? std::min<int64_t>(std::max<int64_t>(g.N, 1), 65535) : chunk_images(g, sizeof(T));
  T* col = nullptr;
  if (!g.direct) NCP_TRY(scratch(0, size_t(chunk * g.CKK * g.P) * sizeof(T), reinterpret_cast<void**>(&col)));
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t images = std::min(chunk, g.N - n0);
    const float* xn = x + n0 * g.Cin * g.H * g.W;
    if (!g.direct) NCP_TRY(im2col(col, xn, g, images));
    // y[n] (Cout x P) = W (Cout x CKK) col[n] (CKK x P)
    NCP_TRY(gemm_batched_mixed(false, false, g.Cout, g.P, g.CKK, 1.f, W, w_dtype, g.CKK, 0,
                               g.direct ? static_cast<const void*>(xn) : col, col_dtype, g.P, g.CKK * g.P, 0.f,
                               y + n0 * g.Cout * g.P, g.P, g.Cout * g.P, images));
  }
  return b ? add_channel_vector(y, b, g.N, g.Cout, g.P) : NCP_CUDA_OK;
}

int conv2d_forward_impl(float* y, const float* x, const void* W, int32_t w_dtype, const float* b,
                        const ncp_cuda_conv2d_shape* s) {
  Geometry g;
  NCP_TRY(geometry("conv2d_forward", s, &g));
  if (w_dtype == NCP_CUDA_BF16) return conv2d_forward_as<__nv_bfloat16>(y, x, W, w_dtype, b, g);
  if (w_dtype == NCP_CUDA_F16) return conv2d_forward_as<__half>(y, x, W, w_dtype, b, g);
  return conv2d_forward_as<float>(y, x, W, w_dtype, b, g);
}

// dx += conv^T dy with the weights in float32, bf16 or fp16 (frozen weights: no dW, db).
int conv2d_backward_input_impl(float* dx, const float* dy, const void* W, int32_t w_dtype,
                               const ncp_cuda_conv2d_shape* s) {
  Geometry g;
  NCP_TRY(geometry("conv2d_backward", s, &g));
  if (!dx) return NCP_CUDA_OK;
  const int64_t chunk = g.direct ? std::min<int64_t>(std::max<int64_t>(g.N, 1), 65535) : chunk_images(g);
  float* dcol = nullptr;
  if (!g.direct) NCP_TRY(scratch(1, size_t(chunk * g.CKK * g.P) * sizeof(float), reinterpret_cast<void**>(&dcol)));
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t images = std::min(chunk, g.N - n0);
    float* xn_grad = dx + n0 * g.Cin * g.H * g.W;
    NCP_TRY(gemm_batched_mixed(true, false, g.CKK, g.P, g.Cout, 1.f, W, w_dtype, g.CKK, 0, dy + n0 * g.Cout * g.P,
                               NCP_CUDA_F32, g.P, g.Cout * g.P, g.direct ? 1.f : 0.f, g.direct ? xn_grad : dcol, g.P,
                               g.CKK * g.P, images));
    if (!g.direct) NCP_TRY(col2im_add(xn_grad, dcol, g, images));
  }
  return NCP_CUDA_OK;
}

}  // namespace

int conv2d_forward(float* y, const float* x, const float* W, const float* b, const ncp_cuda_conv2d_shape* s) {
  return conv2d_forward_impl(y, x, W, NCP_CUDA_F32, b, s);
}

int conv2d_forward_w(float* y, const float* x, const void* W, int32_t w_dtype, const float* b,
                     const ncp_cuda_conv2d_shape* s) {
  return conv2d_forward_impl(y, x, W, w_dtype, b, s);
}

int conv2d_backward_input_w(float* dx, const float* dy, const void* W, int32_t w_dtype, const ncp_cuda_conv2d_shape* s) {
  return conv2d_backward_input_impl(dx, dy, W, w_dtype, s);
}

int conv2d_backward(float* dx, float* dW, float* db, const float* dy, const float* x, const float* W,
                    const ncp_cuda_conv2d_shape* s) {
  Geometry g;
  NCP_TRY(geometry("conv2d_backward", s, &g));
  const int64_t chunk = g.direct ? std::min<int64_t>(std::max<int64_t>(g.N, 1), 65535) : chunk_images(g);
  float *col = nullptr, *dcol = nullptr;
  if (!g.direct) {
    const size_t bytes = size_t(chunk * g.CKK * g.P) * sizeof(float);
    if (dW) NCP_TRY(scratch(0, bytes, reinterpret_cast<void**>(&col)));
    if (dx) NCP_TRY(scratch(1, bytes, reinterpret_cast<void**>(&dcol)));
  }
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t images = std::min(chunk, g.N - n0);
    const float* xn = x + n0 * g.Cin * g.H * g.W;
    const float* dyn = dy + n0 * g.Cout * g.P;
    if (dW) {
      // dW (Cout x CKK) += dy[n] (Cout x P) col[n]^T, image after image into the one accumulator.
      if (!g.direct) NCP_TRY(im2col(col, xn, g, images));
      const float* cols = g.direct ? xn : col;
      for (int64_t i = 0; i < images; ++i)
        NCP_TRY(gemm_batched(false, true, g.Cout, g.CKK, g.P, 1.f, dyn + i * g.Cout * g.P, g.P, 0,
                             cols + i * g.CKK * g.P, g.P, 0, 1.f, dW, g.CKK, 0, 1));
    }
    if (dx) {
      // dcol[n] (CKK x P) = W^T (CKK x Cout) dy[n] (Cout x P); the direct case accumulates straight into dx.
      float* xn_grad = dx + n0 * g.Cin * g.H * g.W;
      NCP_TRY(gemm_batched(true, false, g.CKK, g.P, g.Cout, 1.f, W, g.CKK, 0, dyn, g.P, g.Cout * g.P,
                           g.direct ? 1.f : 0.f, g.direct ? xn_grad : dcol, g.P, g.CKK * g.P, images));
      if (!g.direct) NCP_TRY(col2im_add(xn_grad, dcol, g, images));
    }
  }
  return db ? channel_sum_add(db, dy, g.N, g.Cout, g.P) : NCP_CUDA_OK;
}

}  // namespace ncp::cuda
