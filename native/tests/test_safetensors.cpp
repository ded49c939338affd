// safetensors reading and writing, load_weights and model-folder resolution: round trips through our writer,
// the golden files (values checked against numbers decoded independently with Python's struct module), one
// corrupt file per header check, and every way a weight set can disagree with a manifest.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "model/model_folder.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/fixtures.h"
#include "tests/harness.h"

namespace {
using namespace ncp::test;
using namespace ncp::model;
using ncp::DType;

struct Caught {
  std::string code = "(no error)", message;
  bool has(const std::string& s) const { return message.find(s) != std::string::npos; }
};

Caught error_of(const std::function<void()>& fn) {
  Caught c;
  try {
    fn();
  } catch (const ncp::Error& e) {
    c.code = e.code();
    c.message = e.what();
  }
  return c;
}

// A safetensors file by hand: the header length (or a forged one), the header text, the data.
std::string raw_file(const std::string& header, const std::string& data, uint64_t forged_len = 0) {
  const uint64_t len = forged_len ? forged_len : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char(uint8_t(len >> (8 * i)));
  return out + header + data;
}

uint64_t header_len(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  return n;
}

template <class T>
TensorData tensor(const std::string& name, DType dt, std::vector<int64_t> shape, const std::vector<T>& v) {
  return TensorData{name, dt, std::move(shape), v.data(), v.size() * sizeof(T)};
}

std::vector<uint16_t> to_half(const std::vector<float>& v, DType dt) {
  std::vector<uint16_t> out(v.size());
  ncp::convert_from_f32(out.data(), v.data(), dt, int64_t(v.size()));
  return out;
}

NCP_TEST("safetensors: write then read F32/F16/BF16/I64/F64 tensors and metadata") {
  TempDir dir;
  const std::string path = dir / "round.safetensors";
  // Values exact in each dtype (f16: 2^-14 is the smallest normal, 2^-24 the smallest subnormal), so the
  // expected floats are known without calling any conversion.
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0e-7f, 1e30f, -0.0f, 42.0f};
  const std::vector<float> f16_vals = {0.5f, -2.25f, 1024.0f, 6.103515625e-05f, 5.9604644775390625e-08f};
  const std::vector<float> bf16_vals = {1.0f, -3.5f, 0x1.8p126f};
  const std::vector<int64_t> i64 = {37, 811, -5, int64_t(1) << 40};
  const std::vector<double> f64 = {0.25, -8.0};
  const auto f16 = to_half(f16_vals, DType::F16), bf16 = to_half(bf16_vals, DType::BF16);
  NCP_EXPECT(f16[0] == 0x3800 && f16[4] == 0x0001 && bf16[0] == 0x3F80, "test inputs are not the bits assumed");
  const std::vector<float> empty;
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "caf\xc3\xa9 \"q\"\n\\"}};
  write_safetensors(path,
                    {tensor("w.f16", DType::F16, {5}, f16), tensor("a.f32", DType::F32, {2, 3}, f32),
                     tensor("t.i64", DType::I64, {4}, i64), tensor("b.bf16", DType::BF16, {3, 1}, bf16),
                     tensor("d.f64", DType::F64, {1, 2}, f64), tensor("z.empty", DType::F32, {0, 3}, empty)},
                    meta);

  const SafetensorsFile f = SafetensorsFile::open(path);
  NCP_EXPECT(f.tensors().size() == 6, f.tensors().size());
  NCP_EXPECT(f.metadata() == meta, "metadata came back different");
  struct Want {
    const char* name;
    DType dt;
    std::vector<int64_t> shape;
    const void* bytes;
    size_t nbytes;
    std::vector<float> values;
  };
  const std::vector<Want> wants = {
      {"a.f32", DType::F32, {2, 3}, f32.data(), 24, f32},
      {"w.f16", DType::F16, {5}, f16.data(), 10, f16_vals},
      {"b.bf16", DType::BF16, {3, 1}, bf16.data(), 6, bf16_vals},
      {"t.i64", DType::I64, {4}, i64.data(), 32, {37.0f, 811.0f, -5.0f, 1099511627776.0f}},
      {"d.f64", DType::F64, {1, 2}, f64.data(), 16, {0.25f, -8.0f}},
      {"z.empty", DType::F32, {0, 3}, nullptr, 0, {}}};
  for (const auto& w : wants) {
    const TensorInfo* t = f.find(w.name);
    NCP_EXPECT(t != nullptr, w.name << " not found");
    if (!t) continue;
    NCP_EXPECT(t->dtype == w.dt && t->shape == w.shape && t->nbytes == w.nbytes,
               w.name << " " << ncp::dtype_name(t->dtype) << " " << ncp::shape_str(t->shape) << " " << t->nbytes);
    NCP_EXPECT(w.nbytes == 0 || std::memcmp(t->data, w.bytes, w.nbytes) == 0, w.name << " bytes differ");
    NCP_EXPECT(reinterpret_cast<uintptr_t>(t->data) % ncp::dtype_size(t->dtype) == 0, w.name << " misaligned");
    const std::vector<float> got = f.read_f32(w.name);
    NCP_EXPECT(got.size() == w.values.size(), w.name);
    for (size_t i = 0; i < got.size() && i < w.values.size(); ++i)
      NCP_EXPECT(std::memcmp(&got[i], &w.values[i], 4) == 0, w.name << "[" << i << "] = " << got[i]
                                                                 << ", wrote " << w.values[i]);
  }

  const std::string bytes = read_file(path);
  const uint64_t n = header_len(bytes);
  NCP_EXPECT(n % 8 == 0, "header length " << n << " is not padded to 8");
  const std::string header = bytes.substr(8, n);
  size_t last = 0;
  for (const char* key : {"\"__metadata__\"", "\"a.f32\"", "\"b.bf16\"", "\"d.f64\"", "\"t.i64\"", "\"w.f16\"",
                          "\"z.empty\""}) {
    const size_t at = header.find(key);
    NCP_EXPECT(at != std::string::npos && at >= last, key << " out of sorted order in " << header);
    last = at;
  }
  NCP_EXPECT(std::filesystem::directory_iterator(dir.path()) != std::filesystem::directory_iterator() &&
                 std::distance(std::filesystem::directory_iterator(dir.path()), {}) == 1,
             "the temp file was left behind");
}

