// The random-number state that dropout draws from, captured and restored as one value: the
// CPU generator and, when the computation runs on a GPU, that GPU's generator (CUDA draws
// dropout masks from its own Philox generator, not the CPU's).
//
//   RngState s = CaptureRng(x.device());   // before a forward that draws
//   ...
//   RestoreRng(s);                          // the same masks again (recomputation, resume)
#ifndef LORA_WORKER_ENGINE_MODEL_RNG_STATE_H_
#define LORA_WORKER_ENGINE_MODEL_RNG_STATE_H_

#include <torch/types.h>

namespace lora {

struct RngState {
  torch::Tensor cpu;   // always defined
  torch::Tensor cuda;  // defined when captured for a CUDA device
  int cuda_device = -1;
};

RngState CaptureRng(const torch::Device& device);
void RestoreRng(const RngState& state);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_RNG_STATE_H_
