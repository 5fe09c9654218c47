// What a training or evaluation run reads, the same way in every trainer: the tokenizer, the
// examples, and the train / validation split (dataset.validation_path, else the fixed-seed
// fraction of dataset.validation_fraction).
//
//   LORA_ASSIGN_OR_RETURN(TrainingData data, LoadTrainingData(spec, config.vocab_size));
//   Batcher train(std::move(data.train), TrainBatcherOptions(spec));
//   spec.mutable_training()->set_steps(
//       TotalSteps(spec.training(), train.windows_per_epoch(), rows_per_step));
#ifndef LORA_WORKER_ENGINE_DATA_TRAINING_DATA_H_
#define LORA_WORKER_ENGINE_DATA_TRAINING_DATA_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "lora/v1/job_spec.pb.h"
#include "worker/engine/data/examples.h"
#include "worker/engine/data/tokenizer.h"

namespace lora {

struct TrainingData {
  std::unique_ptr<Tokenizer> tokenizer;  // null for input_ids data with no tokenizer configured
  std::vector<Example> train;
  std::vector<Example> validation;
};

absl::StatusOr<TrainingData> LoadTrainingData(const lora::v1::JobSpec& spec, int64_t vocab_size);

// training.steps; with training.epochs, the optimizer steps that cover that many passes over
// `windows_per_epoch` rows when one step consumes `rows_per_step` rows (all data-parallel
// ranks and accumulation micro-steps together), rounded up, at least 1.
int64_t TotalSteps(const lora::v1::TrainingSection& training, int64_t windows_per_epoch,
                   int64_t rows_per_step);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_TRAINING_DATA_H_