NCP_TEST("safetensors: writer replaces files atomically and rejects bad tensors") {
  TempDir dir;
  const std::string path = dir / "out.safetensors";
  const std::vector<float> a = {1, 2, 3}, b = {4, 5};
  write_safetensors(path, {tensor("x", DType::F32, {3}, a)});
  write_safetensors(path, {tensor("y", DType::F32, {2}, b)});
  const SafetensorsFile f = SafetensorsFile::open(path);
  NCP_EXPECT(f.tensors().size() == 1 && f.find("y") && f.read_f32("y") == b, "second write did not replace");
  NCP_EXPECT(!std::filesystem::exists(path + ".tmp-" + std::to_string(::getpid())), "temp file left");

  auto e = error_of([&] { write_safetensors(path, {TensorData{"x", DType::F32, {4}, a.data(), 12}}); });
  NCP_EXPECT(e.code == "NCP_ESHAPE" && e.has("\"x\"") && e.has("[4]") && e.has(path), e.code << " " << e.message);
  e = error_of([&] { write_safetensors(path, {tensor("x", DType::F32, {3}, a), tensor("x", DType::F32, {2}, b)}); });
  NCP_EXPECT(e.code == "NCP_EINVAL" && e.has("duplicate"), e.code << " " << e.message);
  e = error_of([&] { write_safetensors(path, {tensor("__metadata__", DType::F32, {3}, a)}); });
  NCP_EXPECT(e.code == "NCP_EINVAL", e.code << " " << e.message);
  const std::string nowhere = dir / "no/such/dir/out.safetensors";
  e = error_of([&] { write_safetensors(nowhere, {tensor("x", DType::F32, {3}, a)}); });
  NCP_EXPECT(e.code == "NCP_EIO" && e.has(nowhere) && e.has("No such file"), e.code << " " << e.message);
  NCP_EXPECT(SafetensorsFile::open(path).read_f32("y") == b, "a failed write damaged the existing file");
}

