// Llama-family causal language model in LibTorch with Hugging Face module names, so that
// `named_parameters()` yields exactly the keys of a transformers checkpoint
// (`model.layers.0.self_attn.q_proj.weight`, ...).
//
//   LlamaForCausalLM model(config, torch::kFloat32);
//   InitializeWeights(*model, config, /*seed=*/0);
//   torch::Tensor logits = model(ForwardInputs{input_ids});   // [B, T, vocab]
//
// All projections are lora::Linear, so the LoRA converter can attach adapters in place.
#ifndef LORA_WORKER_ENGINE_MODEL_LLAMA_H_
#define LORA_WORKER_ENGINE_MODEL_LLAMA_H_

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "common/llama_config.h"
#include "worker/engine/lora/linear.h"

namespace lora {

struct ForwardInputs {
  torch::Tensor input_ids;     // int64 [B, T]
  torch::Tensor position_ids;  // optional int64 [T] or [B, T]; default 0..T-1
  // Optional int64 [B, T]: tokens attend only within their own document (packed sequences).
  torch::Tensor document_ids;
};

// What every attention layer of one forward pass shares.
struct AttentionContext {
  // Fused path: fp32 rotary tables [B or 1, T, head_dim] and, per query, the inclusive range of
  // keys it attends, int64 [B, T] each (causal, cut at document starts).
  torch::Tensor rope_cos, rope_sin;
  torch::Tensor lo, hi;
  // Portable path (SDPA): tables in the activation dtype [B or 1, T, 1, head_dim]; with packed
  // documents a bool mask [B, 1, T, T], true = may attend (undefined = plain causal).
  torch::Tensor cos, sin;
  torch::Tensor mask;
  // Layers with a sliding window (defined only when the window is shorter than the sequence):
  // the fused path's first visible key, and the portable path's mask (always defined then).
  torch::Tensor window_lo;
  torch::Tensor window_mask;
  // Context parallelism: rotary tables of the (gathered) keys when they differ from the
  // queries', and the all-gather that turns local K/V into the full sequence's.
  torch::Tensor k_rope_cos, k_rope_sin;
  std::function<torch::Tensor(const torch::Tensor&)> gather_kv;
  // Context parallelism by ring: when set, computes attention from the local (un-rotated)
  // q [B, T, H, d], k and v [B, T, K, d] in place of gather_kv + the fused kernel.
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>
      attend;
};

// Tensor-parallel entry/exit of a block (Megatron's f and g): identity forward / all-reduce
// backward on the way in, all-reduce forward / identity backward on the way out.
struct TensorParallelHooks {
  std::function<torch::Tensor(const torch::Tensor&)> enter;
  std::function<torch::Tensor(const torch::Tensor&)> exit;
};

// Called around a layer's forward and recomputation (FSDP gathers the layer's parameters in
// `before` and frees them in `after`).
struct LayerHooks {
  std::function<void(int layer)> before;
  std::function<void(int layer)> after;
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, torch::Dtype dtype);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Token embedding table; unlike torch::nn::Embedding it allocates without initializing, so
// building a model only to load a checkpoint into it costs no random-number generation.
class TokenEmbeddingImpl : public torch::nn::Module {
 public:
  TokenEmbeddingImpl(int64_t vocab_size, int64_t dim, torch::Dtype dtype);
  torch::Tensor forward(const torch::Tensor& ids);
  torch::Tensor weight;
};
TORCH_MODULE(TokenEmbedding);

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  LlamaAttentionImpl(const LlamaConfig& config, torch::Dtype dtype);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx);

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // qwen3 only

  // This layer attends within the config's sliding window.
  void set_sliding(bool on) { sliding_ = on; }
  bool sliding() const { return sliding_; }

  // Tensor parallelism: this rank computes `heads` query heads over `kv_heads` kv heads.
  void SetLocalHeads(int64_t heads, int64_t kv_heads) {
    num_heads_ = heads;
    num_kv_heads_ = kv_heads;
  }
  void SetTensorParallel(TensorParallelHooks hooks) { tp_ = std::move(hooks); }

 private:
  int64_t num_heads_, num_kv_heads_, head_dim_;
  bool sliding_ = false;
  TensorParallelHooks tp_;
};
TORCH_MODULE(LlamaAttention);

