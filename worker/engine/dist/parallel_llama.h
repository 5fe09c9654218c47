// A Llama LoRA model as one rank of a device mesh holds and runs it:
//   tensor parallel  column-parallel q/k/v/gate/up (lora_a replicated, lora_b split on out),
//                    row-parallel o/down (lora_a split on in, lora_b replicated);
//   FSDP / HSDP      each owned layer's frozen base parameters split 1/shard, gathered around
//                    the layer's forward and its recomputation in backward;
//   pipeline         layers [first, last) of a stage (balanced by parameter count);
//   context parallel this rank's two sequence chunks, K/V all-gathered or passed around a ring.
// Layout-independent views (full adapters, full optimizer moments) are gathered for
// checkpoints and scattered back on restore, so any layout can resume any other's checkpoint.
#ifndef LORA_WORKER_ENGINE_DIST_PARALLEL_LLAMA_H_
#define LORA_WORKER_ENGINE_DIST_PARALLEL_LLAMA_H_

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lora/v1/job_spec.pb.h"
#include "worker/engine/data/batcher.h"
#include "worker/engine/dist/comm.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/model/tensor_io.h"

namespace lora::dist {

// This rank's share of a micro-batch, in the local layout.
struct LocalBatch {
  torch::Tensor input_ids;  // [b, T / cp]
  torch::Tensor targets;    // [b, T / cp]
  AttentionContext ctx;
  int64_t rows = 0;
  int64_t num_targets = 0;  // local scored positions
};

class ParallelLlama {
 public:
  // `model` is the full model (loaded and converted identically on every rank).
  static absl::StatusOr<std::unique_ptr<ParallelLlama>> Create(LlamaForCausalLM model,
                                                               const lora::v1::JobSpec& spec,
                                                               DistContext* dist);

  int64_t first_layer() const { return first_; }
  int64_t last_layer() const { return last_; }
  bool first_stage() const { return first_stage_; }
  bool last_stage() const { return last_stage_; }
  LlamaForCausalLM& model() { return model_; }
  torch::Dtype activation_dtype() const { return activation_dtype_; }
  int64_t hidden_size() const { return model_->config().hidden_size; }

  LocalBatch Localize(const Batch& rows);
  // First stage: from input ids; later stages: from the previous stage's hidden states.
  // Returns hidden states, or logits on the last stage.
  torch::Tensor StageForward(const LocalBatch& batch, const torch::Tensor& hidden_in);

  // Adapter parameters this rank trains (its stage, its tensor-parallel slices).
  const NamedTensors& trainable() const { return trainable_; }
  // After backward: sums gradients over data-parallel and context-parallel replicas, and the
  // replicated LoRA factors over the tensor-parallel group. Frees gathered FSDP weights.
  void SyncGradients();
  // Frees the FSDP-gathered output projection and held layers (after forward-only passes).
  void ReleaseRoot();
  // Global L2 norm of the full model's adapter gradients; clips to max_norm when > 0.
  double ClipGradients(double max_norm);

  // Full-size adapters and optimizer moments (collective: every rank must call).
  std::vector<AdapterRecord> GatherAdapters();
  NamedTensors GatherOptimizerState(const NamedTensors& local_state);
  // The inverse: this rank's slices of full-size adapters / moments.
  absl::Status ScatterAdapters(const std::vector<AdapterRecord>& full);
  NamedTensors ScatterOptimizerState(const NamedTensors& full);
  std::vector<ModuleInfo> Modules() const;

  // Bytes of parameters (base + adapters) this rank holds right now, and the most it held at
  // once (with a layer's gathered FSDP weights).
  int64_t ParameterBytes() const;
  int64_t PeakParameterBytes() const { return std::max(peak_parameter_bytes_, ParameterBytes()); }

 private:
  enum class Split { kNone, kRows, kCols };  // how a tensor is split over the TP group
  struct FsdpShard {
    torch::Tensor param;
    std::vector<int64_t> shape;
    int64_t numel;
    torch::Tensor local;
  };

  ParallelLlama(LlamaForCausalLM model, DistContext* dist)
      : model_(std::move(model)), dist_(dist) {}
  absl::Status Setup(const lora::v1::JobSpec& spec);
  void ApplyTensorParallel();
  void ApplyFsdp();
  static constexpr int kEmbedUnit = -1, kHeadUnit = -2;  // FSDP units besides the layers
  void Gather(int layer);
  void Release(int layer);
  Split SplitOf(const std::string& param_name) const;
  bool Owned(const std::string& param_name) const;
  torch::Tensor Full(const torch::Tensor& local, const std::string& param_name, bool owned);
  torch::Tensor Slice(const torch::Tensor& full, const std::string& param_name) const;

  LlamaForCausalLM model_;
  DistContext* dist_;
  Group* tp_ = nullptr;
  Group* cp_ = nullptr;
  Group* pp_ = nullptr;
  Group* shard_ = nullptr;
  Group* dp_cp_ = nullptr;
  int64_t first_ = 0, last_ = 0;
  bool first_stage_ = true, last_stage_ = true;
  torch::Dtype activation_dtype_ = torch::kFloat32;
  NamedTensors trainable_;
  std::map<int, std::vector<FsdpShard>> fsdp_;
  std::shared_ptr<LayerHooks> hooks_;
  std::vector<std::string>
      tp_replicated_;  // trainable names replicated over TP (norm counted once)
  std::vector<std::string> tp_partial_;
  int64_t peak_parameter_bytes_ = 0;
  bool ring_attention_ = false;
  // FSDP layers stay gathered from their first forward to the end of the step
  // (fsdp_reshard_after_forward); `held_` lists those gathered now.
  bool hold_layers_ = false;
  std::set<int> held_;          // context parallel K/V by ring instead of all-gather
  bool head_gathered_ = false;  // the subset whose gradients are partial sums
};

// Layer ranges per stage, balanced by parameter count (embedding on the first stage, norm and
// lm_head on the last), or as given.
std::vector<std::pair<int64_t, int64_t>> StageLayers(const LlamaConfig& config, int stages,
                                                     const std::vector<int>& layers_per_stage);

}  // namespace lora::dist

#endif  // LORA_WORKER_ENGINE_DIST_PARALLEL_LLAMA_H_