NCP_TEST("safetensors: golden tiny-sd15 U-Net weights parse with the right shapes and values") {
  const SafetensorsFile f = SafetensorsFile::open(golden_path("tiny-sd15/unet/diffusion_pytorch_model.safetensors"));
  NCP_EXPECT(f.tensors().size() == 494, f.tensors().size());
  // First value, last value and sum, decoded independently (Python struct) from the file.
  struct Known {
    const char* name;
    std::vector<int64_t> shape;
    double first, last, sum;
  };
  const Known known[] = {
      {"conv_in.weight", {32, 4, 3, 3}, -0.005225496366620064, 0.12210695445537567, -3.403319611592451},
      {"down_blocks.0.attentions.0.proj_in.weight", {32, 32, 1, 1}, 0.22010785341262817, -0.21082408726215363,
       -5.473455144025138},
      {"up_blocks.2.resnets.2.conv_shortcut.weight", {32, 64, 1, 1}, -0.08574151992797852, 0.14413489401340485,
       -1.6401352775428677},
      {"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", {64, 48}, -0.004512027837336063,
       0.11315186321735382, -2.9789756196078088}};
  for (const auto& k : known) {
    const TensorInfo& t = f.get(k.name);
    NCP_EXPECT(t.shape == k.shape && t.dtype == DType::F32, k.name << " " << ncp::shape_str(t.shape));
    const std::vector<float> v = f.read_f32(k.name, k.shape);
    double sum = 0;
    for (const float x : v) sum += x;
    NCP_EXPECT(v.front() == float(k.first) && v.back() == float(k.last), k.name << " " << v.front() << " "
                                                                           << v.back());
    NCP_EXPECT(std::abs(sum - k.sum) < 1e-12, k.name << " sum " << sum << " vs " << k.sum);
  }
}

NCP_TEST("safetensors: golden forward cases parse, int64 timesteps included") {
  const SafetensorsFile sd15 = SafetensorsFile::open(golden_path("tiny-sd15/forward.safetensors"));
  const std::vector<float> sample = sd15.read_f32("in.sample", {2, 4, 16, 16});
  NCP_EXPECT(sample.front() == 0.6196539402008057f && sample.back() == 0.8217231035232544f,
             sample.front() << " " << sample.back());
  NCP_EXPECT(sd15.get("in.timestep").dtype == DType::I64, ncp::dtype_name(sd15.get("in.timestep").dtype));
  NCP_EXPECT(sd15.read_f32("in.timestep", {2}) == std::vector<float>({37, 811}), "timesteps");
  NCP_EXPECT(sd15.get("in.encoder_hidden_states").shape == std::vector<int64_t>({2, 7, 48}), "context");
  NCP_EXPECT(sd15.get("out.sample").shape == std::vector<int64_t>({2, 4, 16, 16}), "out");
  const SafetensorsFile sdxl = SafetensorsFile::open(golden_path("tiny-sdxl/forward.safetensors"));
  NCP_EXPECT(sdxl.read_f32("in.time_ids", {2, 6}) ==
                 std::vector<float>({512, 768, 0, 16, 512, 768, 1024, 1024, 32, 0, 1024, 1024}),
             "time ids");
  NCP_EXPECT(sdxl.get("in.text_embeds").shape == std::vector<int64_t>({2, 40}), "text embeds");
}

