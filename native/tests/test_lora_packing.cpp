// LoraPacking: the one-copy layout of LoRA parameters and gradients that a device pass uploads and downloads
// (the device path itself is covered by test_cuda_model's GPU training steps against the CPU's).
#include <vector>

#include "model/lora.h"
#include "tests/harness.h"

using ncp::model::LoraAdapter;
using ncp::model::LoraPacking;
using ncp::model::LoraSet;

NCP_TEST("lora packing: parameters in order, gradients added back to their own adapter") {
  LoraSet set;
  std::vector<LoraAdapter*> list = {&set.add("a.to_q", 2, 3, 5, 2.f), &set.add("b.to_k", 1, 4, 2, 1.f),
                                    &set.add("c.to_v", 3, 2, 2, 3.f)};
  float value = 1.f;
  for (LoraAdapter* a : list) {
    for (float& x : a->A) x = value++;
    for (float& x : a->B) x = value++;
    for (float& g : a->dA) g = 1000.f;
    for (float& g : a->dB) g = 2000.f;
  }
  const int64_t n = LoraPacking::size(list);
  NCP_EXPECT(n == (2 * 3 + 5 * 2) + (1 * 4 + 2 * 1) + (3 * 2 + 2 * 3), "size " << n);
  std::vector<float> packed(static_cast<size_t>(n));
  LoraPacking::pack_params(list, packed.data());
  for (int64_t i = 0; i < n; ++i) NCP_EXPECT(packed[size_t(i)] == float(i + 1), "packed[" << i << "] " << packed[size_t(i)]);

  std::vector<float> params(static_cast<size_t>(n)), grads(static_cast<size_t>(n));
  LoraPacking::bind(list, params.data(), grads.data());
  int64_t at = 0;
  for (LoraAdapter* a : list) {
    NCP_EXPECT(a->dev_A == params.data() + at && a->dev_dA == grads.data() + at, a->module << ": A at " << at);
    at += int64_t(a->A.size());
    NCP_EXPECT(a->dev_B == params.data() + at && a->dev_dB == grads.data() + at, a->module << ": B at " << at);
    at += int64_t(a->B.size());
  }
  LoraPacking::bind(list, nullptr, nullptr);  // null leaves the views as they are
  NCP_EXPECT(list[2]->dev_B == params.data() + (n - 6), "bind(nullptr) moved a view");

  for (int64_t i = 0; i < n; ++i) grads[size_t(i)] = float(i);
  LoraPacking::add_grads(list, grads.data());
  at = 0;
  for (LoraAdapter* a : list) {
    for (float g : a->dA) NCP_EXPECT(g == 1000.f + float(at++), a->module << " dA " << g);
    for (float g : a->dB) NCP_EXPECT(g == 2000.f + float(at++), a->module << " dB " << g);
  }
}
