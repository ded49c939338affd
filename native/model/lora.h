// LoRA adapters (PEFT / diffusers convention, METHOD.md section 5): y = W x + b + (alpha / r) B (A x), with
// A [r, in] and B [out, r] trainable in float32 whatever the base weights' dtype, and their gradients beside them.
//
// The base network keeps one copy of its weights; a Linear points at its adapter, and each forward/backward call
// says whether the adapter is on (policy) or off (reference). So the reference model costs no memory.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/buffer.h"

namespace ncp::model {

struct LoraAdapter {
  std::string module;  // diffusers module name, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
  int64_t rank = 0, in = 0, out = 0;
  float alpha = 0;
  std::vector<float> A, B;    // [rank, in], [out, rank]
  std::vector<float> dA, dB;  // gradients, same shapes; backward adds into them
  // Device copies while the network runs on a CUDA device: views into the U-Net's packed buffers
  // (LoraPacking), which it uploads A and B into before each pass with LoRA on, and whose dA and dB it adds into
  // the host gradients after each backward. The host copies stay the truth (the optimiser, checkpoints and files
  // read them). Unused on the CPU.
  float *dev_A = nullptr, *dev_B = nullptr, *dev_dA = nullptr, *dev_dB = nullptr;
  float scale() const { return alpha / float(rank); }
  // The parameter and gradient pointers on the current device.
  const float* a() const;
  const float* b() const;
  float* da();
  float* db();
  void zero_grad();
};

// One contiguous layout [A0 | B0 | A1 | B1 | ...] of a list of adapters' parameters, and the same layout for their
// gradients [dA0 | dB0 | ...], so that a device pass uploads every parameter in one copy, zeroes every gradient
// in one fill and downloads them in one copy (one small copy per tensor cost about 0.05 s per SDXL step).
struct LoraPacking {
  static int64_t size(const std::vector<LoraAdapter*>& adapters);  // floats in either layout
  // dst[size] = the adapters' A and B in the layout.
  static void pack_params(const std::vector<LoraAdapter*>& adapters, float* dst);
  // Each adapter's dA, dB += its part of src[size].
  static void add_grads(const std::vector<LoraAdapter*>& adapters, const float* src);
  // Points each adapter's dev_A / dev_B into params and dev_dA / dev_dB into grads (either may be null: left as is).
  static void bind(const std::vector<LoraAdapter*>& adapters, float* params, float* grads);
};

// Which Linear layers get adapters: the suffixes of METHOD.md section 5 ("to_q", "to_k", "to_v", "to_out.0" by
// default; "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2" optional).
std::vector<std::string> default_lora_targets();
bool is_lora_target(const std::string& module, const std::vector<std::string>& targets);

enum class LoraInit { Gaussian, Kaiming };

class LoraSet {
 public:
  // Adds an adapter for `module` with zero-initialised A and B (fill them, or call init()).
  LoraAdapter& add(const std::string& module, int64_t rank, int64_t in, int64_t out, float alpha);
  LoraAdapter* find(const std::string& module);
  const std::vector<std::unique_ptr<LoraAdapter>>& adapters() const { return adapters_; }
  // A ~ N(0, 1/r) (gaussian) or kaiming-uniform (bound sqrt(6 / ((1 + 5) in)) as torch's a = sqrt(5)); B = 0,
  // so the policy starts equal to the reference. Deterministic under the seed.
  void init(LoraInit init, uint64_t seed);
  void zero_grad();
  int64_t num_params() const;

 private:
  std::vector<std::unique_ptr<LoraAdapter>> adapters_;
  std::map<std::string, LoraAdapter*> index_;
};

}  // namespace ncp::model
