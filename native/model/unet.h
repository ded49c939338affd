// diffusers' UNet2DConditionModel (0.25) forward pass in float32, on the CPU or a CUDA device, built from a UNetConfig:
// SD1.x (conv projections, one head count) and SDXL (linear projections, per-level heads and transformer depth,
// text_time added embedding) alike.
//
// The module holds raw pointers into the WeightMap it was built from, which must outlive it. Activations live in
// buffers allocated per call (inference) or in a UNetTape the caller keeps (training); the module itself holds no
// per-call state. LoRA adapters attach to its Linear layers; each call says whether they are on.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/blocks.h"
#include "model/unet_config.h"
#include "model/weights.h"

namespace ncp::model {

struct UNetInputs {
  int64_t batch = 0, height = 0, width = 0;      // latent size; height and width multiples of 2^(levels - 1)
  int64_t text_len = 0;                          // tokens per row of encoder_hidden_states
  const float* sample = nullptr;                 // [batch, in_channels, height, width]
  const float* timesteps = nullptr;              // [batch]
  const float* encoder_hidden_states = nullptr;  // [batch, text_len, cross_attention_dim]
  const float* text_embeds = nullptr;            // SDXL only: [batch, pooled]
  const float* time_ids = nullptr;               // SDXL only: [batch, 6]
};

// Which feature map encode() returns: the last down block's output, or the mid block's (METHOD.md section 3).
enum class EncoderLayer { Down, Mid };

// Intermediates by the golden files' names without their "trace." prefix: "time_embedding", "add_embedding"
// (SDXL), "conv_in", "down_blocks.{i}", "mid_block", "up_blocks.{i}".
using Trace = std::map<std::string, Tensor32>;

// What a training forward keeps for its backward: the list of block calls it made (module, input, output,
// sizes) and every activation they saved. Walking that list backwards is the backward pass, so the forward and
// backward structures cannot drift apart. Backward consumes it: each block's activations go back to the
// activation cache once walked, so a step's peak is the tape or its gradients, not both; the cache hands the
// same blocks to the next step's forward, so steady-state steps still fault in no fresh pages.
class UNetTape {
 public:
  UNetTape();
  ~UNetTape();
  UNetTape(const UNetTape&) = delete;
  UNetTape& operator=(const UNetTape&) = delete;
  // Gradient checkpointing: keep only each block's input and recompute its internals during backward (one more
  // forward of every block, for a tape of block boundaries instead of every activation).
  void set_checkpointing(bool on);
  bool checkpointing() const;
  // Selective recompute (blocks.h): the transformer blocks leave their feed-forward's pre-GEGLU activations and/or
  // their attentions' q, k, v off the tape, and backward runs those projections again. A fraction of
  // checkpointing's extra time for most of the transformer blocks' share of its saving.
  void set_recompute(SelectiveRecompute r);
  SelectiveRecompute recompute() const;
  struct State;

 private:
  friend class UNet;
  std::unique_ptr<State> s_;
};

class UNet {
 public:
  // Every parameter the config implies, with its diffusers state-dict name and shape.
  static Manifest manifest(const UNetConfig& config);
  UNet(const UNetConfig& config, const WeightMap& weights);
  // The same network with its weights on a CUDA device (uploaded once, DeviceWeights). Every call then runs
  // there and still takes and returns host arrays: inputs are uploaded (into the tape when training), outputs
  // and traces downloaded, the attached adapters' A and B uploaded before a pass with LoRA on and their
  // gradients added into the host dA/dB after backward. So callers (the objectives, the bindings) are the same
  // for both devices.
  UNet(const UNetConfig& config, std::shared_ptr<const DeviceWeights> weights);
  // -1 on the CPU, else the CUDA device index.
  int device() const { return device_; }
  // Keep the transformer blocks' activations for backward in bf16 (KeptActivation): half their memory, with
  // backward reading values rounded to bf16, as under PyTorch's bf16 autocast. Mixed precision turns it on
  // (LoadedUNet::to_device with bf16 weights); float32 otherwise.
  void set_tape_bf16(bool on) { tape_bf16_ = on; }
  bool tape_bf16() const { return tape_bf16_; }
  // Mixed precision (half weight matrices on a CUDA device): the remaining float GEMMs run on TF32 tensor cores,
  // and with bf16 matrices attention on the fused bf16 kernels, during this U-Net's calls (dev::PrecisionScope).
  // LoadedUNet::to_device sets the type of the matrices it uploaded.
  void set_weight_matrices(DType matrices) { weight_matrices_ = matrices; }
  bool mixed_precision() const { return weight_matrices_ != DType::F32; }

