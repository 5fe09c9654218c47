// Fused attention for CPU: rotary embedding + scaled dot-product attention + softmax, forward and
// backward, one (batch, head) task at a time with fp32 accumulation.
//
// Each query row i attends the keys j in [lo[b][i], hi[b][i]] (inclusive). Causal attention is
// lo = 0, hi = i; packed documents set lo to the document's first token; context parallelism
// passes the global index range. Nothing outside the range is computed, so causal attention
// costs half the square and packed documents less. No [T, T] score or mask tensor is ever
// materialized: the backward recomputes probabilities from the saved log-sum-exp (as
// FlashAttention does).
//
//   auto [out, lse] = FusedAttention(q, k, v, rope, lo, hi);   // differentiable in q, k, v
//
// q: [B, Tq, H, d], k/v: [B, Tk, K, d] (GQA: K divides H; head h reads kv head h / (H / K)),
// any float dtype, innermost dim contiguous. `rope` gives fp32 cos/sin tables for the query
// and key positions ([1 or B, T, d]); empty tensors skip the rotation (q, k already rotated).
#ifndef LORA_WORKER_ENGINE_MODEL_FUSED_ATTENTION_H_
#define LORA_WORKER_ENGINE_MODEL_FUSED_ATTENTION_H_

#include <torch/types.h>

#include <tuple>

namespace lora {

struct RopeTables {
  torch::Tensor q_cos, q_sin;  // fp32 [1 or B, Tq, d]
  torch::Tensor k_cos, k_sin;  // fp32 [1 or B, Tk, d]
};

// Differentiable (autograd Function). Returns out [B, Tq, H, d] in q's dtype and the fp32
// log-sum-exp of every row, [B, H, Tq] (-inf for a row with no keys).
std::tuple<torch::Tensor, torch::Tensor> FusedAttention(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const RopeTables& rope,
    const torch::Tensor& lo, const torch::Tensor& hi);

// The raw kernels (no autograd), exposed for tests and for ring attention.
std::tuple<torch::Tensor, torch::Tensor> FusedAttentionForward(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const RopeTables& rope,
    const torch::Tensor& lo, const torch::Tensor& hi);
// `delta` = rowsum(dout * out) in fp32 [B, H, Tq]; gradients are w.r.t. the un-rotated q and k.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> FusedAttentionBackward(
    const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
    const torch::Tensor& v, const RopeTables& rope, const torch::Tensor& lo,
    const torch::Tensor& hi, const torch::Tensor& lse, const torch::Tensor& delta);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_FUSED_ATTENTION_H_
