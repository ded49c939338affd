// `ncp_bench attention`: one multi-head attention shape, forward and recomputing backward, on the device under each
// attention mode of the CUDA backend (materialized, fused, fused-wmma), so that the kernels can be compared with
// each other and with PyTorch's scaled_dot_product_attention (bench/pytorch/attention_bench.py) in seconds of
// device time, without a whole U-Net step around them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ncp::model {

struct AttentionBenchOptions {
  int64_t batch = 2, queries = 4096, keys = 4096, heads = 10, head_dim = 64;
  int reps = 10, device = 0;
  std::vector<std::string> modes{"materialized", "fused", "fused-async", "fused-async8", "fused-wmma"};
};

struct AttentionBenchResult {
  std::string mode;         // as NCP_CUDA_ATTENTION spells it
  double forward_s = 0;     // median of reps, attention_forward without saved probabilities (inference, training)
  double backward_s = 0;    // median of reps, attention_backward_recompute with dq, dk, dv and no output
  double forward_gflop = 0; // 4 B H Lq Lk Dh: the two products
  double backward_gflop = 0;  // 2.5 x forward (FlashAttention's convention; recomputation not counted)
};

// Throws ncp::Error when an option is out of range or a mode name unknown (checked first, on any machine), or the
// device cannot run.
std::vector<AttentionBenchResult> bench_attention(const AttentionBenchOptions& o);

}  // namespace ncp::model
