// A Linear layer that can carry a LoRA adapter.
//
// torchtitan converts a Linear by swapping its class for a LoRA subclass. LibTorch's
// torch::nn::LinearImpl::forward is not virtual and a parent keeps a typed holder to it, so an
// in-place class swap cannot work in C++. Instead every projection in our models is this
// Linear, which behaves exactly like torch::nn::Linear until an adapter is attached:
//
//   Linear proj(LinearOptions{/*in=*/256, /*out=*/512, /*bias=*/false});
//   proj->AttachAdapter({.rank = 8, .alpha = 16});
//   // state dict: weight (unchanged key), lora_a.weight [r, in], lora_b.weight [out, r]
//   y = proj(x);  // W x + b + s * B(A(dropout(x)))
//
// DoRA (AttachAdapter with use_dora): a magnitude vector m [out] (`lora_magnitude_vector`, as
// PEFT names it) rescales each output row of the adapted weight V = W + s B A to length m:
//   y = (m / ||V||_row) * (W x + s B A x) + b,  ||V||_row detached (DoRA paper, section 4.3),
// with m initialised to ||W||_row so that the converted model still equals the base.
//
// The adapter factors are child Linears named `lora_a` and `lora_b` (no bias), mirroring the
// torchtitan converter, so a base checkpoint still loads into a converted model.
#ifndef LORA_WORKER_ENGINE_LORA_LINEAR_H_
#define LORA_WORKER_ENGINE_LORA_LINEAR_H_

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <c10/util/Optional.h>
#include <cstdint>

namespace lora {

struct LinearOptions {
  int64_t in_features = 0;
  int64_t out_features = 0;
  bool bias = false;
  torch::Dtype dtype = torch::kFloat32;
};

enum class LoraInit { kKaiming, kGaussian };

struct AdapterOptions {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  bool use_rslora = false;
  bool use_dora = false;
  LoraInit init = LoraInit::kKaiming;
  // Adapter parameter dtype; float32 keeps master weights exact under mixed precision.
  torch::Dtype dtype = torch::kFloat32;
  c10::optional<at::Generator> generator;  // for reproducible init
};

// Scaling factor applied to B(A(x)): alpha / r, or alpha / sqrt(r) with rsLoRA.
double LoraScale(double alpha, int64_t rank, bool use_rslora);

class LinearImpl : public torch::nn::Module {
 public:
  explicit LinearImpl(const LinearOptions& options);

  torch::Tensor forward(const torch::Tensor& x);

  // Adds lora_a / lora_b children. Base weight and bias are left as they are (the converter
  // freezes them). Calling it twice is an error.
  void AttachAdapter(const AdapterOptions& options);
  bool has_adapter() const { return !lora_a.is_empty(); }
  int64_t rank() const { return rank_; }
  double scale() const { return scale_; }
  double alpha() const { return alpha_; }
  bool use_rslora() const { return use_rslora_; }
  bool use_dora() const { return lora_magnitude.defined(); }
  double dropout() const { return dropout_; }

  // W += s * B @ A in fp32 then cast to W's dtype; forward then skips the adapter path.
  void Merge();
  // W -= s * B @ A, the inverse of Merge (exact up to W's dtype rounding).
  void Unmerge();
  bool merged() const { return merged_; }

  // The weight update this adapter represents, s * B @ A, in fp32.
  torch::Tensor DeltaWeight() const;
  // ||W + s B A|| of each output row, fp32 [out], no gradient (DoRA's denominator).
  torch::Tensor AdaptedRowNorms() const;

  const LinearOptions& options() const { return options_; }

  torch::Tensor weight;
  torch::Tensor bias;  // undefined when options.bias is false
  // Adapter factors; empty holders until AttachAdapter. Declared as holders of this same class
  // so that their parameters are plain `weight`s, matching the checkpoint keys.
  torch::nn::ModuleHolder<LinearImpl> lora_a{nullptr};
  torch::nn::ModuleHolder<LinearImpl> lora_b{nullptr};
  torch::Tensor lora_magnitude;  // DoRA only: [out], fp32 (adapter dtype)

 private:
  LinearOptions options_;
  int64_t rank_ = 0;
  double scale_ = 0.0;
  double alpha_ = 0.0;
  bool use_rslora_ = false;
  double dropout_ = 0.0;
  bool merged_ = false;
  torch::Tensor merged_scale_;  // DoRA: m / ||W + s B A|| at Merge, for Unmerge
};

TORCH_MODULE(Linear);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_LORA_LINEAR_H_
