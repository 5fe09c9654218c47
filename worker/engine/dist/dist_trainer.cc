#include "worker/engine/dist/dist_trainer.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/dist/comm.h"
#include "worker/engine/dist/parallel_llama.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/train/checkpointer.h"
#include "worker/engine/train/model_setup.h"
#include "worker/engine/train/training_loop.h"

namespace lora::dist {
namespace {

MeshShape ShapeOf(const lora::v1::JobSpec& spec) {
  const auto& p = spec.parallelism();
  MeshShape m;
  m.pp = p.pipeline_parallel_degree();
  m.replicate = p.data_parallel_replicate_degree();
  m.cp = p.context_parallel_degree();
  m.tp = p.tensor_parallel_degree();
  const int others = m.pp * m.replicate * m.cp * m.tp;
  m.shard = p.data_parallel_shard_degree() == -1 ? spec.resources().world_size() / others
                                                 : p.data_parallel_shard_degree();
  return m;
}

// One training or evaluation pass over a batch of this rank's rows, pipelined over stages.
class StepRunner {
 public:
  StepRunner(ParallelLlama* model, Group* pp, int microbatches, bool one_f_one_b)
      : model_(model),
        pp_(pp),
        microbatches_(pp->size() > 1 ? microbatches : 1),
        one_f_one_b_(one_f_one_b) {}

  // Returns the loss sum of this rank's tokens (last stage; 0 elsewhere). With `denominator`
  // > 0, backpropagates loss / denominator.
  double Run(const Batch& rows, double denominator) {
    const bool train = denominator > 0;
    const int64_t n = rows.input_ids.size(0);
    const int M = static_cast<int>(std::min<int64_t>(microbatches_, std::max<int64_t>(n, 1)));
    micro_.clear();
    micro_.resize(static_cast<size_t>(M));
    for (int m = 0; m < M; ++m) {
      const int64_t begin = n * m / M, end = n * (m + 1) / M;
      micro_[static_cast<size_t>(m)].batch = model_->Localize(rows.Slice(begin, end - begin));
    }
    loss_sum_ = 0;
    denominator_ = denominator;
    const int stages = pp_->size(), stage = pp_->rank();
    if (!train) {
      torch::NoGradGuard no_grad;
      for (int m = 0; m < M; ++m) Forward(m, false);
    } else if (!one_f_one_b_ || stages == 1) {  // GPipe: all forwards, then all backwards
      for (int m = 0; m < M; ++m) Forward(m, true);
      for (int m = 0; m < M; ++m) Backward(m);
    } else {  // 1F1B: warm up, alternate one forward and one backward, drain
      const int warmup = std::min(M, stages - stage - 1);
      for (int m = 0; m < warmup; ++m) Forward(m, true);
      for (int m = warmup; m < M; ++m) {
        Forward(m, true);
        Backward(m - warmup);
      }
      for (int m = M - warmup; m < M; ++m) Backward(m);
    }
    pp_->Flush();
    micro_.clear();
    return loss_sum_;
  }

 private:
  struct Micro {
    LocalBatch batch;
    torch::Tensor input, output, loss;
  };

  void Forward(int m, bool train) {
    Micro& mb = micro_[static_cast<size_t>(m)];
    if (!model_->first_stage()) {
      mb.input = torch::empty({mb.batch.rows, mb.batch.input_ids.size(1), model_->hidden_size()},
                              torch::TensorOptions()
                                  .dtype(model_->activation_dtype())
                                  .device(mb.batch.input_ids.device()));
      pp_->Recv(mb.input, pp_->rank() - 1, 2 * m);
      if (train) mb.input.requires_grad_(true);
    }
    torch::Tensor out = model_->StageForward(mb.batch, mb.input);
    if (model_->last_stage()) {
      mb.loss =
          at::cross_entropy_loss(out.to(torch::kFloat32).view({-1, out.size(-1)}),
                                 mb.batch.targets.view({-1}), {}, at::Reduction::Sum, kIgnoreIndex);
      loss_sum_ += mb.loss.item<double>();
    } else {
      pp_->Send(out.detach(), pp_->rank() + 1, 2 * m);
      mb.output = out;
    }
  }

