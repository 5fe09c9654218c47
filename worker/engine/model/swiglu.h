// silu(gate) * up as one fused, differentiable operation (fp32 math, any float dtype): one pass
// over memory forward and one backward, instead of LibTorch's four bf16 element-wise kernels.
//
//   torch::Tensor h = SwiGlu(gate_proj(x), up_proj(x));
#ifndef LORA_WORKER_ENGINE_MODEL_SWIGLU_H_
#define LORA_WORKER_ENGINE_MODEL_SWIGLU_H_

#include <torch/types.h>

namespace lora {

torch::Tensor SwiGlu(const torch::Tensor& gate, const torch::Tensor& up);

// The same function from LibTorch element-wise ops (fp32 math), for devices the fused CPU
// kernel does not run on.
torch::Tensor SwiGluUnfused(const torch::Tensor& gate, const torch::Tensor& up);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_SWIGLU_H_
