// Conversion between JS tensors ({ data: Float32Array, shape: number[] }) and host buffers, with errors that name
// the argument and both shapes.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/blocks.h"

namespace ncp::napi {

struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
  int64_t dim(size_t i) const { return shape[i]; }
};

int64_t numel(const std::vector<int64_t>& shape);

// Reads `obj[name]` as a float32 tensor (copied, so the work can run off the JS thread). Throws a JS Error with
// code NCP_EINVAL naming `name` when missing, not a Float32Array or with a dimension that is not a positive
// integer (no op here has a use for empty tensors, and sizes are divided by), NCP_ESHAPE when data length and
// shape disagree.
HostTensor read_tensor(Napi::Env env, const Napi::Object& obj, const std::string& name, bool optional = false);
Napi::Object write_tensor(Napi::Env env, const HostTensor& t);
// A JS array of strings (the tensor names a file job wrote).
Napi::Array string_array(Napi::Env env, const std::vector<std::string>& items);

// Checks t has `rank` dims; message names op, tensor and the shape found.
void expect_rank(Napi::Env env, const std::string& op, const std::string& name, const HostTensor& t, size_t rank);
// Checks t.shape == want; message names op, tensor, expected and found shapes.
void expect_shape(Napi::Env env, const std::string& op, const std::string& name, const HostTensor& t,
                  const std::vector<int64_t>& want);

double number_attr(Napi::Env env, const Napi::Object& attrs, const std::string& name, double fallback);
bool bool_attr(Napi::Env env, const Napi::Object& attrs, const std::string& name, bool fallback);
// "cpu", "cuda" or "cuda:N" as a device index (-1 for the CPU), checked before any work: a bad name or index
// throws NCP_EINVAL, an unusable CUDA backend NCP_ENOCUDA with the reason; `who` prefixes the message.
int device_arg(Napi::Env env, const std::string& device, const std::string& who);
// attrs.recompute: an array of "feedforward" / "qkv" (absent: none); NCP_EINVAL, prefixed with `who`, otherwise.
model::SelectiveRecompute recompute_attr(Napi::Env env, const Napi::Object& attrs, const std::string& who);

std::string string_attr(Napi::Env env, const Napi::Object& attrs, const std::string& name,
                        const std::string& fallback);

}  // namespace ncp::napi