NCP_TEST("safetensors: each corrupt header is an error with its code, the file and the fault") {
  TempDir dir;
  const std::string good_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data8(8, '\x01');
  const std::vector<float> v = {1, 2, 3, 4};
  write_safetensors(dir / "valid.safetensors", {tensor("a", DType::F32, {4}, v)});
  const std::string valid = read_file(dir / "valid.safetensors");
  struct Case {
    const char* label;
    std::string bytes;
    const char* code;
    std::vector<std::string> says;
  };
  const std::vector<Case> cases = {
      {"truncated data", valid.substr(0, valid.size() - 4), "NCP_EFORMAT", {"\"a\"", "exceed the data section"}},
      {"truncated to 5 bytes", valid.substr(0, 5), "NCP_EFORMAT", {"5 bytes", "too short"}},
      {"empty file", "", "NCP_EFORMAT", {"0 bytes"}},
      {"header length beyond file", raw_file(good_header, data8, 999999), "NCP_EFORMAT",
       {"header length 999999 exceeds file size " + std::to_string(8 + good_header.size() + 8)}},
      {"header length one past the file", raw_file(good_header, data8, good_header.size() + 9), "NCP_EFORMAT",
       {"header length " + std::to_string(good_header.size() + 9) + " exceeds file size"}},
      {"header length ~2^64", raw_file(good_header, data8, ~uint64_t(0)), "NCP_EFORMAT", {"exceeds file size"}},
      {"header not JSON", raw_file("{\"a\": nope}", data8), "NCP_EFORMAT", {"invalid JSON at byte 6"}},
      {"header not an object", raw_file("[1, 2]  ", data8), "NCP_EFORMAT", {"not a JSON object"}},
      {"offsets beyond data", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", data8),
       "NCP_EFORMAT", {"\"a\"", "[8, 16]", "exceed the data section of 8 bytes"}},
      {"end before begin", raw_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data8),
       "NCP_EFORMAT", {"end before begin"}},
      {"byte size not numel * dtype size", raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8),
       "NCP_EFORMAT", {"\"a\"", "[3] of F32 needs 12 bytes", "span 8"}},
      {"overflowing shape",
       raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", data8),
       "NCP_EFORMAT", {"too many"}},
      {"unknown dtype", raw_file(R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", data8),
       "NCP_EDTYPE", {"\"a\"", "F8_E4M3"}},
      {"fractional dimension", raw_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data8),
       "NCP_EFORMAT", {"[2.0]", "not a non-negative integer"}},
      {"negative dimension", raw_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8),
       "NCP_EFORMAT", {"[-2]"}},
      {"string dimension", raw_file(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", data8),
       "NCP_EFORMAT", {"[\"2\"]"}},
      {"missing data_offsets", raw_file(R"({"a":{"dtype":"F32","shape":[2]}})", data8), "NCP_EFORMAT",
       {"no \"data_offsets\""}},
      {"missing shape", raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", data8), "NCP_EFORMAT",
       {"no \"shape\""}},
      {"one offset", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data8), "NCP_EFORMAT",
       {"[begin, end]"}},
      {"metadata value not a string", raw_file(R"({"__metadata__":{"n":1}})", ""), "NCP_EFORMAT",
       {"__metadata__", "\"n\""}},
  };
  for (const auto& c : cases) {
    const std::string path = dir / "corrupt.safetensors";
    write_file(path, c.bytes);
    const Caught e = error_of([&] { SafetensorsFile::open(path); });
    NCP_EXPECT(e.code == c.code, c.label << ": " << e.code << " " << e.message);
    NCP_EXPECT(e.has(path), c.label << ": message does not name the file: " << e.message);
    for (const auto& s : c.says) NCP_EXPECT(e.has(s), c.label << ": no '" << s << "' in: " << e.message);
  }
  NCP_EXPECT(SafetensorsFile::open(dir / "valid.safetensors").read_f32("a") == v, "valid file rejected");
}

