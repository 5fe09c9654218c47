#include "worker/engine/model/activation_checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/autograd.h>

namespace lora {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, torch::Tensor cos, torch::Tensor sin,
                               torch::Tensor mask, torch::Tensor rope_cos, torch::Tensor rope_sin, torch::Tensor lo,
                               torch::Tensor hi, int64_t layer_address) {
    auto* layer = reinterpret_cast<LlamaDecoderLayerImpl*>(layer_address);
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    ctx->saved_data["rng"] = gen.get_state();
    ctx->saved_data["layer"] = layer_address;
    ctx->save_for_backward({x, cos, sin, mask, rope_cos, rope_sin, lo, hi});
    torch::NoGradGuard no_grad;
    return layer->forward(x, AttentionContext{rope_cos, rope_sin, lo, hi, cos, sin, mask});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    auto* layer = reinterpret_cast<LlamaDecoderLayerImpl*>(ctx->saved_data["layer"].toInt());
    torch::Tensor x = saved[0].detach().requires_grad_(true);
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    torch::Tensor current_rng = gen.get_state();
    gen.set_state(ctx->saved_data["rng"].toTensor());
    torch::Tensor out;
    {
      torch::AutoGradMode enable(true);
      out = layer->forward(x, AttentionContext{saved[4], saved[5], saved[6], saved[7], saved[1], saved[2], saved[3]});
    }
    gen.set_state(current_rng);
    torch::autograd::backward({out}, {grad_outputs[0]});
    variable_list grads(9);
    grads[0] = x.grad();
    return grads;
  }
};

}  // namespace

torch::Tensor CheckpointedLayerForward(LlamaDecoderLayerImpl* layer, const torch::Tensor& x,
                                       const AttentionContext& ctx) {
  return CheckpointFunction::apply(x, ctx.cos, ctx.sin, ctx.mask, ctx.rope_cos, ctx.rope_sin, ctx.lo, ctx.hi,
                                   reinterpret_cast<int64_t>(layer));
}

}  // namespace lora
