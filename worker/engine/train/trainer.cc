#include "worker/engine/train/trainer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <memory>

#include "worker/engine/lora/converter.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/train/adamw.h"
#include "worker/engine/train/checkpointer.h"

namespace lora {

torch::Tensor BatchLossSum(LlamaForCausalLMImpl& model, const Batch& batch) {
  // Batches are built on the CPU; the model may live elsewhere.
  const torch::Device device = model.model->embed_tokens->weight.device();
  auto on_device = [&](const torch::Tensor& t) { return t.defined() ? t.to(device) : t; };
  ForwardInputs in{on_device(batch.input_ids), on_device(batch.position_ids),
                   on_device(batch.document_ids)};
  torch::Tensor logits = model.forward(in);
  return at::cross_entropy_loss(logits.to(torch::kFloat32).view({-1, logits.size(-1)}),
                                on_device(batch.targets).view({-1}), {}, at::Reduction::Sum,
                                kIgnoreIndex);
}

EvalResult EvaluateLoss(LlamaForCausalLMImpl& model, Batcher& data, int64_t rows,
                        int64_t max_batches) {
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  EvalResult r;
  double sum = 0;
  const int64_t windows = data.windows_per_epoch();
  int64_t batches = 0;
  for (int64_t first = 0; first < windows; first += rows) {
    if (max_batches > 0 && batches++ >= max_batches) break;
    Batch b = data.MakeBatch(first, std::min(rows, windows - first));
    if (b.num_targets == 0) continue;
    sum += BatchLossSum(model, b).item<double>();
    r.tokens += b.num_targets;
  }
  r.loss = r.tokens > 0 ? sum / static_cast<double>(r.tokens) : std::nan("");
  if (was_training) model.train();
  return r;
}

namespace {

// The whole model in this process: gathers and scatters are the identity, agreement is with
// oneself.
class SingleProcessBackend final : public TrainingBackend {
 public:
  SingleProcessBackend(const lora::v1::JobSpec& spec, LlamaForCausalLM model,
                       const torch::Device& device, bool fused_kernels)
      : model_(std::move(model)),
        rows_(spec.training().local_batch_size()),
        accum_(spec.training().gradient_accumulation_steps()),
        max_norm_(spec.training().max_norm()),
        eval_batches_(spec.dataset().validation_max_batches()) {
    if (!device.is_cpu()) model_->to(device);
    model_->model->set_fused_kernels(device.is_cpu() && fused_kernels);
    model_->model->set_activation_checkpointing(spec.training().activation_checkpoint() == "full");
    for (const auto& item : model_->named_parameters()) {
      if (item.value().requires_grad()) trainable_.emplace_back(item.key(), item.value());
    }
    model_->train();
  }

  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int data_parallel_size() const override { return 1; }
  std::string mesh() const override { return ""; }
  std::pair<int64_t, int64_t> stage_layers() const override {
    return {0, model_->config().num_hidden_layers};
  }
  const NamedTensors& trainable() const override { return trainable_; }

  StepGradients ComputeGradients(Batcher& data, int64_t first_window) override {
    Batch batch = data.MakeBatch(first_window, rows_ * accum_);
    StepGradients g;
    g.target_tokens = batch.num_targets;
    g.denominator = static_cast<double>(std::max<int64_t>(1, batch.num_targets));
    // The loss stays on the device: no host synchronisation between micro-batches.
    for (int64_t m = 0; m < accum_; ++m) {
      Batch micro = accum_ == 1 ? batch : batch.Slice(m * rows_, rows_);
      torch::Tensor loss = BatchLossSum(*model_, micro);
      (loss / g.denominator).backward();
      g.loss_sum = m == 0 ? loss.detach().to(torch::kFloat64) : g.loss_sum + loss.detach();
    }
    g.grad_norm = ClipGradNorm(trainable_, max_norm_);
    return g;
  }

  EvalResult Evaluate(Batcher& data) override {
    return EvaluateLoss(*model_, data, rows_, eval_batches_);
  }

  std::vector<AdapterRecord> GatherAdapters() override { return AdapterRecords(*model_); }
  NamedTensors GatherOptimizerState(const NamedTensors& local) override { return local; }
  std::vector<ModuleInfo> Modules() const override { return ListModules(*model_); }
  absl::Status RestoreAdapters(const std::vector<AdapterRecord>& full) override {
    return LoadAdapterRecords(*model_, full);
  }
  NamedTensors ScatterOptimizerState(const NamedTensors& full) override { return full; }

  // The records are this model's own adapters: merged in place for the save, then unmerged
  // (no second copy of the base in memory).
  absl::Status ExportMerged(const std::vector<AdapterRecord>& /*adapters*/, const std::string& dir,
                            const SaveOptions& save) override {
    MergeAdapters(*model_);
    absl::Status s = SaveHfModelAtomically(*model_, dir, save);
    UnmergeAdapters(*model_);
    return s;
  }

  bool AnyRank(bool mine) override { return mine; }
  std::vector<int64_t> AllRanks(int64_t mine) override { return {mine}; }

  int64_t ParameterBytes() const override {
    int64_t total = 0;
    for (const auto& p : model_->parameters())
      total += p.numel() * static_cast<int64_t>(p.element_size());
    return total;
  }
  int64_t PeakParameterBytes() const override { return ParameterBytes(); }
  int64_t BytesSent() const override { return 0; }

 private:
  LlamaForCausalLM model_;
  NamedTensors trainable_;
  int64_t rows_, accum_;
  double max_norm_;
  int64_t eval_batches_;
};

}  // namespace

absl::StatusOr<TrainResult> RunTraining(const TrainerOptions& options) {
  SetTrainingThreads(options.spec);
  return RunTrainingLoop(
      options,
      [&](const lora::v1::JobSpec& spec,
          PreparedModel& prepared) -> absl::StatusOr<std::unique_ptr<TrainingBackend>> {
        return std::make_unique<SingleProcessBackend>(spec, prepared.model, options.device,
                                                      options.fused_kernels);
      });
}

}  // namespace lora