NCP_TEST("safetensors: unreadable paths and absent or mis-shaped tensors") {
  TempDir dir;
  const std::string missing_path = dir / "absent.safetensors";
  Caught e = error_of([&] { SafetensorsFile::open(missing_path); });
  NCP_EXPECT(e.code == "NCP_EIO" && e.has(missing_path) && e.has("No such file"), e.code << " " << e.message);
  e = error_of([&] { SafetensorsFile::open(dir.path()); });
  NCP_EXPECT(e.code == "NCP_EIO" && e.has("directory"), e.code << " " << e.message);

  const std::string path = dir / "t.safetensors";
  const std::vector<float> v = {1, 2, 3, 4, 5, 6};
  write_safetensors(path, {tensor("w", DType::F32, {2, 3}, v)});
  const SafetensorsFile f = SafetensorsFile::open(path);
  e = error_of([&] { f.read_f32("v"); });
  NCP_EXPECT(e.code == "NCP_EMISSING" && e.has("\"v\"") && e.has(path), e.code << " " << e.message);
  e = error_of([&] { f.read_f32("w", {3, 2}); });
  NCP_EXPECT(e.code == "NCP_ESHAPE" && e.has("[2, 3]") && e.has("[3, 2]") && e.has(path), e.code << " "
                                                                                          << e.message);
}

NCP_TEST("load_weights: converts F16/BF16/F32 into float32 and strips a prefix") {
  TempDir dir;
  const std::vector<float> w = {0.5f, -1.25f, 2.0f, 4.0f, -0.125f, 8.0f}, b = {1.5f, -3.0f}, other = {9};
  const auto w16 = to_half(w, DType::F16), b16 = to_half(b, DType::BF16);
  write_safetensors(dir / "m.safetensors", {tensor("unet.lin.weight", DType::F16, {2, 3}, w16),
                                            tensor("unet.lin.bias", DType::BF16, {2}, b16),
                                            tensor("unet.norm.weight", DType::F32, {2}, b),
                                            tensor("text.other", DType::F32, {1}, other)});
  const Manifest manifest = {{"lin.weight", {2, 3}}, {"lin.bias", {2}}, {"norm.weight", {2}}};
  const WeightMap m = load_weights(manifest, {dir / "m.safetensors"}, "unet.");
  NCP_EXPECT(m.all().size() == 3 && m.bytes() == 10 * sizeof(float), m.all().size() << " " << m.bytes());
  const float* lw = m.get("lin.weight", {2, 3});
  NCP_EXPECT(std::vector<float>(lw, lw + 6) == w, "lin.weight values");
  const float* lb = m.get("lin.bias", {2});
  NCP_EXPECT(std::vector<float>(lb, lb + 2) == b, "lin.bias values");
  const float* nw = m.get("norm.weight", {2});
  NCP_EXPECT(std::vector<float>(nw, nw + 2) == b, "norm.weight values");

  Caught e = error_of([&] { m.get("lin.weight", {2, 3, 1, 1}); });
  NCP_EXPECT(e.code == "NCP_ESHAPE" && e.has("[2, 3]") && e.has("[2, 3, 1, 1]"), e.code << " " << e.message);
  e = error_of([&] { m.get("lin2.weight", {2}); });
  NCP_EXPECT(e.code == "NCP_EMISSING" && e.has("lin2.weight"), e.code << " " << e.message);
}

