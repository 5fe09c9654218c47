// `lora-train run` with world_size > 1: the same training loop as train/trainer.h, with the
// model laid out over a device mesh (dist/parallel_llama.h) and pipeline schedules (GPipe,
// 1F1B). Rank 0 emits the job's events and writes checkpoints and exports; every rank takes
// part in the gathers. Results match a single process given the same global batch.
#ifndef LORA_WORKER_ENGINE_DIST_DIST_TRAINER_H_
#define LORA_WORKER_ENGINE_DIST_DIST_TRAINER_H_

#include "absl/status/statusor.h"
#include "worker/engine/train/trainer.h"

namespace lora::dist {

absl::StatusOr<TrainResult> RunDistributedTraining(const TrainerOptions& options);

}  // namespace lora::dist

#endif  // LORA_WORKER_ENGINE_DIST_DIST_TRAINER_H_
