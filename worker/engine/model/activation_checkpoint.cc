#include "worker/engine/model/activation_checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/autograd.h>

namespace lora {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Custom Function inputs must be defined tensors: stand in an empty one for "absent".
torch::Tensor Present(const torch::Tensor& t) { return t.defined() ? t : torch::empty({0}); }
torch::Tensor Absent(const torch::Tensor& t) { return t.numel() == 0 ? torch::Tensor() : t; }

AttentionContext Rebuild(const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& mask,
                         const torch::Tensor& rope_cos, const torch::Tensor& rope_sin, const torch::Tensor& lo,
                         const torch::Tensor& hi) {
  return AttentionContext{Absent(rope_cos), Absent(rope_sin), Absent(lo), Absent(hi),
                          Absent(cos), Absent(sin), Absent(mask)};
}

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
    return layer->forward(x, Rebuild(cos, sin, mask, rope_cos, rope_sin, lo, hi));
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
      out = layer->forward(x, Rebuild(saved[1], saved[2], saved[3], saved[4], saved[5], saved[6], saved[7]));
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
  return CheckpointFunction::apply(x, Present(ctx.cos), Present(ctx.sin), Present(ctx.mask), Present(ctx.rope_cos),
                                   Present(ctx.rope_sin), Present(ctx.lo), Present(ctx.hi),
                                   reinterpret_cast<int64_t>(layer));
}

}  // namespace lora