NCP_TEST("load_weights MapMatrices: half and aligned float32 matrices stay in the file, the rest is copied") {
  TempDir dir;
  const std::vector<float> w = {0.5f, -1.25f, 2.0f, 4.0f, -0.125f, 8.0f}, b = {1.5f, -3.0f};
  const auto w16 = to_half(w, DType::F16), c16 = to_half(w, DType::BF16), b16 = to_half(b, DType::F16);
  write_safetensors(dir / "m.safetensors", {tensor("lin.weight", DType::F16, {2, 3}, w16),
                                            tensor("conv.weight", DType::BF16, {2, 3, 1, 1}, c16),
                                            tensor("f32.weight", DType::F32, {3, 2}, w),
                                            tensor("lin.bias", DType::F16, {2}, b16),
                                            tensor("embedding", DType::F16, {3, 2}, w16)});
  const Manifest manifest = {{"lin.weight", {2, 3}, true},
                             {"conv.weight", {2, 3, 1, 1}, true},
                             {"f32.weight", {3, 2}, true},
                             {"lin.bias", {2}},
                             {"embedding", {3, 2}}};  // 2-D but not a matrix the module reads as half: copied
  WeightMap kept;
  {
    // A copy outlives the map it came from: the copy holds the mapping open.
    const WeightMap first = load_weights(manifest, {dir / "m.safetensors"}, "", LoadMode::MapMatrices);
    kept = first;
  }
  NCP_EXPECT(kept.mapped().size() == 3 && kept.all().size() == 2, kept.mapped().size() << " " << kept.all().size());
  NCP_EXPECT(kept.copied_bytes() == 8 * sizeof(float) && kept.bytes() == 6 * 2 + 6 * 2 + 6 * 4 + 8 * 4,
             kept.copied_bytes() << " " << kept.bytes());
  const float* emb = kept.get("embedding", {3, 2});
  NCP_EXPECT(std::vector<float>(emb, emb + 6) == w, "embedding values");
  const ncp::cpu::WeightRef lin = kept.get_matrix("lin.weight", {2, 3});
  const ncp::cpu::WeightRef conv = kept.get_matrix("conv.weight", {2, 3, 1, 1});
  NCP_EXPECT(lin.dtype == DType::F16 && conv.dtype == DType::BF16, dtype_name(lin.dtype) << " " << dtype_name(conv.dtype));
  std::vector<float> widened(6);
  convert_to_f32(widened.data(), lin.data, DType::F16, 6);
  NCP_EXPECT(widened == w, "lin.weight values through the mapping");
  convert_to_f32(widened.data(), conv.data, DType::BF16, 6);
  NCP_EXPECT(widened == w, "conv.weight values through the mapping");
  const float* f = kept.get("f32.weight", {3, 2});  // float32 in place serves get() too
  NCP_EXPECT(std::vector<float>(f, f + 6) == w, "f32.weight values");
  const float* lb = kept.get("lin.bias", {2});
  NCP_EXPECT(std::vector<float>(lb, lb + 2) == b, "lin.bias values");

  // A half matrix asked for as float32 names the tensor and how it is held; shape errors as for copies.
  Caught e = error_of([&] { kept.get("lin.weight", {2, 3}); });
  NCP_EXPECT(e.code == "NCP_EDTYPE" && e.has("lin.weight") && e.has("F16"), e.code << " " << e.message);
  e = error_of([&] { kept.get_matrix("conv.weight", {2, 3}); });
  NCP_EXPECT(e.code == "NCP_ESHAPE" && e.has("[2, 3, 1, 1]") && e.has("[2, 3]"), e.code << " " << e.message);
  e = error_of([&] { kept.get_matrix("nope.weight", {2, 3}); });
  NCP_EXPECT(e.code == "NCP_EMISSING" && e.has("nope.weight"), e.code << " " << e.message);
}

NCP_TEST("load_weights: every missing, mis-shaped and extra tensor in one NCP_EWEIGHTS error") {
  TempDir dir;
  const std::vector<float> w(32 * 4 * 9, 0.5f), foo(3, 1.0f), ok(4, 2.0f);
  const std::string a = dir / "a.safetensors", b = dir / "b.safetensors";
  write_safetensors(a, {tensor("conv_in.weight", DType::F32, {32, 4, 3, 3}, w), tensor("ok", DType::F32, {4}, ok)});
  write_safetensors(b, {tensor("foo.bar", DType::F32, {3}, foo)});
  const Manifest manifest = {{"down_blocks.0.resnets.0.conv1.weight", {32, 32, 3, 3}},
                             {"conv_in.weight", {32, 8, 3, 3}},
                             {"ok", {4}}};
  const Caught e = error_of([&] { load_weights(manifest, {a, b}); });
  NCP_EXPECT(e.code == "NCP_EWEIGHTS", e.code << " " << e.message);
  const std::string first_line = e.message.substr(0, e.message.find('\n'));
  NCP_EXPECT(first_line.find(a) != std::string::npos && first_line.find(b) != std::string::npos &&
                 first_line.find("1 missing, 1 with the wrong shape, 1 extra") != std::string::npos,
             first_line);
  for (const char* line : {"\nmissing: down_blocks.0.resnets.0.conv1.weight [32, 32, 3, 3]",
                           "\nshape: conv_in.weight file [32, 4, 3, 3] expected [32, 8, 3, 3]",
                           "\nextra: foo.bar [3]"})
    NCP_EXPECT(e.has(line), "no line '" << line + 1 << "' in:\n" << e.message);
  NCP_EXPECT(std::count(e.message.begin(), e.message.end(), '\n') == 3, e.message);

  // The same tensor in two files is ambiguous, not silently first-wins.
  const Caught dup = error_of([&] { load_weights({{"ok", {4}}}, {a, a}); });
  NCP_EXPECT(dup.code == "NCP_EWEIGHTS" && dup.has("duplicate: ok"), dup.code << " " << dup.message);
}