  const UNetConfig& config() const { return config_; }
  // Width of text_embeds: projection_class_embeddings_input_dim less the 6 embedded time ids (SDXL; else 0).
  int64_t pooled_dim() const;
  std::vector<int64_t> output_shape(const UNetInputs& in) const;
  std::vector<int64_t> encode_shape(const UNetInputs& in, EncoderLayer layer) const;

  // out: output_shape(in). trace, when given, receives the intermediates listed above. lora: adapters on.
  void forward(const UNetInputs& in, float* out, Trace* trace = nullptr, bool lora = false) const;
  // Time embedding -> conv_in -> down blocks (-> mid block): the NCP encoder. out: encode_shape(in, layer).
  void encode(const UNetInputs& in, EncoderLayer layer, float* out, Trace* trace = nullptr, bool lora = false) const;

  // Training: the same passes, keeping on `tape` what backward needs. The inputs' arrays must stay alive and
  // unchanged until backward has run.
  void forward_train(const UNetInputs& in, float* out, UNetTape& tape, bool lora) const;
  void encode_train(const UNetInputs& in, EncoderLayer layer, float* out, UNetTape& tape, bool lora) const;
  // Backward of the pass recorded on `tape`, from dout (the gradient of its output). Adds into the attached LoRA
  // adapters' dA/dB when that pass had LoRA on, and into dsample [batch, in_channels, H, W] when not nullptr.
  // Computes no gradient for frozen weights, the timesteps or the text conditioning. Empties the tape: a second
  // backward needs a new training forward.
  void backward(const float* dout, UNetTape& tape, float* dsample) const;

  // Every Linear in the network (attention projections, feed-forward, proj_in/out), for attaching adapters.
  std::vector<Linear*> linears();
  // Adds to `set` one adapter per Linear whose name ends in one of `targets`, and attaches them. Returns how many.
  size_t create_lora(LoraSet& set, const std::vector<std::string>& targets, int64_t rank, float alpha);
  // Attaches the adapters of `set` by module name: an adapter whose module does not exist, or whose in/out
  // features differ from the layer's, is an error naming it (NCP_ELORA).
  void attach_lora(LoraSet& set);
  void detach_lora();

  struct DownBlock {
    std::vector<ResnetBlock2D> resnets;
    std::vector<Transformer2DModel> attentions;  // empty for DownBlock2D
    bool has_downsampler = false;
    Downsample2D downsampler;
  };
  struct UpBlock {
    std::vector<ResnetBlock2D> resnets;
    std::vector<Transformer2DModel> attentions;  // empty for UpBlock2D
    bool has_upsampler = false;
    Upsample2D upsampler;
  };
  struct MidBlock {
    ResnetBlock2D resnet0, resnet1;
    Transformer2DModel attention;
  };

 private:
  enum class Stop { Down, Mid, Full };
  UNet(const UNetConfig& config, ParamSource params);
  void check_inputs(const UNetInputs& in) const;
  void upload_lora() const;
  void zero_lora_grads() const;
  void download_lora_grads() const;
  void run(const UNetInputs& in, Stop stop, float* out, Trace* trace, UNetTape* tape, bool lora) const;

  UNetConfig config_;
  TimestepEmbedding time_embedding_, add_embedding_;
  Conv2d conv_in_, conv_out_;
  std::vector<DownBlock> down_;
  MidBlock mid_;
  std::vector<UpBlock> up_;
  GroupNorm conv_norm_out_;
  std::shared_ptr<const DeviceWeights> device_weights_;  // null on the CPU
  int device_ = -1;
  bool tape_bf16_ = false;
  DType weight_matrices_ = DType::F32;
  std::vector<LoraAdapter*> attached_;  // the adapters attach_lora bound, for the device copies
  // On a device: the attached adapters' A and B, and their gradients, packed (LoraPacking); the host staging copy.
  mutable Buffer lora_params_dev_, lora_grads_dev_;
  mutable std::vector<float> lora_staging_;
};

}  // namespace ncp::model
