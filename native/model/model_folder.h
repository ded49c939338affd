// Finding a component's files in a diffusers model folder (<model>/unet, <model>/vae, ...): its config.json and
// its safetensors weights, either one file or the shards named by a ".safetensors.index.json".
#pragma once
#include <string>
#include <vector>

namespace ncp::model {

struct ComponentFiles {
  std::string dir;                        // <model_dir>/<component>
  std::string config_path;                // <dir>/config.json
  std::string config_text;                // its contents
  std::vector<std::string> weight_files;  // the single file, or every shard of the index (sorted, no repeats)
  std::string index_path;                 // the shard index, empty for a single file
};

// Looks for <stem>[.<variant>].safetensors, then its .index.json. Without a variant the plain files are
// preferred, then the fp16 variant. Every tensor an index names must be in the shard it names (NCP_EMISSING
// otherwise); shard names must be plain file names beside the index (NCP_EFORMAT). Throws NCP_EIO listing every
// candidate tried when none exists, and when config.json cannot be read.
ComponentFiles resolve_component_files(const std::string& model_dir, const std::string& component,
                                       const std::string& weight_stem, const std::string& variant = "");

// The U-Net of a diffusers folder: unet/config.json and unet/diffusion_pytorch_model[.<variant>].safetensors.
ComponentFiles resolve_unet_files(const std::string& model_dir, const std::string& variant = "");

}  // namespace ncp::model
