#include "worker/engine/dist/ring_attention.h"

#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>

#include <limits>

#include "worker/engine/dist/collectives.h"
#include "worker/engine/model/fused_attention.h"
#include "worker/engine/model/rope.h"

namespace lora::dist {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Tags of the ring's messages (the CP group carries nothing else point-to-point).
constexpr int kForwardBlockTag = 7101;
constexpr int kBackwardBlockTag = 7102;
constexpr int kBackwardGradTag = 7103;

// Folds one block's normalized output `o` and log-sum-exp `l` into the running (acc, lse):
// the online softmax. Rows that have attended nothing yet carry lse = -inf and weight 0.
void Merge(torch::Tensor& acc, torch::Tensor& lse, const torch::Tensor& o, const torch::Tensor& l) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  torch::Tensor m = torch::maximum(lse, l);
  torch::Tensor shift = torch::where(torch::isinf(m), torch::zeros_like(m), m);
  torch::Tensor merged = shift + torch::log(torch::exp(lse - shift) + torch::exp(l - shift));
  auto weight = [&](const torch::Tensor& x) {  // [B, H, T] -> [B, T, H, 1]
    torch::Tensor w = torch::where(merged == neg_inf, torch::zeros_like(x), torch::exp(x - merged));
    return w.permute({0, 2, 1}).unsqueeze(-1);
  };
  acc = acc * weight(lse) + o.to(torch::kFloat32) * weight(l);
  lse = merged;
}

struct Ring {
  Group* group;
  int cp, rank, next, prev;
  explicit Ring(Group* g)
      : group(g),
        cp(g->size()),
        rank(g->rank()),
        next((g->rank() + 1) % g->size()),
        prev((g->rank() + g->size() - 1) % g->size()) {}
  int OwnerAt(int step) const { return (rank - step + cp) % cp; }
  // Sends `t` on to the next rank and posts the receive of the previous rank's, returned (valid
  // after group->Flush()), so the transfer overlaps whatever runs until then.
  torch::Tensor PassOn(const torch::Tensor& t, int tag) const {
    torch::Tensor incoming = torch::empty_like(t);
    group->Send(t, next, tag);
    group->PostRecv(incoming, prev, tag);
    return incoming;
  }
};

RopeTables BlockRope(const torch::Tensor& q_cos, const torch::Tensor& q_sin,
                     const torch::Tensor& k_cos, const torch::Tensor& k_sin, int owner) {
  return RopeTables{q_cos, q_sin, k_cos[owner], k_sin[owner]};
}

