#include "worker/engine/model/llama.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "worker/engine/model/activation_checkpoint.h"
#include "worker/engine/model/fused_attention.h"
#include "worker/engine/model/rope.h"
#include "worker/engine/model/swiglu.h"

namespace lora {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, torch::Dtype dtype) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}, torch::TensorOptions().dtype(dtype)));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (x.is_cuda() && x.scalar_type() == weight.scalar_type()) {
    // One fused kernel each way (fp32 statistics) instead of seven passes over the activations
    // in and out of fp32: on an H200 the unfused norms were a tenth of a 1B model's LoRA step.
    // It rounds once, after the weight, where HF rounds before it too: within one bf16 ulp,
    // and equal in fp32 up to rounding (RmsNormTest, gpu_test).
    return std::get<0>(at::_fused_rms_norm(x, {x.size(-1)}, weight, eps_));
  }
  // fp32 statistics whatever the activation dtype, cast back before the weight (HF order).
  torch::Tensor h = x.to(torch::kFloat32);
  h = h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * h.to(x.scalar_type());
}

TokenEmbeddingImpl::TokenEmbeddingImpl(int64_t vocab_size, int64_t dim, torch::Dtype dtype) {
  weight = register_parameter("weight",
                              torch::empty({vocab_size, dim}, torch::TensorOptions().dtype(dtype)));
}

torch::Tensor TokenEmbeddingImpl::forward(const torch::Tensor& ids) {
  return at::embedding(weight, ids);
}

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& c, torch::Dtype dtype)
    : num_heads_(c.num_attention_heads),
      num_kv_heads_(c.num_key_value_heads),
      head_dim_(c.head_dim) {
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  q_proj = register_module("q_proj",
                           Linear(LinearOptions{c.hidden_size, q_dim, c.attention_bias, dtype}));
  k_proj = register_module("k_proj",
                           Linear(LinearOptions{c.hidden_size, kv_dim, c.attention_bias, dtype}));
  v_proj = register_module("v_proj",
                           Linear(LinearOptions{c.hidden_size, kv_dim, c.attention_bias, dtype}));
  o_proj = register_module("o_proj",
                           Linear(LinearOptions{q_dim, c.hidden_size, c.o_proj_bias(), dtype}));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(c.head_dim, c.rms_norm_eps, dtype));
    k_norm = register_module("k_norm", RMSNorm(c.head_dim, c.rms_norm_eps, dtype));
  }
}

torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& mask) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3);
  const int64_t K = k.size(2), S = k.size(1), rep = H / K;
  // Group the query heads that share a kv head: [B, K, rep*T, d]. Head h uses kv head h / rep,
  // as transformers' repeat_kv does, without materializing repeated K/V.
  torch::Tensor qg = q.view({B, T, K, rep, d}).permute({0, 2, 3, 1, 4}).reshape({B, K, rep * T, d});
  torch::Tensor kt = k.permute({0, 2, 3, 1});  // [B, K, d, S]
  torch::Tensor vt = v.transpose(1, 2);        // [B, K, S, d]
  torch::Tensor scores = at::matmul(qg, kt).view({B, K, rep, T, S});
  scores = scores.mul(1.0 / std::sqrt(static_cast<double>(d)));
  scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  torch::Tensor probs = at::softmax(scores, -1, torch::kFloat32).to(v.scalar_type());
  torch::Tensor out = at::matmul(probs.view({B, K, rep * T, S}), vt);  // [B, K, rep*T, d]
  return out.view({B, K, rep, T, d}).permute({0, 3, 1, 2, 4}).reshape({B, T, H * d});
}

