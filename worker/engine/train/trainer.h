// `lora-train run`: LoRA fine-tuning in one process, driven by a job spec (the training loop
// of train/training_loop.h over the whole model in this process).
//
//   TrainerOptions o{spec, "/runs/job-1"};
//   o.events = &sink;  o.stop_requested = &flag;   // SIGTERM: finish the step, checkpoint, stop
//   LORA_ASSIGN_OR_RETURN(TrainResult r, RunTraining(o));
//
// Output directory: checkpoints/step-N (see checkpointer.h), final/adapter (PEFT, export_dtype),
// final/merged (when checkpoint.export has "merged"), summary.json, events.jsonl.
#ifndef LORA_WORKER_ENGINE_TRAIN_TRAINER_H_
#define LORA_WORKER_ENGINE_TRAIN_TRAINER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "worker/engine/data/batcher.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/train/training_loop.h"

namespace lora {

absl::StatusOr<TrainResult> RunTraining(const TrainerOptions& options);

// Token-weighted mean cross-entropy over `max_batches` batches (0 = all) of `rows` windows.
EvalResult EvaluateLoss(LlamaForCausalLMImpl& model, Batcher& data, int64_t rows,
                        int64_t max_batches);

// Sum of token cross-entropies of one batch (fp32), for the training and eval loops.
torch::Tensor BatchLossSum(LlamaForCausalLMImpl& model, const Batch& batch);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_TRAINER_H_
