// `lora-train run`: LoRA fine-tuning in one process, driven by a job spec.
//
//   TrainerOptions o{spec, "/runs/job-1"};
//   o.events = &sink;  o.stop_requested = &flag;   // SIGTERM: finish the step, checkpoint, stop
//   LORA_ASSIGN_OR_RETURN(TrainResult r, RunTraining(o));
//
// Output directory: checkpoints/step-N (see checkpointer.h), final/adapter (PEFT, export_dtype),
// final/merged (when checkpoint.export has "merged"), summary.json, events.jsonl.
#ifndef LORA_WORKER_ENGINE_TRAIN_TRAINER_H_
#define LORA_WORKER_ENGINE_TRAIN_TRAINER_H_

#include <atomic>
#include <string>

#include "absl/status/statusor.h"
#include "lora/v1/job_spec.pb.h"
#include "nlohmann/json.hpp"
#include "worker/engine/data/batcher.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/train/adamw.h"
#include "worker/engine/train/checkpointer.h"
#include "worker/engine/train/events.h"
#include "worker/engine/train/lr_schedule.h"

namespace lora {

struct TrainerOptions {
  lora::v1::JobSpec spec;  // defaults applied and validated
  std::string output_dir;
  std::string resume_from;  // a run, checkpoints/ or step directory; empty = fresh start
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
  nlohmann::json summary;
};

absl::StatusOr<TrainResult> RunTraining(const TrainerOptions& options);

struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;
};

// Token-weighted mean cross-entropy over `max_batches` batches (0 = all) of `rows` windows.
EvalResult EvaluateLoss(LlamaForCausalLMImpl& model, Batcher& data, int64_t rows,
                        int64_t max_batches);

// Sum of token cross-entropies of one batch (fp32), for the training and eval loops.
torch::Tensor BatchLossSum(LlamaForCausalLMImpl& model, const Batch& batch);

// The validation batcher a spec defines; `examples` from LoadExamples + SplitExamples.
BatcherOptions ValidationBatcherOptions(const lora::v1::JobSpec& spec);
BatcherOptions TrainBatcherOptions(const lora::v1::JobSpec& spec);

// The optimizer and schedule a spec defines (shared by the single- and multi-rank trainers).
AdamWOptions SpecAdamWOptions(const lora::v1::JobSpec& spec);
LrSchedule SpecLrSchedule(const lora::v1::JobSpec& spec);

// Emits the `checkpoint` event for a written checkpoint and returns its record (the summary's
// `last_checkpoint`).
nlohmann::json ReportCheckpoint(EventSink& events, int64_t step, const CheckpointInfo& info);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_TRAINER_H_
