#include "worker/engine/model/activation_checkpoint.h"

#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "worker/engine/model/rng_state.h"

namespace lora {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What the backward needs besides the input: the layer, its attention context (rotary tables,
// ranges, the context-parallel gather) and the hooks. Kept in a capsule in the autograd context.
struct Recompute : torch::CustomClassHolder {
  LlamaDecoderLayerImpl* layer = nullptr;
  AttentionContext ctx;
  const LayerHooks* hooks = nullptr;
  int index = 0;
  RngState rng_state;

  torch::Tensor Run(const torch::Tensor& x) const {
    if (hooks && hooks->before) hooks->before(index);
    torch::Tensor out = layer->forward(x, ctx);
    return out;
  }
  void Done() const {
    if (hooks && hooks->after) hooks->after(index);
  }
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, c10::IValue recompute) {
    auto r = c10::static_intrusive_pointer_cast<Recompute>(recompute.toCapsule());
    r->rng_state = CaptureRng(x.device());
    ctx->saved_data["recompute"] = recompute;
    ctx->save_for_backward({x});
    torch::NoGradGuard no_grad;
    torch::Tensor out = r->Run(x);
    r->Done();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto r =
        c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["recompute"].toCapsule());
    torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    const RngState current_rng = CaptureRng(x.device());
    RestoreRng(r->rng_state);  // the same dropout masks as the forward
    torch::Tensor out;
    {
      torch::AutoGradMode enable(true);
      out = r->Run(x);
    }
    RestoreRng(current_rng);
    torch::autograd::backward({out}, {grad_outputs[0]});
    r->Done();
    return {x.grad(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CheckpointedLayerForward(LlamaDecoderLayerImpl* layer, const torch::Tensor& x,
                                       const AttentionContext& ctx, const LayerHooks* hooks,
                                       int layer_index) {
  auto r = c10::make_intrusive<Recompute>();
  r->layer = layer;
  r->ctx = ctx;
  r->hooks = hooks;
  r->index = layer_index;
  return CheckpointFunction::apply(x, c10::IValue::make_capsule(r));
}

}  // namespace lora