torch::Tensor SdpaAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& document_mask) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), d = q.size(3);
  // [B, heads, T, d] views; SDPA's enable_gqa maps query head h to kv head h / (H / K) without
  // repeating K and V. Plain causal attention takes the flash / memory-efficient kernels on
  // CUDA (and the flash kernel on the CPU); a packed-document mask needs a kernel with masks.
  std::optional<torch::Tensor> mask;
  if (document_mask.defined()) mask = document_mask;
  torch::Tensor out = at::scaled_dot_product_attention(
      q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, /*dropout_p=*/0.0,
      /*is_causal=*/!document_mask.defined(), /*scale=*/std::nullopt, /*enable_gqa=*/true);
  return out.transpose(1, 2).reshape({B, T, H * d});
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x_in, const AttentionContext& ctx) {
  const torch::Tensor x = tp_.enter ? tp_.enter(x_in) : x_in;
  const int64_t B = x.size(0), T = x.size(1);
  torch::Tensor q = q_proj(x).view({B, T, num_heads_, head_dim_});
  torch::Tensor k = k_proj(x).view({B, T, num_kv_heads_, head_dim_});
  torch::Tensor v = v_proj(x).view({B, T, num_kv_heads_, head_dim_});
  if (!q_norm.is_empty()) {
    q = q_norm(q);
    k = k_norm(k);
  }
  // Context parallelism refuses windows that bind (dist_trainer), so only the local paths
  // need the window's bounds.
  const bool window = sliding_ && (ctx.window_lo.defined() || ctx.window_mask.defined());
  torch::Tensor out;
  if (ctx.attend) {
    out = ctx.attend(q, k, v);
  } else if (ctx.lo.defined()) {
    if (ctx.gather_kv) {
      k = ctx.gather_kv(k);
      v = ctx.gather_kv(v);
    }
    const bool own_k = ctx.k_rope_cos.defined();
    RopeTables rope{ctx.rope_cos, ctx.rope_sin, own_k ? ctx.k_rope_cos : ctx.rope_cos,
                    own_k ? ctx.k_rope_sin : ctx.rope_sin};
    out = std::get<0>(FusedAttention(q, k, v, rope, window ? ctx.window_lo : ctx.lo, ctx.hi));
  } else {
    q = ApplyRope(q, ctx.cos.to(q.scalar_type()), ctx.sin.to(q.scalar_type()));
    k = ApplyRope(k, ctx.cos.to(k.scalar_type()), ctx.sin.to(k.scalar_type()));
    out = SdpaAttention(q, k, v, window ? ctx.window_mask : ctx.mask);
  }
  torch::Tensor y = o_proj(out.reshape({B, T, num_heads_ * head_dim_}));
  return tp_.exit ? tp_.exit(y) : y;
}

LlamaMlpImpl::LlamaMlpImpl(const LlamaConfig& c, torch::Dtype dtype) {
  gate_proj = register_module(
      "gate_proj", Linear(LinearOptions{c.hidden_size, c.intermediate_size, c.mlp_bias, dtype}));
  up_proj = register_module(
      "up_proj", Linear(LinearOptions{c.hidden_size, c.intermediate_size, c.mlp_bias, dtype}));
  down_proj = register_module(
      "down_proj", Linear(LinearOptions{c.intermediate_size, c.hidden_size, c.mlp_bias, dtype}));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x_in) {
  const torch::Tensor x = tp_.enter ? tp_.enter(x_in) : x_in;
  torch::Tensor g = gate_proj(x), u = up_proj(x);
  torch::Tensor y = down_proj(fused_swiglu_ ? SwiGlu(g, u) : SwiGluUnfused(g, u));
  return tp_.exit ? tp_.exit(y) : y;
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& c, torch::Dtype dtype) {
  input_layernorm =
      register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, dtype));
  self_attn = register_module("self_attn", LlamaAttention(c, dtype));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, dtype));
  mlp = register_module("mlp", LlamaMlp(c, dtype));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const AttentionContext& ctx) {
  torch::Tensor h = x + self_attn(input_layernorm(x), ctx);
  return h + mlp(post_attention_layernorm(h));
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& c, torch::Dtype dtype)
    : config_(c), fused_attention_(FusedAttentionFits(c)) {
  embed_tokens =
      register_module("embed_tokens", TokenEmbedding(c.vocab_size, c.hidden_size, dtype));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LlamaDecoderLayer layer(c, dtype);
    layer->self_attn->set_sliding(c.LayerIsSliding(i));
    layers->push_back(layer);
  }
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, dtype));
  inv_freq_ = RopeInverseFrequencies(c);
}

