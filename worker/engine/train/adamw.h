// AdamW over a fixed list of parameters, with state we can checkpoint and restore bitwise.
//
// Same update as torch.optim.AdamW (decoupled weight decay, bias-corrected moments):
//   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
//   AdamW opt(named_trainable, {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0});
//   opt.Step(lr);                       // uses p.grad()
//   NamedTensors state = opt.State();   // for checkpoints; LoadState(state) restores it
#ifndef LORA_WORKER_ENGINE_TRAIN_ADAMW_H_
#define LORA_WORKER_ENGINE_TRAIN_ADAMW_H_

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class AdamW {
 public:
  AdamW(NamedTensors params, const AdamWOptions& options);

  // One update with learning rate `lr`. Parameters without a gradient are skipped.
  void Step(double lr);
  int64_t step_count() const { return step_; }

  // "exp_avg.<name>", "exp_avg_sq.<name>" for every parameter.
  NamedTensors State() const;
  absl::Status LoadState(const NamedTensors& state, int64_t step);

  const NamedTensors& params() const { return params_; }

 private:
  NamedTensors params_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  AdamWOptions options_;
  int64_t step_ = 0;
};

// Global L2 norm of the gradients (fp32 per tensor, fp64 across tensors); scales them so the
// norm is at most `max_norm` when max_norm > 0. Returns the norm before clipping as a 0-dim
// fp64 tensor on the gradients' device: nothing here waits for the device, so the caller
// reads the value (`.item<double>()`) only when it logs it.
torch::Tensor ClipGradNorm(const NamedTensors& params, double max_norm);

// The clipping step alone, for a `norm` computed elsewhere (e.g. summed over ranks): scales
// the gradients to max_norm when it is exceeded (max_norm <= 0: never). Returns `norm`.
torch::Tensor ClipGradientsToNorm(const NamedTensors& params, const torch::Tensor& norm,
                                  double max_norm);

// Sum of squared gradient entries (0-dim fp64 tensor on the gradients' device), for callers
// that combine norms across ranks.
torch::Tensor GradSquaredSum(const NamedTensors& params);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_ADAMW_H_
