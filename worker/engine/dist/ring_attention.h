// Ring attention for context parallelism: K/V blocks travel around the context-parallel group
// instead of being all-gathered, so a rank never holds more than two blocks of K/V at once.
//
// Rank r holds the queries and keys of its two sequence chunks (r and 2cp-1-r). In step s it
// attends its queries against the block owned by rank (r - s) mod cp with the fused kernel,
// while that block is already on its way to rank r + 1, and merges the partial result by its
// log-sum-exp (the online softmax). The backward walks the same ring: every rank computes its
// queries' contribution to the visiting block's dK/dV, adds it to the accumulator that travels
// with the block, and after cp steps every accumulator is back with its owner. Probabilities
// are recomputed from the final log-sum-exp, so each block's backward is exact.
//
//   RingPlan plan = MakeRingPlan(lo, hi, positions, inv_freq, cp, rank);   // per batch
//   torch::Tensor out = RingAttention(q, k, v, plan, group);               // differentiable
#ifndef LORA_WORKER_ENGINE_DIST_RING_ATTENTION_H_
#define LORA_WORKER_ENGINE_DIST_RING_ATTENTION_H_

#include <torch/types.h>

#include "worker/engine/dist/comm.h"

namespace lora::dist {

// What every layer's ring attention shares for one batch, in this rank's local layout.
struct RingPlan {
  torch::Tensor q_cos, q_sin;        // fp32 [1 or B, T/cp, d]: the local queries' RoPE
  torch::Tensor k_cos, k_sin;        // fp32 [cp, 1 or B, T/cp, d]: block s's keys' RoPE
  torch::Tensor block_lo, block_hi;  // int64 [cp, B, T/cp]: per query, the keys of block s it
                                     // attends, as an inclusive index range (lo > hi: none)
};

// `lo`, `hi`: the full batch's per-query inclusive key ranges in global indices [B, T];
// `positions`: RoPE positions [B, T] (or [1, T]); `inv_freq`: the model's rotary frequencies.
RingPlan MakeRingPlan(const torch::Tensor& lo, const torch::Tensor& hi,
                      const torch::Tensor& positions, const torch::Tensor& inv_freq, int cp,
                      int rank);

// q: [B, T/cp, H, d], k/v: [B, T/cp, K, d] (un-rotated, this rank's chunks). Returns the
// attention output [B, T/cp, H, d] in q's dtype; gradients flow to q, k and v. Partial results
// are merged in fp32; dK/dV accumulate in fp32 on their way around the ring.
torch::Tensor RingAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const RingPlan& plan, Group* group);

}  // namespace lora::dist

#endif  // LORA_WORKER_ENGINE_DIST_RING_ATTENTION_H_