  void Backward(int m) {
    Micro& mb = micro_[static_cast<size_t>(m)];
    if (model_->last_stage()) {
      (mb.loss / denominator_).backward();
    } else {
      torch::Tensor grad = torch::empty_like(mb.output);
      pp_->Recv(grad, pp_->rank() + 1, 2 * m + 1);
      mb.output.backward(grad);
    }
    if (!model_->first_stage()) pp_->Send(mb.input.grad(), pp_->rank() - 1, 2 * m + 1);
    mb = Micro{LocalBatch{}, {}, {}, {}};
  }

  ParallelLlama* model_;
  Group* pp_;
  int microbatches_;
  bool one_f_one_b_;
  std::vector<Micro> micro_;
  double loss_sum_ = 0, denominator_ = 0;
};

// One rank of a mesh: the model laid out by ParallelLlama, steps pipelined by StepRunner,
// reductions and agreement over the world group.
class DistBackend final : public TrainingBackend {
 public:
  static absl::StatusOr<std::unique_ptr<TrainingBackend>> Create(const lora::v1::JobSpec& spec,
                                                                 PreparedModel& prepared,
                                                                 DistContext* dist,
                                                                 const torch::Device& device,
                                                                 bool fused_kernels) {
    // The fused kernels are CPU code: anything else (--portable-kernels) runs SDPA and
    // LibTorch's SwiGLU, as a GPU would.
    prepared.model->model->set_fused_kernels(fused_kernels && device.is_cpu());
    // On a GPU the whole model is placed before sharding, so shards, gathered layers and
    // adapters live there (the full model passes through each GPU once at start-up).
    if (!device.is_cpu()) prepared.model->to(device);
    LORA_ASSIGN_OR_RETURN(auto model, ParallelLlama::Create(prepared.model, spec, dist));
    return std::unique_ptr<TrainingBackend>(new DistBackend(spec, std::move(model), dist));
  }

  int rank() const override { return dist_->rank(); }
  int world_size() const override { return dist_->world(); }
  int data_parallel_size() const override { return dp_; }
  std::string mesh() const override { return dist_->mesh().shape().ToString(); }
  std::pair<int64_t, int64_t> stage_layers() const override {
    return {model_->first_layer(), model_->last_layer()};
  }
  const NamedTensors& trainable() const override { return model_->trainable(); }

  StepGradients ComputeGradients(Batcher& data, int64_t first_window) override {
    std::vector<Batch> micro_steps;
    double local_targets = 0;
    for (int64_t m = 0; m < accum_; ++m) {
      micro_steps.push_back(
          MyRows(data, first_window + m * rows_ * dp_, std::numeric_limits<int64_t>::max()));
      local_targets += static_cast<double>(model_->Localize(micro_steps.back()).num_targets);
    }
    torch::Tensor denom_t = torch::tensor({local_targets}, torch::kFloat64);
    dp_cp_.AllReduceSum(denom_t);
    StepGradients g;
    g.denominator = std::max(1.0, denom_t.item<double>());
    g.target_tokens = static_cast<int64_t>(g.denominator);
    double loss_sum = 0;
    for (const Batch& rows : micro_steps) loss_sum += runner_.Run(rows, g.denominator);
    model_->SyncGradients();
    g.grad_norm = torch::tensor(model_->ClipGradients(max_norm_), torch::kFloat64);
    g.loss_sum = torch::tensor(TokenSum(loss_sum), torch::kFloat64);
    return g;
  }

