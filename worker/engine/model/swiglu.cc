#include "worker/engine/model/swiglu.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstring>

#include "worker/engine/model/cpu_kernels.h"

namespace lora {
namespace {

constexpr int64_t kChunk = 1024;

// sigmoid(x) = 1 / (1 + exp(-x)) with the vectorizable exp.
inline float Sigmoid(float x) { return 1.0f / (1.0f + FastExp(-x)); }

LORA_MULTIVERSION void ForwardChunk(const float* g, const float* u, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] * Sigmoid(g[i]) * u[i];
}

LORA_MULTIVERSION void BackwardChunk(const float* g, const float* u, const float* dy, float* dg,
                                     float* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = Sigmoid(g[i]);
    const float silu = g[i] * s;
    du[i] = dy[i] * silu;
    dg[i] = dy[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
  }
}

template <typename T>
void Load(const T* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
template <typename T>
void Store(const float* src, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

torch::Tensor Forward(const torch::Tensor& gate, const torch::Tensor& up) {
  torch::Tensor out = torch::empty_like(gate);
  const int64_t n = gate.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, gate.scalar_type(), "SwiGluForward", [&] {
        const scalar_t* gp = gate.data_ptr<scalar_t>();
        const scalar_t* up_p = up.data_ptr<scalar_t>();
        scalar_t* op = out.data_ptr<scalar_t>();
        at::parallel_for(0, (n + kChunk - 1) / kChunk, 16, [&](int64_t begin, int64_t end) {
          float g[kChunk], u[kChunk], y[kChunk];
          for (int64_t c = begin; c < end; ++c) {
            const int64_t off = c * kChunk, len = std::min(kChunk, n - off);
            Load(gp + off, len, g);
            Load(up_p + off, len, u);
            ForwardChunk(g, u, y, len);
            Store(y, len, op + off);
          }
        });
      });
  return out;
}

class SwiGluFunction : public torch::autograd::Function<SwiGluFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor gate,
                               torch::Tensor up) {
    gate = gate.contiguous();
    up = up.contiguous();
    ctx->save_for_backward({gate, up});
    return Forward(gate, up);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor& gate = saved[0];
    const torch::Tensor& up = saved[1];
    torch::Tensor dy = grads[0].to(gate.scalar_type()).contiguous();
    torch::Tensor dgate = torch::empty_like(gate), dup = torch::empty_like(up);
    const int64_t n = gate.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, gate.scalar_type(), "SwiGluBackward", [&] {
          const scalar_t* gp = gate.data_ptr<scalar_t>();
          const scalar_t* up_p = up.data_ptr<scalar_t>();
          const scalar_t* dyp = dy.data_ptr<scalar_t>();
          scalar_t* dgp = dgate.data_ptr<scalar_t>();
          scalar_t* dup_p = dup.data_ptr<scalar_t>();
          at::parallel_for(0, (n + kChunk - 1) / kChunk, 16, [&](int64_t begin, int64_t end) {
            float g[kChunk], u[kChunk], d[kChunk], dg[kChunk], du[kChunk];
            for (int64_t c = begin; c < end; ++c) {
              const int64_t off = c * kChunk, len = std::min(kChunk, n - off);
              Load(gp + off, len, g);
              Load(up_p + off, len, u);
              Load(dyp + off, len, d);
              BackwardChunk(g, u, d, dg, du, len);
              Store(dg, len, dgp + off);
              Store(du, len, dup_p + off);
            }
          });
        });
    return {dgate, dup};
  }
};

}  // namespace

torch::Tensor SwiGlu(const torch::Tensor& gate, const torch::Tensor& up) {
  TORCH_CHECK(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type(),
              "SwiGlu: gate/up mismatch");
  return SwiGluFunction::apply(gate, up);
}

torch::Tensor SwiGluUnfused(const torch::Tensor& gate, const torch::Tensor& up) {
  return (at::silu(gate.to(torch::kFloat32)) * up.to(torch::kFloat32)).to(gate.scalar_type());
}

}  // namespace lora