// A diffusers unet/ folder in dir with the given weight files (name -> tensors) and a tiny config.
void make_unet_folder(const TempDir& dir, const std::vector<std::pair<std::string, std::vector<TensorData>>>& files,
                      const std::string& index_name = "", const std::string& index_json = "") {
  std::filesystem::create_directories(dir / "unet");
  write_file(dir / "unet/config.json", "{\"block_out_channels\": [8]}");
  for (const auto& f : files) write_safetensors(dir / ("unet/" + f.first), f.second);
  if (!index_name.empty()) write_file(dir / ("unet/" + index_name), index_json);
}

NCP_TEST("model_folder: a sharded index with two shards resolves and loads") {
  TempDir dir;
  const std::vector<float> x = {1, 2}, y = {3, 4, 5}, z = {6};
  const std::string index = R"({"metadata": {"total_size": 24}, "weight_map": {
      "x": "diffusion_pytorch_model-00001-of-00002.safetensors",
      "y": "diffusion_pytorch_model-00002-of-00002.safetensors",
      "z": "diffusion_pytorch_model-00001-of-00002.safetensors"}})";
  make_unet_folder(dir,
                   {{"diffusion_pytorch_model-00001-of-00002.safetensors",
                     {tensor("x", DType::F32, {2}, x), tensor("z", DType::F32, {1}, z)}},
                    {"diffusion_pytorch_model-00002-of-00002.safetensors", {tensor("y", DType::F32, {3}, y)}}},
                   "diffusion_pytorch_model.safetensors.index.json", index);
  const ComponentFiles files = resolve_unet_files(dir.path());
  NCP_EXPECT(files.weight_files.size() == 2 &&
                 files.weight_files[0] == dir / "unet/diffusion_pytorch_model-00001-of-00002.safetensors" &&
                 files.weight_files[1] == dir / "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
             files.weight_files.size());
  NCP_EXPECT(files.index_path == dir / "unet/diffusion_pytorch_model.safetensors.index.json", files.index_path);
  NCP_EXPECT(files.config_text == "{\"block_out_channels\": [8]}" && files.config_path == dir / "unet/config.json",
             files.config_text);
  const WeightMap m = load_weights({{"x", {2}}, {"y", {3}}, {"z", {1}}}, files.weight_files);
  NCP_EXPECT(std::vector<float>(m.get("y", {3}), m.get("y", {3}) + 3) == y && *m.get("z", {1}) == 6.0f,
             "shard contents");

  // An index that puts a tensor in a shard that lacks it.
  write_file(dir / "unet/diffusion_pytorch_model.safetensors.index.json",
             R"({"weight_map": {"x": "diffusion_pytorch_model-00002-of-00002.safetensors"}})");
  Caught e = error_of([&] { resolve_unet_files(dir.path()); });
  NCP_EXPECT(e.code == "NCP_EMISSING" && e.has("x (in diffusion_pytorch_model-00002-of-00002.safetensors)"),
             e.code << " " << e.message);
  write_file(dir / "unet/diffusion_pytorch_model.safetensors.index.json", R"({"weight_map": {"x": "../x"}})");
  e = error_of([&] { resolve_unet_files(dir.path()); });
  NCP_EXPECT(e.code == "NCP_EFORMAT" && e.has("\"../x\""), e.code << " " << e.message);
  write_file(dir / "unet/diffusion_pytorch_model.safetensors.index.json", R"({"weight_map": {"x": "gone.safetensors"}})");
  e = error_of([&] { resolve_unet_files(dir.path()); });
  NCP_EXPECT(e.code == "NCP_EIO" && e.has("gone.safetensors"), e.code << " " << e.message);
}

