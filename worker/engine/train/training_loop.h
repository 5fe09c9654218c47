// The one training loop of `lora-train run`, for a single process and for each rank of a
// multi-rank job alike: data, resume, steps, evaluation, checkpoints, stop requests, exports,
// the summary and every event. What differs between the two lies behind TrainingBackend: how
// the model is built and laid out, how a step's gradients are computed and reduced, how
// evaluation runs, and how full-size adapters and optimizer moments are gathered for a
// checkpoint and scattered back on resume.
//
//   return RunTrainingLoop(options, [&](const lora::v1::JobSpec& spec, PreparedModel& prepared)
//       -> absl::StatusOr<std::unique_ptr<TrainingBackend>> {
//     return std::make_unique<MyBackend>(spec, prepared);
//   });
//
// Invariants: every rank makes the same backend calls in the same order (the collective ones
// meet); rank 0 alone emits the job's step, eval, checkpoint and finished events and writes
// checkpoints, exports and summary.json; ranks agree on when to stop, so each stops after the
// same step, and a stop leaves a checkpoint at that step whose event says `drain`.
#ifndef LORA_WORKER_ENGINE_TRAIN_TRAINING_LOOP_H_
#define LORA_WORKER_ENGINE_TRAIN_TRAINING_LOOP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "lora/engine/v1/events.pb.h"
#include "lora/v1/job_spec.pb.h"
#include "worker/engine/data/batcher.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/train/adamw.h"
#include "worker/engine/train/events.h"
#include "worker/engine/train/lr_schedule.h"
#include "worker/engine/train/model_setup.h"

namespace lora {

struct TrainerOptions {
  lora::v1::JobSpec spec;  // defaults applied and validated
  std::string output_dir;
  std::string resume_from;  // a run, checkpoints/ or step directory; empty = fresh start
  // Where the launcher records the newest checkpoint step it has copied off this machine
  // (ReadCopiedThroughStep); keep_latest never deletes a later one. Empty: nobody copies.
  std::string copied_checkpoints_file;
  EventSink* events = nullptr;
  const std::atomic<bool>* stop_requested = nullptr;
  // Where the model and batches live (ResolveTrainingDevice); off the CPU, and on it when
  // fused_kernels is false, attention and SwiGLU run as portable LibTorch ops.
  torch::Device device = torch::kCPU;
  bool fused_kernels = true;
};

struct TrainResult {
  bool interrupted = false;  // stopped by request after saving a checkpoint
  int64_t step = 0;
  lora::engine::v1::Summary summary;  // what summary.json holds (rank 0 wrote it)
};

struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;
};

// One step's forward and backward: 0-dim fp64 tensors, possibly still on the device, so the
// loop reads both with one host synchronisation after the optimizer step.
struct StepGradients {
  torch::Tensor loss_sum;   // token cross-entropies of the whole global batch, every rank's
  torch::Tensor grad_norm;  // of the full model's adapter gradients, before clipping
  double denominator = 1;   // the global batch's scored tokens (at least 1)
  int64_t target_tokens = 0;
};

class TrainingBackend {
 public:
  virtual ~TrainingBackend() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  bool leader() const { return rank() == 0; }
  // Data-parallel replicas: each reads its own local_batch_size rows of a global micro-batch.
  virtual int data_parallel_size() const = 0;
  virtual std::string mesh() const = 0;                          // "" for one process
  virtual std::pair<int64_t, int64_t> stage_layers() const = 0;  // [first, last) held here

  // The adapter parameters this rank trains, in the optimizer's order.
  virtual const NamedTensors& trainable() const = 0;

  // Forward and backward over the global step starting at training window `first_window`
  // (gradient_accumulation_steps micro-batches of local_batch_size x data_parallel_size
  // rows), each rank's loss divided by the global token count; then gradients are summed over
  // ranks and clipped to training.max_norm.
  virtual StepGradients ComputeGradients(Batcher& data, int64_t first_window) = 0;
  // The token-weighted mean validation loss (dataset.validation_max_batches batches of the
  // global batch); leaves the model in training mode.
  virtual EvalResult Evaluate(Batcher& data) = 0;

  // Layout-independent views for checkpoints and exports; collective (every rank calls).
  virtual std::vector<AdapterRecord> GatherAdapters() = 0;
  virtual NamedTensors GatherOptimizerState(const NamedTensors& local) = 0;
  virtual std::vector<ModuleInfo> Modules() const = 0;
  // Their inverse, on resume: this rank's slices of the full-size adapters and moments.
  virtual absl::Status RestoreAdapters(const std::vector<AdapterRecord>& full) = 0;
  virtual NamedTensors ScatterOptimizerState(const NamedTensors& full) = 0;
  // Rank 0 alone: the base model with `adapters` merged, as a HF checkpoint in `dir`.
  virtual absl::Status ExportMerged(const std::vector<AdapterRecord>& adapters,
                                    const std::string& dir, const SaveOptions& save) = 0;

  // Agreement (collective): true on every rank when `mine` is true on any.
  virtual bool AnyRank(bool mine) = 0;
  // Every rank's `mine`, in rank order (collective).
  virtual std::vector<int64_t> AllRanks(int64_t mine) = 0;

  // Bytes of parameters held now and at most at once; bytes sent to other ranks so far.
  virtual int64_t ParameterBytes() const = 0;
  virtual int64_t PeakParameterBytes() const = 0;
  virtual int64_t BytesSent() const = 0;
};

// Lays out the prepared full model for this rank (device, sharding) and returns its backend.
using BackendFactory = std::function<absl::StatusOr<std::unique_ptr<TrainingBackend>>(
    const lora::v1::JobSpec& spec, PreparedModel& prepared)>;

absl::StatusOr<TrainResult> RunTrainingLoop(const TrainerOptions& options,
                                            const BackendFactory& make_backend);

// training.num_threads, or every core: ATen's intra-op threads (before any parallel work).
void SetTrainingThreads(const lora::v1::JobSpec& spec);

// The batchers, optimizer and schedule a spec defines.
BatcherOptions TrainBatcherOptions(const lora::v1::JobSpec& spec);
BatcherOptions ValidationBatcherOptions(const lora::v1::JobSpec& spec);
AdamWOptions SpecAdamWOptions(const lora::v1::JobSpec& spec);
LrSchedule SpecLrSchedule(const lora::v1::JobSpec& spec);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_TRAINING_LOOP_H_
