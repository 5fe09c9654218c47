#include "worker/engine/train/adamw.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"

namespace lora {

AdamW::AdamW(NamedTensors params, const AdamWOptions& options)
    : params_(std::move(params)), options_(options) {
  for (const auto& [name, p] : params_) {
    exp_avg_.push_back(torch::zeros_like(p, torch::kFloat32));
    exp_avg_sq_.push_back(torch::zeros_like(p, torch::kFloat32));
  }
}

void AdamW::Step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_;
  const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(step_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor p = params_[i].second;
    if (!p.grad().defined()) continue;
    torch::Tensor g = p.grad().to(torch::kFloat32);
    if (options_.weight_decay != 0) p.mul_(1.0 - lr * options_.weight_decay);
    exp_avg_[i].lerp_(g, 1.0 - options_.beta1);
    exp_avg_sq_[i].mul_(options_.beta2).addcmul_(g, g, 1.0 - options_.beta2);
    torch::Tensor denom = (exp_avg_sq_[i].sqrt() / bc2_sqrt).add_(options_.eps);
    p.addcdiv_(exp_avg_[i], denom, -step_size);
  }
}

NamedTensors AdamW::State() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(absl::StrCat("exp_avg.", params_[i].first), exp_avg_[i]);
    out.emplace_back(absl::StrCat("exp_avg_sq.", params_[i].first), exp_avg_sq_[i]);
  }
  return out;
}

absl::Status AdamW::LoadState(const NamedTensors& state, int64_t step) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string a = absl::StrCat("exp_avg.", params_[i].first);
    const std::string b = absl::StrCat("exp_avg_sq.", params_[i].first);
    auto ia = by_name.find(a), ib = by_name.find(b);
    if (ia == by_name.end() || ib == by_name.end()) {
      return absl::DataLossError(
          absl::StrCat("optimizer state has no moments for ", params_[i].first));
    }
    if (ia->second.sizes() != exp_avg_[i].sizes() || ib->second.sizes() != exp_avg_sq_[i].sizes()) {
      return absl::DataLossError(
          absl::StrCat("optimizer state for ", params_[i].first, " has the wrong shape"));
    }
    exp_avg_[i].copy_(ia->second);
    exp_avg_sq_[i].copy_(ib->second);
  }
  step_ = step;
  return absl::OkStatus();
}

double GradSquaredSum(const NamedTensors& params) {
  double total = 0;
  for (const auto& [name, p] : params) {
    if (p.grad().defined()) total += p.grad().to(torch::kFloat32).pow(2).sum().item<double>();
  }
  return total;
}

double ClipGradNorm(const NamedTensors& params, double max_norm) {
  return ClipGradientsToNorm(params, std::sqrt(GradSquaredSum(params)), max_norm);
}

double ClipGradientsToNorm(const NamedTensors& params, double norm, double max_norm) {
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    torch::NoGradGuard no_grad;
    for (const auto& [name, p] : params) {
      if (p.grad().defined()) p.grad().mul_(scale);
    }
  }
  return norm;
}

}  // namespace lora