AttentionContext LlamaModelImpl::MakeAttentionContext(const ForwardInputs& inputs,
                                                      torch::Dtype dtype) const {
  const int64_t B = inputs.input_ids.size(0), T = inputs.input_ids.size(1);
  const auto device = inputs.input_ids.device();
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device);
  torch::Tensor positions =
      inputs.position_ids.defined() ? inputs.position_ids : torch::arange(T, i64);
  AttentionContext ctx;
  if (fused_attention_) {
    auto [cos, sin] = RopeCosSin(inv_freq_, positions, torch::kFloat32);
    ctx.rope_cos = cos.squeeze(2).contiguous();
    ctx.rope_sin = sin.squeeze(2).contiguous();
    torch::Tensor index = torch::arange(T, i64).unsqueeze(0).expand({B, T});
    ctx.hi = index.contiguous();
    if (inputs.document_ids.defined()) {
      // A token's first visible key is the first token of its document.
      const torch::Tensor& doc = inputs.document_ids;
      torch::Tensor starts =
          torch::ones({B, T}, torch::TensorOptions().dtype(torch::kBool).device(device));
      starts.narrow(1, 1, T - 1).copy_(doc.narrow(1, 1, T - 1).ne(doc.narrow(1, 0, T - 1)));
      ctx.lo = std::get<0>(torch::cummax(torch::where(starts, index, torch::zeros_like(index)), 1))
                   .contiguous();
    } else {
      ctx.lo = torch::zeros({B, T}, i64);
    }
    if (config_.SlidingWindowBinds(T)) {
      ctx.window_lo = torch::maximum(ctx.lo, index - (config_.sliding_window - 1)).contiguous();
    }
    return ctx;
  }
  std::tie(ctx.cos, ctx.sin) = RopeCosSin(inv_freq_, positions, dtype);
  if (inputs.document_ids.defined()) {
    torch::Tensor causal =
        torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(device)).tril();
    const torch::Tensor& doc = inputs.document_ids;              // [B, T]
    torch::Tensor same = doc.unsqueeze(2).eq(doc.unsqueeze(1));  // [B, T, T]
    ctx.mask = same.logical_and(causal).view({doc.size(0), 1, T, T});
  }  // else undefined: plain causal attention
  if (config_.SlidingWindowBinds(T)) {
    // transformers' overlay: key j is visible from query i when j > i - sliding_window.
    torch::Tensor band =
        torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(device))
            .tril()
            .triu(-(config_.sliding_window - 1));
    ctx.window_mask = ctx.mask.defined() ? ctx.mask.logical_and(band) : band.view({1, 1, T, T});
  }
  return ctx;
}

void LlamaModelImpl::set_fused_kernels(bool on) {
  set_fused_attention(on);
  for (const auto& layer : *layers) layer->as<LlamaDecoderLayer>()->mlp->set_fused_swiglu(on);
}

torch::Tensor LlamaModelImpl::Embed(const torch::Tensor& input_ids) {
  return embed_tokens(input_ids);
}

torch::Tensor LlamaModelImpl::RunLayers(torch::Tensor h, const AttentionContext& ctx, int64_t first,
                                        int64_t last) {
  const bool checkpoint =
      activation_checkpointing_ && is_training() && torch::GradMode::is_enabled();
  // Checkpointed layers only get a backward if their input requires grad (the embedding is
  // frozen, so make the first hidden state a graph input).
  if (checkpoint && !h.requires_grad()) h = h.detach().requires_grad_(true);
  for (int64_t i = first; i < last; ++i) {
    auto* decoder = layers[static_cast<size_t>(i)]->as<LlamaDecoderLayer>();
    if (checkpoint) {
      h = CheckpointedLayerForward(decoder, h, ctx, layer_hooks_.get(), static_cast<int>(i));
    } else {
      if (layer_hooks_ && layer_hooks_->before) layer_hooks_->before(static_cast<int>(i));
      h = decoder->forward(h, ctx);
      if (layer_hooks_ && layer_hooks_->after) layer_hooks_->after(static_cast<int>(i));
    }
  }
  return h;
}

torch::Tensor LlamaModelImpl::forward(const ForwardInputs& inputs) {
  torch::Tensor h = Embed(inputs.input_ids);
  AttentionContext ctx = MakeAttentionContext(inputs, h.scalar_type());
  return norm(RunLayers(h, ctx, 0, static_cast<int64_t>(layers->size())));
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const LlamaConfig& c, torch::Dtype dtype) : config_(c) {
  model = register_module("model", LlamaModel(c, dtype));
  if (!c.tie_word_embeddings) {
    lm_head = register_module("lm_head",
                              Linear(LinearOptions{c.hidden_size, c.vocab_size, false, dtype}));
  }
}

torch::Tensor LlamaForCausalLMImpl::Logits(const torch::Tensor& hidden) {
  if (lm_head.is_empty()) return at::linear(hidden, model->embed_tokens->weight);
  return lm_head(hidden);
}

torch::Tensor LlamaForCausalLMImpl::forward(const ForwardInputs& inputs) {
  return Logits(model(inputs));
}

void InitializeWeights(LlamaForCausalLMImpl& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double std = model.config().initializer_range;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    torch::Tensor p = item.value();
    if (name.find("lora_") != std::string::npos) continue;
    torch::Tensor init;
    if (name.find("norm.weight") != std::string::npos) {
      init = torch::ones(p.sizes(), torch::kFloat32);
    } else if (p.dim() == 1) {
      init = torch::zeros(p.sizes(), torch::kFloat32);  // biases
    } else {
      init = torch::empty(p.sizes(), torch::kFloat32).normal_(0.0, std, gen);
    }
    p.copy_(init);
  }
}

}  // namespace lora