class RingAttentionFn : public torch::autograd::Function<RingAttentionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor q, torch::Tensor k,
                               torch::Tensor v, torch::Tensor q_cos, torch::Tensor q_sin,
                               torch::Tensor k_cos, torch::Tensor k_sin, torch::Tensor block_lo,
                               torch::Tensor block_hi, int64_t group) {
    const Ring ring(reinterpret_cast<Group*>(group));
    torch::Tensor block = torch::stack({k, v}).contiguous();  // [2, B, T/cp, K, d]
    torch::Tensor acc = torch::zeros(q.sizes(), q.options().dtype(torch::kFloat32));
    torch::Tensor lse =
        torch::full({q.size(0), q.size(2), q.size(1)}, -std::numeric_limits<float>::infinity(),
                    q.options().dtype(torch::kFloat32));
    for (int step = 0; step < ring.cp; ++step) {
      const int owner = ring.OwnerAt(step);
      const bool more = step + 1 < ring.cp;
      // The next block streams in while this one is computed.
      torch::Tensor incoming = more ? ring.PassOn(block, kForwardBlockTag) : torch::Tensor();
      auto [o, l] =
          FusedAttentionForward(q, block[0], block[1], BlockRope(q_cos, q_sin, k_cos, k_sin, owner),
                                block_lo[owner], block_hi[owner]);
      Merge(acc, lse, o, l);
      if (more) {
        ring.group->Flush();
        block = incoming;
      }
    }
    torch::Tensor out = acc.to(q.scalar_type());
    ctx->saved_data["group"] = group;
    ctx->save_for_backward({q, k, v, q_cos, q_sin, k_cos, k_sin, block_lo, block_hi, out, lse});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Ring ring(reinterpret_cast<Group*>(ctx->saved_data["group"].toInt()));
    auto s = ctx->get_saved_variables();
    const torch::Tensor &q = s[0], &k = s[1], &v = s[2], &out = s[9], &lse = s[10];
    torch::Tensor dout = grads[0].to(q.scalar_type()).contiguous();
    torch::Tensor delta = (dout.to(torch::kFloat32) * out.to(torch::kFloat32))
                              .sum(-1)
                              .permute({0, 2, 1})
                              .contiguous();
    torch::Tensor dq = torch::zeros(q.sizes(), q.options().dtype(torch::kFloat32));
    torch::Tensor block = torch::stack({k, v}).contiguous();
    torch::Tensor grad = torch::zeros(block.sizes(), block.options().dtype(torch::kFloat32));
    for (int step = 0; step < ring.cp; ++step) {
      const int owner = ring.OwnerAt(step);
      const bool more = step + 1 < ring.cp;
      torch::Tensor incoming = more ? ring.PassOn(block, kBackwardBlockTag) : torch::Tensor();
      // This step's accumulator arrives after the previous rank adds to it (below).
      torch::Tensor incoming_grad = torch::empty_like(grad);
      ring.group->PostRecv(incoming_grad, ring.prev, kBackwardGradTag);
      auto [dq_s, dk_s, dv_s] = FusedAttentionBackward(dout, q, block[0], block[1],
                                                       BlockRope(s[3], s[4], s[5], s[6], owner),
                                                       s[7][owner], s[8][owner], lse, delta);
      dq.add_(dq_s.to(torch::kFloat32));
      grad[0].add_(dk_s.to(torch::kFloat32));
      grad[1].add_(dv_s.to(torch::kFloat32));
      // The accumulator follows its block; after the last step it goes home to its owner.
      ring.group->Send(grad, ring.next, kBackwardGradTag);
      ring.group->Flush();
      if (more) block = incoming;
      grad = incoming_grad;
    }
    variable_list result(10);  // one per forward input
    result[0] = dq.to(q.scalar_type());
    result[1] = grad[0].to(k.scalar_type());
    result[2] = grad[1].to(v.scalar_type());
    return result;
  }
};

}  // namespace

RingPlan MakeRingPlan(const torch::Tensor& lo, const torch::Tensor& hi,
                      const torch::Tensor& positions, const torch::Tensor& inv_freq, int cp,
                      int rank) {
  const int64_t T = lo.size(1);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  const torch::Tensor index = torch::arange(T, i64).unsqueeze(0);
  torch::Tensor local_lo = TakeLocalChunks(lo, cp, rank).contiguous();
  torch::Tensor local_hi = TakeLocalChunks(hi, cp, rank).contiguous();
  RingPlan plan;
  auto [qc, qs] = RopeCosSin(inv_freq, TakeLocalChunks(positions, cp, rank), torch::kFloat32);
  plan.q_cos = qc.squeeze(2).contiguous();
  plan.q_sin = qs.squeeze(2).contiguous();
  std::vector<torch::Tensor> k_cos, k_sin, block_lo, block_hi;
  for (int owner = 0; owner < cp; ++owner) {
    auto [kc, ks] = RopeCosSin(inv_freq, TakeLocalChunks(positions, cp, owner), torch::kFloat32);
    k_cos.push_back(kc.squeeze(2));
    k_sin.push_back(ks.squeeze(2));
    // The block's keys in global order are two ascending runs with a gap; a query's keys
    // [lo, hi] meet them in one contiguous range of block indices: those from the first key
    // >= lo through the last key <= hi.
    torch::Tensor keys = TakeLocalChunks(index, cp, owner).squeeze(0).contiguous();
    block_lo.push_back(torch::searchsorted(keys, local_lo));
    block_hi.push_back(torch::searchsorted(keys, local_hi, /*out_int32=*/false, /*right=*/true) -
                       1);
  }
  plan.k_cos = torch::stack(k_cos).contiguous();
  plan.k_sin = torch::stack(k_sin).contiguous();
  plan.block_lo = torch::stack(block_lo).contiguous();
  plan.block_hi = torch::stack(block_hi).contiguous();
  return plan;
}

torch::Tensor RingAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const RingPlan& plan, Group* group) {
  return RingAttentionFn::apply(q, k, v, plan.q_cos, plan.q_sin, plan.k_cos, plan.k_sin,
                                plan.block_lo, plan.block_hi, reinterpret_cast<int64_t>(group));
}

}  // namespace lora::dist
