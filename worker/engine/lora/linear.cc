#include "worker/engine/lora/linear.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace lora {

double LoraScale(double alpha, int64_t rank, bool use_rslora) {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank))
                    : alpha / static_cast<double>(rank);
}

LinearImpl::LinearImpl(const LinearOptions& options) : options_(options) {
  auto tensor_options = torch::TensorOptions().dtype(options.dtype);
  weight = register_parameter(
      "weight", torch::empty({options.out_features, options.in_features}, tensor_options));
  if (options.bias) {
    bias = register_parameter("bias", torch::zeros({options.out_features}, tensor_options));
  }
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = at::linear(x, weight, bias);
  if (lora_a.is_empty() || merged_) return y;
  torch::Tensor h = x;
  if (dropout_ > 0.0 && is_training()) h = at::dropout(h, dropout_, /*train=*/true);
  // Adapters keep fp32 master weights; compute in the activation dtype (bf16 under mixed
  // precision). The cast is part of the graph, so gradients reach the fp32 weights.
  torch::Tensor a = lora_a->weight, b = lora_b->weight;
  if (a.scalar_type() != h.scalar_type()) {
    a = a.to(h.scalar_type());
    b = b.to(h.scalar_type());
  }
  if (use_dora()) {
    // PEFT's arithmetic: y + (k - 1) * base + k * s * B A h, k = m / ||W + s B A|| per output;
    // base is W x without bias, or W h when dropout changed h (as PEFT recomputes it).
    const torch::Tensor k = (lora_magnitude / AdaptedRowNorms()).to(h.scalar_type());
    const bool dropped = dropout_ > 0.0 && is_training();
    torch::Tensor base = dropped ? at::linear(h, weight) : (bias.defined() ? y - bias : y);
    torch::Tensor lora = at::linear(at::linear(h, a), b);
    return y + (k - 1) * base + k * lora * scale_;
  }
  // y + s * (h A^T) B^T as one GEMM accumulating into the base output (no separate add/scale
  // kernels forward or backward).
  torch::Tensor ha = at::linear(h, a);
  const int64_t out = y.size(-1);
  torch::Tensor fused =
      at::addmm(y.reshape({-1, out}), ha.reshape({-1, ha.size(-1)}), b.t(), 1.0, scale_);
  return fused.view(y.sizes());
}

void LinearImpl::AttachAdapter(const AdapterOptions& options) {
  if (has_adapter()) throw std::logic_error("LoRA adapter already attached");
  if (options.rank <= 0) throw std::invalid_argument("LoRA rank must be > 0");
  rank_ = options.rank;
  scale_ = LoraScale(options.alpha, options.rank, options.use_rslora);
  alpha_ = options.alpha;
  use_rslora_ = options.use_rslora;
  dropout_ = options.dropout;
  lora_a = register_module(
      "lora_a", Linear(LinearOptions{options_.in_features, options.rank, false, options.dtype}));
  lora_b = register_module(
      "lora_b", Linear(LinearOptions{options.rank, options_.out_features, false, options.dtype}));
  torch::NoGradGuard no_grad;
  // Initialize in fp32 with an explicit generator so results do not depend on the dtype or on
  // global RNG state; B = 0 keeps the converted model equal to the base at step 0.
  torch::Tensor a = torch::empty({options.rank, options_.in_features}, torch::kFloat32);
  if (options.init == LoraInit::kKaiming) {
    // kaiming_uniform(a=sqrt(5)): bound = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)).
    const double gain = std::sqrt(2.0 / (1.0 + 5.0));
    const double bound = gain * std::sqrt(3.0 / static_cast<double>(options_.in_features));
    a.uniform_(-bound, bound, options.generator);
  } else {
    a.normal_(0.0, 1.0 / static_cast<double>(options.rank), options.generator);
  }
  lora_a->weight.copy_(a);
  lora_b->weight.zero_();
  if (options.use_dora) {
    lora_magnitude = register_parameter(
        "lora_magnitude_vector",
        at::linalg_vector_norm(weight.to(torch::kFloat32), 2, {1}).to(options.dtype));
  }
}

torch::Tensor LinearImpl::AdaptedRowNorms() const {
  torch::NoGradGuard no_grad;
  return at::linalg_vector_norm(weight.to(torch::kFloat32) + DeltaWeight(), 2, {1});
}

torch::Tensor LinearImpl::DeltaWeight() const {
  if (!has_adapter()) return torch::zeros_like(weight, torch::kFloat32);
  return at::matmul(lora_b->weight.to(torch::kFloat32), lora_a->weight.to(torch::kFloat32)) *
         scale_;
}

void LinearImpl::Merge() {
  if (!has_adapter() || merged_) return;
  torch::NoGradGuard no_grad;
  torch::Tensor adapted = weight.to(torch::kFloat32) + DeltaWeight();
  if (use_dora()) {
    // W' = (m / ||W + s B A||) (W + s B A), per output row, as PEFT's merge_and_unload.
    merged_scale_ = lora_magnitude.to(torch::kFloat32) / AdaptedRowNorms();
    adapted.mul_(merged_scale_.unsqueeze(1));
  }
  weight.copy_(adapted);
  merged_ = true;
}

void LinearImpl::Unmerge() {
  if (!has_adapter() || !merged_) return;
  torch::NoGradGuard no_grad;
  torch::Tensor w = weight.to(torch::kFloat32);
  if (use_dora()) w.div_(merged_scale_.unsqueeze(1));
  weight.copy_(w - DeltaWeight());
  merged_ = false;
}

}  // namespace lora
