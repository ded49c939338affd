// runOp(name, inputs, attrs): forward of one CPU op on JS tensors, off the event loop. It exists for tools and
// tests that want a single op (checking a shape, comparing against another framework); the training loop never
// crosses N-API per op.
#include <functional>
#include <map>
#include <memory>

#include "cpu/ops.h"
#include "napi/async.h"
#include "napi/bindings.h"
#include "napi/tensor_args.h"

namespace ncp::napi {
namespace {

using Outputs = std::map<std::string, HostTensor>;
using Job = std::function<Outputs()>;
// A builder validates arguments on the JS thread and returns the job to run off it.
using Builder = std::function<Job(Napi::Env, const Napi::Object& in, const Napi::Object& attrs)>;

HostTensor make(std::vector<int64_t> shape) {
  HostTensor t;
  t.shape = std::move(shape);
  t.data.assign(size_t(numel(t.shape)), 0.0f);
  return t;
}

Job linear(Napi::Env env, const Napi::Object& in, const Napi::Object&) {
  auto x = read_tensor(env, in, "x"), W = read_tensor(env, in, "weight"), b = read_tensor(env, in, "bias", true);
  expect_rank(env, "linear", "weight", W, 2);
  if (x.shape.empty() || x.shape.back() != W.dim(1))
    throw_error(env, "NCP_ESHAPE", "linear: tensor 'x' has shape " + shape_str(x.shape) +
                                       ", its last dimension must equal weight's in-features " +
                                       std::to_string(W.dim(1)) + " (weight " + shape_str(W.shape) + ")");
  if (!b.shape.empty()) expect_shape(env, "linear", "bias", b, {W.dim(0)});
  return [x, W, b] {
    std::vector<int64_t> ys = x.shape;
    ys.back() = W.dim(0);
    HostTensor y = make(ys);
    cpu::linear_forward(y.data.data(), x.data.data(), W.data.data(), b.data.empty() ? nullptr : b.data.data(),
                        numel(x.shape) / W.dim(1), W.dim(1), W.dim(0));
    return Outputs{{"y", std::move(y)}};
  };
}

Job conv2d(Napi::Env env, const Napi::Object& in, const Napi::Object& attrs) {
  auto x = read_tensor(env, in, "x"), W = read_tensor(env, in, "weight"), b = read_tensor(env, in, "bias", true);
  expect_rank(env, "conv2d", "x", x, 4);
  expect_rank(env, "conv2d", "weight", W, 4);
  const int64_t k = W.dim(2), stride = int64_t(number_attr(env, attrs, "stride", 1)),
                pad = int64_t(number_attr(env, attrs, "padding", double(k / 2)));
  if (W.dim(3) != k || (k != 1 && k != 3))
    throw_error(env, "NCP_EUNSUPPORTED", "conv2d: weight shape " + shape_str(W.shape) + " is not a 1x1 or 3x3 kernel");
  if (stride != 1 && stride != 2) throw_error(env, "NCP_EUNSUPPORTED", "conv2d: stride must be 1 or 2");
  expect_shape(env, "conv2d", "weight", W, {W.dim(0), x.dim(1), k, k});
  if (!b.shape.empty()) expect_shape(env, "conv2d", "bias", b, {W.dim(0)});
  cpu::Conv2dShape s{x.dim(0), x.dim(1), x.dim(2), x.dim(3), W.dim(0), k, stride, pad};
  if (s.Ho() <= 0 || s.Wo() <= 0) throw_error(env, "NCP_ESHAPE", "conv2d: input " + shape_str(x.shape) + " is too small");
  return [x, W, b, s] {
    HostTensor y = make({s.N, s.Cout, s.Ho(), s.Wo()});
    cpu::conv2d_forward(y.data.data(), x.data.data(), W.data.data(), b.data.empty() ? nullptr : b.data.data(), s);
    return Outputs{{"y", std::move(y)}};
  };
}

Job group_norm(Napi::Env env, const Napi::Object& in, const Napi::Object& attrs) {
  auto x = read_tensor(env, in, "x"), g = read_tensor(env, in, "weight", true), b = read_tensor(env, in, "bias", true);
  if (x.shape.size() < 2) throw_error(env, "NCP_ESHAPE", "group_norm: tensor 'x' needs [N, C, ...], found " + shape_str(x.shape));
  const int64_t G = int64_t(number_attr(env, attrs, "groups", 32)), C = x.dim(1);
  if (G <= 0 || C % G != 0)
    throw_error(env, "NCP_EINVAL", "group_norm: " + std::to_string(C) + " channels do not split into " + std::to_string(G) + " groups");
  if (!g.shape.empty()) expect_shape(env, "group_norm", "weight", g, {C});
  if (!b.shape.empty()) expect_shape(env, "group_norm", "bias", b, {C});
  const double eps = number_attr(env, attrs, "eps", 1e-5);
  return [x, g, b, G, C, eps] {
    const int64_t N = x.dim(0), HW = numel(x.shape) / (N * C);
    HostTensor y = make(x.shape);
    std::vector<float> mean(size_t(N * G)), rstd(size_t(N * G));
    cpu::group_norm_forward(y.data.data(), mean.data(), rstd.data(), x.data.data(), g.data.empty() ? nullptr : g.data.data(),
                            b.data.empty() ? nullptr : b.data.data(), N, C, HW, G, eps);
    return Outputs{{"y", std::move(y)}};
  };
}

Job layer_norm(Napi::Env env, const Napi::Object& in, const Napi::Object& attrs) {
  auto x = read_tensor(env, in, "x"), g = read_tensor(env, in, "weight", true), b = read_tensor(env, in, "bias", true);
  if (x.shape.empty()) throw_error(env, "NCP_ESHAPE", "layer_norm: tensor 'x' must have at least one dimension");
  const int64_t C = x.shape.back();
  if (!g.shape.empty()) expect_shape(env, "layer_norm", "weight", g, {C});
  if (!b.shape.empty()) expect_shape(env, "layer_norm", "bias", b, {C});
  const double eps = number_attr(env, attrs, "eps", 1e-5);
  return [x, g, b, C, eps] {
    const int64_t rows = numel(x.shape) / std::max<int64_t>(C, 1);
    HostTensor y = make(x.shape);
    std::vector<float> mean(static_cast<size_t>(rows)), rstd(static_cast<size_t>(rows));
    cpu::layer_norm_forward(y.data.data(), mean.data(), rstd.data(), x.data.data(), g.data.empty() ? nullptr : g.data.data(),
                            b.data.empty() ? nullptr : b.data.data(), rows, C, eps);
    return Outputs{{"y", std::move(y)}};
  };
}

Job activation(Napi::Env env, const Napi::Object& in, const Napi::Object& attrs) {
  auto x = read_tensor(env, in, "x");
  const std::string kind = string_attr(env, attrs, "kind", "silu");
  static const std::map<std::string, cpu::Activation> kinds = {{"silu", cpu::Activation::SiLU},
                                                               {"gelu", cpu::Activation::GeluErf},
                                                               {"gelu_tanh", cpu::Activation::GeluTanh},
                                                               {"quick_gelu", cpu::Activation::QuickGelu}};
  auto it = kinds.find(kind);
  if (it == kinds.end())
    throw_error(env, "NCP_EINVAL", "activation: unknown kind '" + kind + "' (silu, gelu, gelu_tanh, quick_gelu)");
  const cpu::Activation a = it->second;
  return [x, a] {
    HostTensor y = make(x.shape);
    cpu::activation_forward(a, y.data.data(), x.data.data(), numel(x.shape));
    return Outputs{{"y", std::move(y)}};
  };
}

Job attention(Napi::Env env, const Napi::Object& in, const Napi::Object& attrs) {
  auto q = read_tensor(env, in, "q"), k = read_tensor(env, in, "k"), v = read_tensor(env, in, "v");
  expect_rank(env, "attention", "q", q, 3);
  expect_rank(env, "attention", "k", k, 3);
  const int64_t H = int64_t(number_attr(env, attrs, "heads", 1));
  if (H <= 0 || q.dim(2) % H != 0)
    throw_error(env, "NCP_EINVAL", "attention: " + std::to_string(q.dim(2)) + " channels do not split into " + std::to_string(H) + " heads");
  if (k.dim(0) != q.dim(0) || k.dim(2) != q.dim(2))
    throw_error(env, "NCP_ESHAPE", "attention: tensor 'k' has shape " + shape_str(k.shape) + ", expected [" +
                                       std::to_string(q.dim(0)) + ", Lk, " + std::to_string(q.dim(2)) + "] to match q " + shape_str(q.shape));
  expect_shape(env, "attention", "v", v, k.shape);
  cpu::AttentionShape s{q.dim(0), q.dim(1), k.dim(1), H, q.dim(2) / H, bool_attr(env, attrs, "causal", false)};
  return [q, k, v, s] {
    HostTensor out = make(q.shape);
    std::vector<float> probs(size_t(s.B * s.H * s.Lq * s.Lk));
    cpu::attention_forward(out.data.data(), probs.data(), q.data.data(), k.data.data(), v.data.data(), s);
    return Outputs{{"y", std::move(out)}};
  };
}

Job timestep_embedding(Napi::Env env, const Napi::Object& in, const Napi::Object& attrs) {
  auto t = read_tensor(env, in, "t");
  expect_rank(env, "timestep_embedding", "t", t, 1);
  const int64_t dim = int64_t(number_attr(env, attrs, "dim", 320));
  const bool flip = bool_attr(env, attrs, "flipSinToCos", true);
  const double shift = number_attr(env, attrs, "freqShift", 0);
  return [t, dim, flip, shift] {
    HostTensor y = make({t.dim(0), dim});
    cpu::timestep_embedding(y.data.data(), t.data.data(), t.dim(0), dim, flip, shift);
    return Outputs{{"y", std::move(y)}};
  };
}

const std::map<std::string, Builder>& builders() {
  static const std::map<std::string, Builder> table = {
      {"linear", linear},         {"conv2d", conv2d},       {"group_norm", group_norm},
      {"layer_norm", layer_norm}, {"activation", activation}, {"attention", attention},
      {"timestep_embedding", timestep_embedding}};
  return table;
}

Napi::Value RunOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsObject())
    throw_error(env, "NCP_EINVAL", "runOp(name, inputs, attrs?): name must be a string and inputs an object");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  auto it = builders().find(name);
  if (it == builders().end()) {
    std::string known;
    for (const auto& [k, _] : builders()) known += (known.empty() ? "" : ", ") + k;
    throw_error(env, "NCP_EINVAL", "runOp: unknown op '" + name + "' (known: " + known + ")");
  }
  Napi::Object attrs = info.Length() > 2 && info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
  Job job = it->second(env, info[1].As<Napi::Object>(), attrs);
  return PromiseWorker<Outputs>::Start(env, std::move(job), [](Napi::Env e, Outputs& out) -> Napi::Value {
    Napi::Object o = Napi::Object::New(e);
    for (const auto& [k, t] : out) o.Set(k, write_tensor(e, t));
    return o;
  });
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) { exports.Set("runOp", Napi::Function::New(env, RunOp, "runOp")); }

}  // namespace ncp::napi
