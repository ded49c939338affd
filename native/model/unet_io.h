// A U-Net loaded from a diffusers folder, and the forward pass between safetensors files that
// `ncp-native forward` runs (inputs in.*, outputs out.* and trace.*, the golden files' names).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model/unet.h"

namespace ncp::model {

struct LoadedUNet {
  std::string model_dir;
  std::vector<std::string> weight_files;
  UNetConfig config;
  WeightMap weights;           // weight matrices used in place from the mapped files; emptied by to_device
  std::unique_ptr<UNet> unet;  // points into weights, or into the device copy
  int device = -1;             // -1: the CPU

  // Moves the weights to a CUDA device (once; -1 is a no-op) and rebuilds `unet` there, freeing the host copy.
  // matrices BF16 or F16: store the weight matrices in that type there (mixed precision, DeviceWeights); BF16 also
  // keeps a bf16 tape (UNet::set_tape_bf16). Adapters attached to the old module are not carried over: attach LoRA
  // afterwards.
  void to_device(int device, DType matrices = DType::F32);
};

// Reads <model_dir>/unet (config.json and the weights, one file, a variant or shards). The weight matrices stay
// in the mapped files in their stored F32/F16/BF16 (model_load_mode(): MapMatrices unless NCP_MMAP=0); the rest
// is converted to float32.
std::unique_ptr<LoadedUNet> load_unet(const std::string& model_dir, const std::string& variant = "");

// Host copies of a forward pass's inputs, as read from a file or handed over by JavaScript.
struct UNetInputTensors {
  Tensor32 sample, timestep, encoder_hidden_states, text_embeds, time_ids;
};

// Checks the inputs against the model (ranks, channels, batch agreement, SDXL conditions) and returns the view
// the U-Net takes. Errors (NCP_ESHAPE, NCP_EMISSING) name `source`, the tensor and the shapes.
UNetInputs bind_inputs(const UNet& unet, const UNetInputTensors& t, const std::string& source);

// Reads in.sample, in.timestep (int64 or float), in.encoder_hidden_states and for SDXL in.text_embeds and
// in.time_ids from `input`; writes out.sample (and with `trace` every trace.*) to `output` atomically.
// Returns the names written.
std::vector<std::string> unet_forward_file(const LoadedUNet& model, const std::string& input,
                                           const std::string& output, bool trace);

}  // namespace ncp::model
