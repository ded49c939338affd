// The exported function table: the library's only public symbol.
#include "cuda/api.h"
#include "cuda/entries.h"

namespace ncp::cuda {
namespace {

ncp_cuda_api make_table() {
  ncp_cuda_api t{};
  t.abi_version = NCP_CUDA_ABI_VERSION;
  t.struct_size = sizeof(ncp_cuda_api);
  t.device_count = device_count;
  t.device_info = device_info;
  t.set_device = set_device;
  t.versions = versions;
  t.last_error = last_error;
  t.gemm_provider = gemm_provider;
  t.select_gemm = select_gemm;
  t.set_tf32 = set_tf32;
  t.mem_alloc = mem_alloc;
  t.mem_free = mem_free;
  t.memcpy_h2d = memcpy_h2d;
  t.memcpy_d2h = memcpy_d2h;
  t.memcpy_d2d = memcpy_d2d;
  t.mem_zero = mem_zero;
  t.synchronize = synchronize;
  t.event_record = event_record;
  t.event_query = event_query;
  t.event_elapsed = event_elapsed;
  t.event_release = event_release;
  t.launch_count = launch_count;
  t.gemm = gemm;
  t.linear_forward = linear_forward;
  t.linear_backward = linear_backward;
  t.conv2d_forward = conv2d_forward;
  t.conv2d_backward = conv2d_backward;
  t.group_norm_forward = group_norm_forward;
  t.group_norm_backward = group_norm_backward;
  t.group_norm_silu_forward = group_norm_silu_forward;
  t.group_norm_silu_backward = group_norm_silu_backward;
  t.layer_norm_forward = layer_norm_forward;
  t.layer_norm_backward = layer_norm_backward;
  t.activation_forward = activation_forward;
  t.activation_backward = activation_backward;
  t.geglu_forward = geglu_forward;
  t.geglu_backward = geglu_backward;
  t.attention_forward = attention_forward;
  t.attention_backward = attention_backward;
  t.attention_backward_recompute = attention_backward_recompute;
  t.upsample_nearest2x_forward = upsample_nearest2x_forward;
  t.upsample_nearest2x_backward = upsample_nearest2x_backward;
  t.add_forward = add_forward;
  t.add_backward = add_backward;
  t.concat_channels_forward = concat_channels_forward;
  t.concat_channels_backward = concat_channels_backward;
  t.add_channel_bias_forward = add_channel_bias_forward;
  t.add_channel_bias_backward = add_channel_bias_backward;
  t.timestep_embedding = timestep_embedding;
  t.mse_forward = mse_forward;
  t.mse_backward = mse_backward;
  t.adamw_step = adamw_step;
  t.transpose_batched = transpose_batched;
  t.scale_shift = scale_shift;
  t.gemm_mixed = gemm_mixed;
  t.linear_forward_w = linear_forward_w;
  t.linear_backward_input_w = linear_backward_input_w;
  t.conv2d_forward_w = conv2d_forward_w;
  t.conv2d_backward_input_w = conv2d_backward_input_w;
  t.set_fused_attention = set_fused_attention;
  t.round_to_bf16 = round_to_bf16;
  t.widen_bf16 = widen_bf16;
  t.lora_forward = lora_forward;
  t.lora_backward = lora_backward;
  return t;
}

const ncp_cuda_api g_table = make_table();

}  // namespace
}  // namespace ncp::cuda

extern "C" const ncp_cuda_api* ncp_cuda_get_api(int abi_version) {
  return abi_version == NCP_CUDA_ABI_VERSION ? &ncp::cuda::g_table : nullptr;
}
