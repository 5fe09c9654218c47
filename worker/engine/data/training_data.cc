#include "worker/engine/data/training_data.h"

#include <algorithm>
#include <cmath>

#include "common/status_macros.h"

namespace lora {

absl::StatusOr<TrainingData> LoadTrainingData(const lora::v1::JobSpec& spec, int64_t vocab_size) {
  TrainingData data;
  LORA_ASSIGN_OR_RETURN(const bool needs_tokenizer, DatasetNeedsTokenizer(spec.dataset()));
  std::vector<Example> examples;
  if (needs_tokenizer || !spec.model().tokenizer().empty()) {
    LORA_ASSIGN_OR_RETURN(data.tokenizer,
                          MakeTokenizerForModel(spec.model().tokenizer(), spec.model().path()));
    LORA_ASSIGN_OR_RETURN(examples, LoadExamples(spec.dataset(), *data.tokenizer, vocab_size));
  } else {
    LORA_ASSIGN_OR_RETURN(examples, LoadTokenIdExamples(spec.dataset(), vocab_size));
  }
  if (!spec.dataset().validation_path().empty()) {
    data.train = std::move(examples);
    LORA_ASSIGN_OR_RETURN(data.validation,
                          LoadValidationExamples(spec.dataset(), data.tokenizer.get(), vocab_size));
    return data;
  }
  DatasetSplit split = SplitExamples(std::move(examples), spec.dataset().validation_fraction());
  data.train = std::move(split.train);
  data.validation = std::move(split.validation);
  return data;
}

int64_t TotalSteps(const lora::v1::TrainingSection& training, int64_t windows_per_epoch,
                   int64_t rows_per_step) {
  if (!training.has_epochs()) return training.steps();
  const double steps = std::ceil(training.epochs() * static_cast<double>(windows_per_epoch) /
                                 static_cast<double>(std::max<int64_t>(1, rows_per_step)));
  return std::max<int64_t>(1, static_cast<int64_t>(steps));
}

}  // namespace lora