  EvalResult Evaluate(Batcher& data) override {
    model_->model()->eval();
    double loss = 0, tokens = 0;
    const int64_t windows = data.windows_per_epoch();
    int64_t batches = 0;
    for (int64_t first = 0; first < windows; first += rows_ * dp_) {
      if (eval_batches_ > 0 && batches++ >= eval_batches_) break;
      Batch rows = MyRows(data, first, windows);
      tokens += TokenSum(static_cast<double>(model_->Localize(rows).num_targets));
      loss += TokenSum(runner_.Run(rows, 0));
    }
    model_->ReleaseRoot();
    model_->model()->train();
    return {tokens > 0 ? loss / tokens : std::nan(""), static_cast<int64_t>(tokens)};
  }

  std::vector<AdapterRecord> GatherAdapters() override { return model_->GatherAdapters(); }
  NamedTensors GatherOptimizerState(const NamedTensors& local) override {
    return model_->GatherOptimizerState(local);
  }
  std::vector<ModuleInfo> Modules() const override { return model_->Modules(); }
  absl::Status RestoreAdapters(const std::vector<AdapterRecord>& full) override {
    return model_->ScatterAdapters(full);
  }
  NamedTensors ScatterOptimizerState(const NamedTensors& full) override {
    return model_->ScatterOptimizerState(full);
  }

  // The merged model needs every base weight: rebuilt on rank 0.
  absl::Status ExportMerged(const std::vector<AdapterRecord>& adapters, const std::string& dir,
                            const SaveOptions& save) override {
    LORA_ASSIGN_OR_RETURN(PreparedModel full, PrepareModel(spec_));
    LORA_RETURN_IF_ERROR(LoadAdapterRecords(*full.model, adapters));
    MergeAdapters(*full.model);
    return SaveHfModelAtomically(*full.model, dir, save);
  }

  bool AnyRank(bool mine) override {
    torch::Tensor t = torch::tensor({mine ? 1.0 : 0.0}, torch::kFloat64);
    world_.AllReduceSum(t);
    return t.item<double>() > 0;
  }
  std::vector<int64_t> AllRanks(int64_t mine) override {
    torch::Tensor all = world_.AllGather(torch::tensor({mine}, torch::kInt64), 0);
    return std::vector<int64_t>(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + all.numel());
  }

  int64_t ParameterBytes() const override { return model_->ParameterBytes(); }
  int64_t PeakParameterBytes() const override { return model_->PeakParameterBytes(); }
  int64_t BytesSent() const override { return dist_->TotalBytesSent(); }

 private:
  DistBackend(const lora::v1::JobSpec& spec, std::unique_ptr<ParallelLlama> model,
              DistContext* dist)
      : spec_(spec),
        model_(std::move(model)),
        dist_(dist),
        world_(dist->world_group()),
        dp_cp_(dist->group({Dim::kReplicate, Dim::kShard, Dim::kCp})),
        runner_(model_.get(), &dist->group({Dim::kPp}),
                spec.parallelism().pipeline_parallel_microbatches(),
                spec.parallelism().pipeline_parallel_schedule() == "1F1B"),
        rows_(spec.training().local_batch_size()),
        accum_(spec.training().gradient_accumulation_steps()),
        seq_len_(spec.training().seq_len()),
        max_norm_(spec.training().max_norm()),
        eval_batches_(spec.dataset().validation_max_batches()) {
    const MeshCoord& c = dist->coord();
    const MeshShape& shape = dist->mesh().shape();
    dp_ = shape.replicate * shape.shard;
    dp_index_ = c[Dim::kReplicate] * shape.shard + c[Dim::kShard];
    counts_tokens_ = model_->last_stage() && c[Dim::kTp] == 0;
    model_->model()->train();
  }