NCP_TEST("model_folder: plain weights first, then the fp16 variant; an asked-for variant only") {
  const std::vector<float> v = {1};
  const auto one = [&](const char* name) {
    return std::pair<std::string, std::vector<TensorData>>{name, {tensor("v", DType::F32, {1}, v)}};
  };
  {
    TempDir dir;
    make_unet_folder(dir, {one("diffusion_pytorch_model.fp16.safetensors")});
    NCP_EXPECT(resolve_unet_files(dir.path()).weight_files ==
                   std::vector<std::string>{dir / "unet/diffusion_pytorch_model.fp16.safetensors"},
               "fp16 alone not picked");
    const Caught e = error_of([&] { resolve_unet_files(dir.path(), "ema"); });
    NCP_EXPECT(e.code == "NCP_EIO" && e.has("diffusion_pytorch_model.ema.safetensors") &&
                   !e.has("diffusion_pytorch_model.fp16.safetensors"),
               e.code << " " << e.message);
  }
  {
    TempDir dir;
    make_unet_folder(dir, {one("diffusion_pytorch_model.fp16.safetensors"), one("diffusion_pytorch_model.safetensors")});
    NCP_EXPECT(resolve_unet_files(dir.path()).weight_files ==
                   std::vector<std::string>{dir / "unet/diffusion_pytorch_model.safetensors"},
               "plain not preferred");
    NCP_EXPECT(resolve_unet_files(dir.path(), "fp16").weight_files ==
                   std::vector<std::string>{dir / "unet/diffusion_pytorch_model.fp16.safetensors"},
               "asked-for variant not used");
  }
  {
    TempDir dir;
    make_unet_folder(dir, {});
    write_file(dir / "unet/diffusion_pytorch_model.bin", "pickle");
    const Caught e = error_of([&] { resolve_unet_files(dir.path()); });
    NCP_EXPECT(e.code == "NCP_EIO", e.code << " " << e.message);
    for (const char* s : {"diffusion_pytorch_model.safetensors, diffusion_pytorch_model.safetensors.index.json, "
                          "diffusion_pytorch_model.fp16.safetensors, diffusion_pytorch_model.fp16.safetensors.index.json",
                          "diffusion_pytorch_model.bin"})
      NCP_EXPECT(e.has(s), "no '" << s << "' in: " << e.message);
  }
  {
    TempDir dir;
    make_unet_folder(dir, {one("diffusion_pytorch_model.safetensors")});
    std::filesystem::remove(dir / "unet/config.json");
    const Caught e = error_of([&] { resolve_unet_files(dir.path()); });
    NCP_EXPECT(e.code == "NCP_EIO" && e.has("config.json"), e.code << " " << e.message);
  }
}

NCP_TEST("model_folder: the golden tiny-sd15 folder resolves and loads every tensor") {
  const ComponentFiles files = resolve_unet_files(golden_path("tiny-sd15"));
  NCP_EXPECT(files.weight_files.size() == 1 && files.index_path.empty(), files.weight_files.size());
  NCP_EXPECT(files.config_text.find("\"UNet2DConditionModel\"") != std::string::npos, files.config_path);
  Manifest manifest;
  {
    const SafetensorsFile f = SafetensorsFile::open(files.weight_files.at(0));
    for (const auto& t : f.tensors()) manifest.push_back({t.name, t.shape});
  }
  const WeightMap m = load_weights(manifest, files.weight_files);
  NCP_EXPECT(m.all().size() == 494, m.all().size());
  const float* w = m.get("conv_in.weight", {32, 4, 3, 3});
  NCP_EXPECT(w[0] == -0.005225496366620064f && w[1151] == 0.12210695445537567f, w[0] << " " << w[1151]);
}

}  // namespace