class LlamaMlpImpl : public torch::nn::Module {
 public:
  LlamaMlpImpl(const LlamaConfig& config, torch::Dtype dtype);
  torch::Tensor forward(const torch::Tensor& x);

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  void SetTensorParallel(TensorParallelHooks hooks) { tp_ = std::move(hooks); }
  // The fused CPU SwiGLU kernel (default) or LibTorch's element-wise ops (any device).
  void set_fused_swiglu(bool on) { fused_swiglu_ = on; }

 private:
  TensorParallelHooks tp_;
  bool fused_swiglu_ = true;
};
TORCH_MODULE(LlamaMlp);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  LlamaDecoderLayerImpl(const LlamaConfig& config, torch::Dtype dtype);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx);

  RMSNorm input_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  RMSNorm post_attention_layernorm{nullptr};
  LlamaMlp mlp{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

// Attention through LibTorch's scaled_dot_product_attention over already-rotated q [B, T, H, d],
// k and v [B, T, K, d] with GQA: causal when document_mask is undefined, else the boolean
// [B, 1, T, T] mask (causal within each packed document). Returns [B, T, H * d]. This is the
// portable path (any device); the CPU's fused kernel is the default there.
torch::Tensor SdpaAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& document_mask);

// Plain causal attention over already-rotated q [B, T, H, d], k and v [B, T, K, d] with GQA,
// from matmul and softmax: the reference the kernels are tested against.
// Returns [B, T, H * d].
torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& mask);

class LlamaModelImpl : public torch::nn::Module {
 public:
  LlamaModelImpl(const LlamaConfig& config, torch::Dtype dtype);
  // Returns the final normed hidden states [B, T, D].
  torch::Tensor forward(const ForwardInputs& inputs);
  // The pieces of forward, for pipeline stages: token embedding, layers [first, last), final norm.
  torch::Tensor Embed(const torch::Tensor& input_ids);
  torch::Tensor RunLayers(torch::Tensor h, const AttentionContext& ctx, int64_t first,
                          int64_t last);
  // Wraps every layer call (FSDP); with activation checkpointing the hooks also run around
  // the recomputation.
  void SetLayerHooks(std::shared_ptr<LayerHooks> hooks) { layer_hooks_ = std::move(hooks); }
  const torch::Tensor& inv_freq() const { return inv_freq_; }

  AttentionContext MakeAttentionContext(const ForwardInputs& inputs, torch::Dtype dtype) const;
  // Recompute each layer in the backward pass instead of keeping its activations.
  void set_activation_checkpointing(bool on) { activation_checkpointing_ = on; }
  // The fused CPU attention kernel (default) or the plain matmul/softmax reference.
  // (The fused kernel needs head_dim % 16 == 0; other shapes always take the portable path.)
  void set_fused_attention(bool on) { fused_attention_ = on && FusedAttentionFits(config_); }
  static bool FusedAttentionFits(const LlamaConfig& c) { return c.head_dim % 16 == 0; }
  bool fused_attention() const { return fused_attention_; }
  // Both fused CPU kernels (attention, SwiGLU) on, or the portable LibTorch ops that run on any
  // device (what a CUDA build computes with).
  void set_fused_kernels(bool on);

  TokenEmbedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};

 private:
  LlamaConfig config_;
  torch::Tensor inv_freq_;
  bool activation_checkpointing_ = false;
  bool fused_attention_ = true;
  std::shared_ptr<LayerHooks> layer_hooks_;
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  LlamaForCausalLMImpl(const LlamaConfig& config, torch::Dtype dtype);
  // Logits [B, T, vocab].
  torch::Tensor forward(const ForwardInputs& inputs);
  // Projects hidden states to logits (tied embeddings or lm_head).
  torch::Tensor Logits(const torch::Tensor& hidden);

  const LlamaConfig& config() const { return config_; }

  LlamaModel model{nullptr};
  Linear lm_head{nullptr};  // null when embeddings are tied

 private:
  LlamaConfig config_;
};
TORCH_MODULE(LlamaForCausalLM);

// HF initialization: linears and embeddings ~ N(0, initializer_range), biases 0, norms 1.
// Deterministic for a given seed regardless of dtype or thread count.
void InitializeWeights(LlamaForCausalLMImpl& model, uint64_t seed);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_LLAMA_H_
