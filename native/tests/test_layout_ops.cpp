// Residual add, channel concat, per-channel bias and nearest 2x upsampling: index-by-index references,
// gradients, the backward conventions, float against double.
#include "cpu/ops.h"
#include "tests/gradcheck.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using namespace ncp::cpu;

NCP_TEST("layout ops: forwards match index-by-index references") {
  const int64_t N = 2, Ca = 2, Cb = 3, C = 3, H = 3, W = 5, HW = H * W;
  auto a = random_vector(N * Ca * HW, 1), b = random_vector(N * Cb * HW, 2), x = random_vector(N * C * HW, 3);
  auto bias = random_vector(N * C, 4);
  std::vector<double> cat(N * (Ca + Cb) * HW), up(N * C * 4 * HW), sum(a.size()), biased = x;
  concat_channels_forward(cat.data(), a.data(), b.data(), N, Ca, Cb, HW);
  upsample_nearest2x_forward(up.data(), x.data(), N, C, H, W);
  add_forward(sum.data(), a.data(), b.data(), int64_t(a.size()));
  add_channel_bias_forward(biased.data(), bias.data(), N, C, HW);
  int bad = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < Ca + Cb; ++c)
      for (int64_t i = 0; i < HW; ++i) {
        const double want = c < Ca ? a[(n * Ca + c) * HW + i] : b[(n * Cb + c - Ca) * HW + i];
        bad += cat[(n * (Ca + Cb) + c) * HW + i] != want;
      }
  NCP_EXPECT(bad == 0, bad << " concat elements wrong");
  bad = 0;
  for (int64_t p = 0; p < N * C; ++p)
    for (int64_t i = 0; i < 2 * H; ++i)
      for (int64_t j = 0; j < 2 * W; ++j)
        bad += up[(p * 2 * H + i) * 2 * W + j] != x[(p * H + i / 2) * W + j / 2];
  NCP_EXPECT(bad == 0, bad << " upsample elements wrong");
  bad = 0;
  for (size_t i = 0; i < a.size(); ++i) bad += sum[i] != a[i] + b[i];
  for (int64_t p = 0; p < N * C; ++p)
    for (int64_t i = 0; i < HW; ++i) bad += biased[p * HW + i] != x[p * HW + i] + bias[p];
  NCP_EXPECT(bad == 0, bad << " add / bias elements wrong");
}

NCP_TEST("layout ops: gradcheck and backward conventions") {
  const int64_t N = 2, Ca = 2, Cb = 3, H = 3, W = 5, HW = H * W;
  auto a = random_vector(N * Ca * HW, 5), b = random_vector(N * Cb * HW, 6);
  {
    auto w = random_vector(N * (Ca + Cb) * HW, 7);
    std::vector<double> y(w.size()), da(a.size()), db(b.size());
    auto loss = [&] {
      concat_channels_forward(y.data(), a.data(), b.data(), N, Ca, Cb, HW);
      return weighted_sum(y, w);
    };
    concat_channels_backward(da.data(), db.data(), w.data(), N, Ca, Cb, HW);
    NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"concat a", &a, &da}, {"concat b", &b, &db}}), 1e-6);
    expect_backward_accumulates("concat", {N * Ca * HW, N * Cb * HW}, [&](const std::vector<double*>& p) {
      concat_channels_backward(p[0], p[1], w.data(), N, Ca, Cb, HW);
    });
  }
  {
    auto w = random_vector(N * Cb * 4 * HW, 8);
    std::vector<double> y(w.size()), db(b.size());
    auto loss = [&] {
      upsample_nearest2x_forward(y.data(), b.data(), N, Cb, H, W);
      return weighted_sum(y, w);
    };
    upsample_nearest2x_backward(db.data(), w.data(), N, Cb, H, W);
    NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"upsample x", &b, &db}}), 1e-6);
    expect_backward_accumulates("upsample", {N * Cb * HW}, [&](const std::vector<double*>& p) {
      upsample_nearest2x_backward(p[0], w.data(), N, Cb, H, W);
    });
  }
  {
    auto a2 = random_vector(a.size(), 9), w = random_vector(a.size(), 10);
    std::vector<double> y(a.size()), da(a.size()), da2(a.size());
    auto loss = [&] {
      add_forward(y.data(), a.data(), a2.data(), int64_t(a.size()));
      return weighted_sum(y, w);
    };
    add_backward(da.data(), da2.data(), w.data(), int64_t(a.size()));
    NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"add a", &a, &da}, {"add b", &a2, &da2}}), 1e-6);
    expect_backward_accumulates("add", {int64_t(a.size()), int64_t(a.size())}, [&](const std::vector<double*>& p) {
      add_backward(p[0], p[1], w.data(), int64_t(a.size()));
    });
  }
  {
    auto bias = random_vector(N * Cb, 11), w = random_vector(b.size(), 12);
    std::vector<double> y(b.size()), dbias(bias.size());
    auto loss = [&] {
      y = b;
      add_channel_bias_forward(y.data(), bias.data(), N, Cb, HW);
      return weighted_sum(y, w);
    };
    add_channel_bias_backward(dbias.data(), w.data(), N, Cb, HW);
    NCP_EXPECT_GRADCHECK(gradcheck(loss, {{"channel bias", &bias, &dbias}}), 1e-6);
    expect_backward_accumulates("channel bias", {N * Cb}, [&](const std::vector<double*>& p) {
      add_channel_bias_backward(p[0], w.data(), N, Cb, HW);
    });
  }
}

NCP_TEST("layout ops: float matches double") {
  const int64_t N = 2, Ca = 40, Cb = 24, H = 33, W = 31, HW = H * W;
  auto a = random_vector(N * Ca * HW, 13), b = random_vector(N * Cb * HW, 14), bias = random_vector(N * Ca, 15);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    auto at = cast_vector<T>(a), bt = cast_vector<T>(b), biast = cast_vector<T>(bias);
    std::vector<T> cat(N * (Ca + Cb) * HW), up(N * Ca * 4 * HW), sum(a.size()), da(a.size()), db(b.size());
    std::vector<T> dup(a.size()), dbias(bias.size());
    concat_channels_forward(cat.data(), at.data(), bt.data(), N, Ca, Cb, HW);
    concat_channels_backward(da.data(), db.data(), cat.data(), N, Ca, Cb, HW);
    upsample_nearest2x_forward(up.data(), at.data(), N, Ca, H, W);
    upsample_nearest2x_backward(dup.data(), up.data(), N, Ca, H, W);
    add_forward(sum.data(), at.data(), at.data(), int64_t(a.size()));
    add_backward(da.data(), dup.data(), sum.data(), int64_t(a.size()));
    add_channel_bias_forward(sum.data(), biast.data(), N, Ca, HW);
    add_channel_bias_backward(dbias.data(), sum.data(), N, Ca, HW);
    return std::vector<std::vector<T>>{cat, up, sum, da, db, dup, dbias};
  };
  auto f = run(0.0f);
  auto d = run(0.0);
  for (size_t i = 0; i < d.size(); ++i) {
    const double e = rel_error(f[i].data(), d[i].data(), int64_t(d[i].size()));
    NCP_EXPECT(e < 1e-6, "output " << i << " rel error " << e);
  }
}

}  // namespace
