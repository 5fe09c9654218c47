// Training examples: token sequences with a per-token loss mask, from JSONL or generated.
//
//   LORA_ASSIGN_OR_RETURN(auto examples, LoadExamples(spec.dataset(), *tokenizer, vocab_size));
//   DatasetSplit split = SplitExamples(std::move(examples), /*validation_fraction=*/0.05);
#ifndef LORA_WORKER_ENGINE_DATA_EXAMPLES_H_
#define LORA_WORKER_ENGINE_DATA_EXAMPLES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lora/v1/job_spec.pb.h"
#include "worker/engine/data/tokenizer.h"

namespace lora {

struct Example {
  std::vector<int64_t> tokens;
  // target[i] = 1 when token i counts in the loss as a prediction from tokens[0..i-1].
  std::vector<uint8_t> target;
};

// Formats (dataset.format; "auto" takes it from the first line's keys and holds every other
// line to it):
//   {"text"} -> BOS text EOS, all trained;
//   {"prompt", "completion"} -> BOS prompt completion EOS, loss only on completion and EOS;
//   {"input_ids", "labels"? | "loss_mask"?} -> as given; all trained, or where labels != -100,
//     or where loss_mask is 1;
//   {"messages"} -> the conversation rendered with the tokenizer's chat template, loss only on
//     assistant turns (see chat_examples.h).
// Errors name the file and line. `vocab_size` bounds the token ids, and a tokenizer larger than
// the model's embeddings is refused before any line is read.
absl::StatusOr<std::vector<Example>> LoadExamples(const lora::v1::DatasetSection& dataset,
                                                  const Tokenizer& tokenizer, int64_t vocab_size);
// dataset.validation_path, in the dataset's format (tokenizer null: input_ids only).
absl::StatusOr<std::vector<Example>> LoadValidationExamples(const lora::v1::DatasetSection& dataset,
                                                            const Tokenizer* tokenizer,
                                                            int64_t vocab_size);

// input_ids data needs no tokenizer (a checkpoint without tokenizer files trains on it).
absl::StatusOr<bool> DatasetNeedsTokenizer(const lora::v1::DatasetSection& dataset);
absl::StatusOr<std::vector<Example>> LoadTokenIdExamples(const lora::v1::DatasetSection& dataset,
                                                         int64_t vocab_size);

// INVALID_ARGUMENT naming both sizes when the tokenizer has more ids than the model.
absl::Status CheckTokenizerFitsModel(const Tokenizer& tokenizer, int64_t vocab_size);

// Built-in deterministic datasets (no download), rendered as text and tokenized:
//   synthetic-arith: "37+48=" -> "85" (prompt/completion), sums a small model learns quickly;
//   synthetic-text: templated English sentences (text).
absl::StatusOr<std::vector<Example>> GenerateExamples(const std::string& name, int64_t count,
                                                      const Tokenizer& tokenizer);
std::vector<std::string> BuiltinDatasetNames();

struct DatasetSplit {
  std::vector<Example> train;
  std::vector<Example> validation;
};

// Deterministic split (fixed seed, independent of the training seed, so every run of a spec
// evaluates on the same examples). At least one example on each side when fraction > 0.
DatasetSplit SplitExamples(std::vector<Example> examples, double validation_fraction);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_EXAMPLES_H_
