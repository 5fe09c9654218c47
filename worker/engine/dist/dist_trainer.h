// `lora-train run` with world_size > 1: the training loop of train/training_loop.h over one
// rank's part of the model, laid out over a device mesh (dist/parallel_llama.h), with pipeline
// schedules (GPipe, 1F1B). Rank 0 emits the job's events and writes checkpoints and exports;
// every rank takes part in the gathers and reports its own health (rank_status). Results
// match a single process given the same global batch.
//
//   TrainerOptions o = ...;   // resources.world_size > 1; RANK, WORLD_SIZE, MASTER_* set
//   LORA_ASSIGN_OR_RETURN(TrainResult r, dist::RunDistributedTraining(o));
//
// A failure on any rank (its own, or a peer that died or hung) ends every rank: each writes a
// `failed` event and exits 1 without returning (DistContext::Abort).
#ifndef LORA_WORKER_ENGINE_DIST_DIST_TRAINER_H_
#define LORA_WORKER_ENGINE_DIST_DIST_TRAINER_H_

#include "absl/status/statusor.h"
#include "worker/engine/train/training_loop.h"

namespace lora::dist {

absl::StatusOr<TrainResult> RunDistributedTraining(const TrainerOptions& options);

}  // namespace lora::dist

#endif  // LORA_WORKER_ENGINE_DIST_DIST_TRAINER_H_
