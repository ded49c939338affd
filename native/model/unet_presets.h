// The real Stable Diffusion U-Net architectures, for benchmarks and memory plans that need no model file, and
// deterministic random weights for them.
#pragma once
#include <cstdint>
#include <string>

#include "model/unet_config.h"
#include "model/weights.h"

namespace ncp::model {

// "sd15" (runwayml/stable-diffusion-v1-5's unet/config.json, 860 M parameters) or "sdxl"
// (stabilityai/stable-diffusion-xl-base-1.0, 2.6 B). Throws NCP_EINVAL naming the preset otherwise.
UNetConfig unet_preset(const std::string& name);

// Every tensor of the manifest filled from a seeded generator, scaled like a default initialisation
// (uniform in +-1/sqrt(fan_in); norm weights near 1) so activations stay finite through the whole network.
WeightMap random_weights(const Manifest& manifest, uint64_t seed);

}  // namespace ncp::model
