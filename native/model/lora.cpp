#include "model/lora.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/dev_ops.h"
#include "model/rng.h"

namespace ncp::model {

void LoraAdapter::zero_grad() {
  std::fill(dA.begin(), dA.end(), 0.0f);
  std::fill(dB.begin(), dB.end(), 0.0f);
}

const float* LoraAdapter::a() const { return dev::on_cuda() ? dev_A : A.data(); }
const float* LoraAdapter::b() const { return dev::on_cuda() ? dev_B : B.data(); }
float* LoraAdapter::da() { return dev::on_cuda() ? dev_dA : dA.data(); }
float* LoraAdapter::db() { return dev::on_cuda() ? dev_dB : dB.data(); }

int64_t LoraPacking::size(const std::vector<LoraAdapter*>& adapters) {
  int64_t n = 0;
  for (const LoraAdapter* a : adapters) n += int64_t(a->A.size() + a->B.size());
  return n;
}

void LoraPacking::pack_params(const std::vector<LoraAdapter*>& adapters, float* dst) {
  for (const LoraAdapter* a : adapters) {
    dst = std::copy(a->A.begin(), a->A.end(), dst);
    dst = std::copy(a->B.begin(), a->B.end(), dst);
  }
}

void LoraPacking::add_grads(const std::vector<LoraAdapter*>& adapters, const float* src) {
  for (LoraAdapter* a : adapters) {
    for (float& g : a->dA) g += *src++;
    for (float& g : a->dB) g += *src++;
  }
}

void LoraPacking::bind(const std::vector<LoraAdapter*>& adapters, float* params, float* grads) {
  for (LoraAdapter* a : adapters) {
    const int64_t na = int64_t(a->A.size()), nb = int64_t(a->B.size());
    if (params) a->dev_A = params, a->dev_B = params + na, params += na + nb;
    if (grads) a->dev_dA = grads, a->dev_dB = grads + na, grads += na + nb;
  }
}

std::vector<std::string> default_lora_targets() { return {"to_q", "to_k", "to_v", "to_out.0"}; }

bool is_lora_target(const std::string& module, const std::vector<std::string>& targets) {
  for (const std::string& t : targets) {
    if (module.size() < t.size() + 1) continue;
    if (module.compare(module.size() - t.size(), t.size(), t) == 0 && module[module.size() - t.size() - 1] == '.')
      return true;
  }
  return false;
}

LoraAdapter& LoraSet::add(const std::string& module, int64_t rank, int64_t in, int64_t out, float alpha) {
  check(rank >= 1 && in >= 1 && out >= 1, "NCP_EINVAL",
        "LoRA " + module + ": rank " + std::to_string(rank) + " and features must be >= 1");
  check(!index_.count(module), "NCP_EINVAL", "LoRA " + module + ": adapter added twice");
  auto a = std::make_unique<LoraAdapter>();
  a->module = module, a->rank = rank, a->in = in, a->out = out, a->alpha = alpha;
  a->A.assign(size_t(rank * in), 0.0f), a->dA.assign(a->A.size(), 0.0f);
  a->B.assign(size_t(out * rank), 0.0f), a->dB.assign(a->B.size(), 0.0f);
  LoraAdapter& ref = *a;
  index_[module] = a.get();
  adapters_.push_back(std::move(a));
  return ref;
}

LoraAdapter* LoraSet::find(const std::string& module) {
  auto it = index_.find(module);
  return it == index_.end() ? nullptr : it->second;
}

void LoraSet::init(LoraInit init, uint64_t seed) {
  Rng rng(seed);
  for (auto& a : adapters_) {
    if (init == LoraInit::Gaussian) {
      const float sd = 1.0f / std::sqrt(float(a->rank));
      for (float& v : a->A) v = sd * float(rng.normal());
    } else {
      const double bound = std::sqrt(6.0 / (6.0 * double(a->in)));
      for (float& v : a->A) v = float((2.0 * rng.uniform() - 1.0) * bound);
    }
    std::fill(a->B.begin(), a->B.end(), 0.0f);
  }
}

void LoraSet::zero_grad() {
  for (auto& a : adapters_) a->zero_grad();
}

int64_t LoraSet::num_params() const {
  int64_t n = 0;
  for (const auto& a : adapters_) n += int64_t(a->A.size() + a->B.size());
  return n;
}

}  // namespace ncp::model