  // This rank's rows of a global batch starting at window `first` (clipped to `limit`).
  // Always exactly local_batch_size rows: past `limit` they are padding whose targets are
  // ignored, so every rank runs the same forwards (FSDP, TP and CP collectives happen inside
  // them).
  Batch MyRows(Batcher& data, int64_t first, int64_t limit) {
    const int64_t T = seq_len_;
    const int64_t begin = first + dp_index_ * rows_;
    const int64_t count = std::max<int64_t>(0, std::min(rows_, limit - begin));
    Batch real = data.MakeBatch(begin, std::max<int64_t>(count, 1));
    if (count == rows_) return real;
    Batch padded;
    padded.input_ids = torch::zeros({rows_, T}, torch::kInt64);
    padded.targets = torch::full({rows_, T}, kIgnoreIndex, torch::kInt64);
    padded.position_ids = torch::arange(T).unsqueeze(0).expand({rows_, T}).contiguous();
    if (real.document_ids.defined()) padded.document_ids = torch::zeros({rows_, T}, torch::kInt64);
    if (count > 0) {
      padded.input_ids.narrow(0, 0, count).copy_(real.input_ids.narrow(0, 0, count));
      padded.targets.narrow(0, 0, count).copy_(real.targets.narrow(0, 0, count));
      padded.position_ids.narrow(0, 0, count).copy_(real.position_ids.narrow(0, 0, count));
      if (real.document_ids.defined())
        padded.document_ids.narrow(0, 0, count).copy_(real.document_ids.narrow(0, 0, count));
    }
    padded.num_targets = padded.targets.ne(kIgnoreIndex).sum().item<int64_t>();
    return padded;
  }

  // Sum over the ranks that hold distinct tokens (last stage, one TP rank) of `local`.
  double TokenSum(double local) {
    torch::Tensor t = torch::tensor({counts_tokens_ ? local : 0.0}, torch::kFloat64);
    world_.AllReduceSum(t);
    return t.item<double>();
  }

  const lora::v1::JobSpec spec_;
  std::unique_ptr<ParallelLlama> model_;
  DistContext* dist_;
  Group& world_;
  Group& dp_cp_;
  StepRunner runner_;
  int64_t rows_, accum_, seq_len_;
  double max_norm_;
  int64_t eval_batches_;
  int dp_ = 1, dp_index_ = 0;
  bool counts_tokens_ = false;
};

}  // namespace

absl::StatusOr<TrainResult> RunDistributedTraining(const TrainerOptions& options) {
  const lora::v1::JobSpec& spec = options.spec;
  SetTrainingThreads(spec);
  DistOptions dist_options;
  dist_options.timeout = std::chrono::seconds(spec.resources().collective_timeout_seconds());
  dist_options.device = options.device;  // NCCL groups on a GPU, Gloo on the CPU
  if (options.events != nullptr) {
    EventSink* events = options.events;
    dist_options.on_abort = [events](const absl::Status& status) {
      events->Failed(status, absl::StrCat("failed: ", status.message()));
    };
  }
  auto dist = DistContext::Init(ShapeOf(spec), dist_options);
  if (!dist.ok()) return dist.status();
  absl::StatusOr<TrainResult> result;
  try {
    result = RunTrainingLoop(
        options,
        [&](const lora::v1::JobSpec& job,
            PreparedModel& prepared) -> absl::StatusOr<std::unique_ptr<TrainingBackend>> {
          return DistBackend::Create(job, prepared, dist->get(), options.device,
                                     options.fused_kernels);
        });
  } catch (const CommError& e) {
    (*dist)->Abort(absl::UnavailableError(e.what()));
  } catch (const c10::Error& e) {
    // A communication failure inside autograd may come back wrapped by the engine.
    const std::string what = e.what_without_backtrace();
    (*dist)->Abort(absl::StrContains(what, kCommErrorMarker)
                       ? absl::UnavailableError(what)
                       : absl::InternalError(absl::StrCat("LibTorch: ", what)));
  } catch (const std::exception& e) {
    (*dist)->Abort(absl::InternalError(e.what()));
  }
  if (!result.ok()) (*dist)->Abort(result.status());
  (*dist)->Shutdown();
  return result;
}

}  // namespace lora::dist
