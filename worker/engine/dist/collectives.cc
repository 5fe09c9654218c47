#include "worker/engine/dist/collectives.h"

#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>

namespace lora::dist {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Group* GroupOf(AutogradContext* ctx) {
  return reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
}

class CopyToGroupFn : public torch::autograd::Function<CopyToGroupFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, int64_t group) {
    ctx->saved_data["group"] = group;
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    torch::Tensor grad = g[0].contiguous().clone();
    GroupOf(ctx)->AllReduceSum(grad);
    return {grad, torch::Tensor()};
  }
};

class ReduceFromGroupFn : public torch::autograd::Function<ReduceFromGroupFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, int64_t group) {
    ctx->saved_data["group"] = group;
    torch::Tensor out = x.contiguous().clone();
    reinterpret_cast<Group*>(group)->AllReduceSum(out);
    return out;
  }
  static variable_list backward(AutogradContext*, variable_list g) {
    return {g[0], torch::Tensor()};
  }
};

// Reorders the gathered [rank0 chunks | rank1 chunks | ...] into sequence order.
torch::Tensor ToSequenceOrder(const torch::Tensor& gathered, int cp) {
  const int64_t chunk = gathered.size(1) / (2 * cp);
  std::vector<torch::Tensor> by_position(static_cast<size_t>(2 * cp));
  for (int r = 0; r < cp; ++r) {
    std::vector<int64_t> order = LocalChunkOrder(cp, r);
    for (size_t i = 0; i < order.size(); ++i) {
      by_position[static_cast<size_t>(order[i])] =
          gathered.narrow(1, (r * 2 + static_cast<int64_t>(i)) * chunk, chunk);
    }
  }
  return torch::cat(by_position, 1);
}

class GatherSequenceFn : public torch::autograd::Function<GatherSequenceFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor local, int64_t group) {
    ctx->saved_data["group"] = group;
    Group* g = reinterpret_cast<Group*>(group);
    return ToSequenceOrder(g->AllGather(local, 1), g->size());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Every rank's gradient for the whole sequence, summed and cut back to each rank's chunks:
    // lay the chunks out in rank order, then reduce-scatter.
    Group* g = GroupOf(ctx);
    std::vector<torch::Tensor> by_rank;
    for (int r = 0; r < g->size(); ++r) by_rank.push_back(TakeLocalChunks(grads[0], g->size(), r));
    return {g->ReduceScatterSum(torch::cat(by_rank, 1), 1), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CopyToGroup(const torch::Tensor& x, Group* group) {
  if (group == nullptr || group->size() == 1) return x;
  return CopyToGroupFn::apply(x, reinterpret_cast<int64_t>(group));
}

torch::Tensor ReduceFromGroup(const torch::Tensor& x, Group* group) {
  if (group == nullptr || group->size() == 1) return x;
  return ReduceFromGroupFn::apply(x, reinterpret_cast<int64_t>(group));
}

std::vector<int64_t> LocalChunkOrder(int cp, int rank) { return {rank, 2 * cp - 1 - rank}; }

torch::Tensor TakeLocalChunks(const torch::Tensor& full, int cp, int rank) {
  if (cp == 1) return full;
  const int64_t chunk = full.size(1) / (2 * cp);
  std::vector<torch::Tensor> parts;
  for (int64_t c : LocalChunkOrder(cp, rank)) parts.push_back(full.narrow(1, c * chunk, chunk));
  return torch::cat(parts, 1);
}

torch::Tensor GatherSequence(const torch::Tensor& local, Group* cp_group) {
  if (cp_group == nullptr || cp_group->size() == 1) return local;
  return GatherSequenceFn::apply(local, reinterpret_cast<int64_t>(cp_group));
}

}  // namespace lora::dist
