#include "worker/engine/data/examples.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/data/chat_examples.h"
#include "worker/engine/data/jsonl.h"

namespace lora {
namespace {

constexpr uint64_t kSplitSeed = 0x5eed5eed;
constexpr int64_t kIgnoredLabel = -100;  // transformers' ignore_index

void Append(Example* ex, const std::vector<int64_t>& ids, uint8_t target) {
  ex->tokens.insert(ex->tokens.end(), ids.begin(), ids.end());
  ex->target.insert(ex->target.end(), ids.size(), target);
}

Example MakeExample(const Tokenizer& tok, const std::string& prompt, const std::string& completion,
                    bool prompt_masked) {
  Example ex;
  if (tok.bos_id() >= 0) Append(&ex, {tok.bos_id()}, 0);
  Append(&ex, tok.Encode(prompt), prompt_masked ? 0 : 1);
  Append(&ex, tok.Encode(completion), 1);
  if (tok.eos_id() >= 0) Append(&ex, {tok.eos_id()}, 1);
  return ex;
}

absl::Status CheckVocab(const Example& ex, int64_t vocab_size) {
  for (int64_t id : ex.tokens) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the model's vocabulary [0, ", vocab_size,
                       ") (vocab_size in the model's config.json)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> StringField(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return absl::InvalidArgumentError(absl::StrCat("missing \"", key, "\""));
  if (!it->is_string())
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a string"));
  return it->get<std::string>();
}

}  // namespace

std::vector<std::string> BuiltinDatasetNames() { return {"synthetic-arith", "synthetic-text"}; }

absl::StatusOr<std::vector<Example>> GenerateExamples(const std::string& name, int64_t count,
                                                      const Tokenizer& tok) {
  std::mt19937_64 rng(0xda7a5e7);
  std::vector<Example> out;
  out.reserve(static_cast<size_t>(count));
  if (name == "synthetic-arith") {
    for (int64_t i = 0; i < count; ++i) {
      const uint64_t a = rng() % 100, b = rng() % 100;
      out.push_back(MakeExample(tok, absl::StrCat(a, "+", b, "="), absl::StrCat(a + b),
                                /*prompt_masked=*/true));
    }
    return out;
  }
  if (name == "synthetic-text") {
    const char* subjects[] = {"the cat", "a dog",       "my friend", "the teacher",
                              "a robot", "the old man", "our team",  "the bird"};
    const char* verbs[] = {"sees",   "likes",   "finds",   "paints",
                           "builds", "carries", "follows", "hears"};
    const char* objects[] = {"a red ball",    "the green door", "two blue cups",
                             "a small house", "the tall tree",  "three yellow boats"};
    const char* places[] = {"in the park", "at home",    "near the river",
                            "on the hill", "by the sea", "in the city"};
    for (int64_t i = 0; i < count; ++i) {
      std::string s = absl::StrCat(subjects[rng() % 8], " ", verbs[rng() % 8], " ",
                                   objects[rng() % 6], " ", places[rng() % 6], ".");
      out.push_back(MakeExample(tok, "", s, /*prompt_masked=*/false));
    }
    return out;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dataset.name: unknown built-in dataset '", name, "'"));
}

namespace {

absl::StatusOr<std::string> DetectFormat(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("expected a JSON object");
  if (j.contains("messages")) return std::string("messages");
  if (j.contains("input_ids")) return std::string("input_ids");
  if (j.contains("prompt") && j.contains("completion")) return std::string("prompt_completion");
  if (j.contains("text")) return std::string("text");
  return absl::InvalidArgumentError(
      "cannot tell the dataset's format: expected \"messages\", \"input_ids\", \"prompt\" + "
      "\"completion\" or \"text\" (or set dataset.format)");
}

absl::StatusOr<std::vector<int64_t>> IntList(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array())
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a list of integers"));
  std::vector<int64_t> out;
  out.reserve(it->size());
  for (const auto& v : *it) {
    if (!v.is_number_integer())
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a list of integers"));
    out.push_back(v.get<int64_t>());
  }
  return out;
}

// {"input_ids"} with optional "labels" (HF convention: -100 = not scored, otherwise the token
// itself; lora-train trains next-token prediction of the sequence) or "loss_mask" (0/1).
absl::StatusOr<Example> TokenExample(const nlohmann::json& j) {
  Example ex;
  LORA_ASSIGN_OR_RETURN(ex.tokens, IntList(j, "input_ids"));
  ex.target.assign(ex.tokens.size(), 1);
  const bool has_labels = j.contains("labels"), has_mask = j.contains("loss_mask");
  if (has_labels && has_mask)
    return absl::InvalidArgumentError("give \"labels\" or \"loss_mask\", not both");
  if (has_labels || has_mask) {
    const char* key = has_labels ? "labels" : "loss_mask";
    LORA_ASSIGN_OR_RETURN(std::vector<int64_t> v, IntList(j, key));
    if (v.size() != ex.tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", key, "\" has ", v.size(), " entries but \"input_ids\" has ", ex.tokens.size()));
    }
    for (size_t i = 0; i < v.size(); ++i) {
      if (has_labels) {
        if (v[i] != kIgnoredLabel && v[i] != ex.tokens[i]) {
          return absl::InvalidArgumentError(
              absl::StrCat("labels[", i, "] is ", v[i],
                           ": each label must be -100 (not scored) or equal "
                           "input_ids[",
                           i, "] (lora-train trains next-token prediction of the sequence)"));
        }
        ex.target[i] = v[i] != kIgnoredLabel;
      } else {
        if (v[i] != 0 && v[i] != 1)
          return absl::InvalidArgumentError(absl::StrCat("loss_mask[", i, "] must be 0 or 1"));
        ex.target[i] = static_cast<uint8_t>(v[i]);
      }
    }
  }
  return ex;
}

// `tok` may be null when every line is input_ids.
absl::StatusOr<std::vector<Example>> ReadExamplesFile(const std::string& path,
                                                      const std::string& configured_format,
                                                      const Tokenizer* tok, int64_t vocab_size) {
  std::vector<Example> out;
  std::string format = configured_format == "auto" ? "" : configured_format;
  int64_t detected_on = 0;
  std::optional<ChatTemplate> chat_template;  // parsed at the first chat line
  absl::Status s =
      ForEachJsonLine(path, [&](int64_t line, const nlohmann::json& j) -> absl::Status {
        if (!j.is_object()) return absl::InvalidArgumentError("expected a JSON object");
        if (format.empty()) {
          LORA_ASSIGN_OR_RETURN(format, DetectFormat(j));
          detected_on = line;
        } else if (detected_on > 0) {
          auto here = DetectFormat(j);
          if (!here.ok() || *here != format) {
            return absl::InvalidArgumentError(
                absl::StrCat("this line is not in the dataset's format \"", format,
                             "\" (detected from line ", detected_on, ")"));
          }
        }
        Example ex;
        if (tok == nullptr && format != "input_ids") {
          return absl::FailedPreconditionError(
              absl::StrCat("\"", format, "\" data needs a tokenizer and none was loaded"));
        }
        if (format == "text") {
          LORA_ASSIGN_OR_RETURN(std::string text, StringField(j, "text"));
          ex = MakeExample(*tok, "", text, false);
        } else if (format == "prompt_completion") {
          LORA_ASSIGN_OR_RETURN(std::string prompt, StringField(j, "prompt"));
          LORA_ASSIGN_OR_RETURN(std::string completion, StringField(j, "completion"));
          ex = MakeExample(*tok, prompt, completion, true);
        } else if (format == "messages") {
          if (!chat_template.has_value()) {
            auto parsed = TokenizerChatTemplate(*tok);
            // Not the line's fault: report it without the "path:line: " prefix's implication.
            if (!parsed.ok()) return parsed.status();
            chat_template = std::move(*parsed);
          }
          LORA_ASSIGN_OR_RETURN(ex, ChatExample(j, *tok, *chat_template));
        } else {
          LORA_ASSIGN_OR_RETURN(ex, TokenExample(j));
        }
        if (ex.tokens.size() < 2)
          return absl::InvalidArgumentError("example has fewer than 2 tokens");
        LORA_RETURN_IF_ERROR(CheckVocab(ex, vocab_size));
        out.push_back(std::move(ex));
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  if (out.empty())
    return absl::InvalidArgumentError(absl::StrCat(path, ": dataset has no examples"));
  return out;
}

}  // namespace

absl::Status CheckTokenizerFitsModel(const Tokenizer& tok, int64_t vocab_size) {
  if (tok.vocab_size() > vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.tokenizer: the tokenizer has ", tok.vocab_size(),
        " tokens but the model's embeddings have only ", vocab_size,
        " rows (vocab_size in config.json): this tokenizer does not belong to this model"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Example>> LoadExamples(const lora::v1::DatasetSection& dataset,
                                                  const Tokenizer& tok, int64_t vocab_size) {
  LORA_RETURN_IF_ERROR(CheckTokenizerFitsModel(tok, vocab_size));
  if (!dataset.name().empty()) return GenerateExamples(dataset.name(), dataset.num_examples(), tok);
  return ReadExamplesFile(dataset.path(), dataset.format(), &tok, vocab_size);
}

absl::StatusOr<std::vector<Example>> LoadValidationExamples(const lora::v1::DatasetSection& dataset,
                                                            const Tokenizer* tok,
                                                            int64_t vocab_size) {
  return ReadExamplesFile(dataset.validation_path(), dataset.format(), tok, vocab_size);
}

absl::StatusOr<std::vector<Example>> LoadTokenIdExamples(const lora::v1::DatasetSection& dataset,
                                                         int64_t vocab_size) {
  return ReadExamplesFile(dataset.path(), dataset.format(), nullptr, vocab_size);
}

absl::StatusOr<bool> DatasetNeedsTokenizer(const lora::v1::DatasetSection& dataset) {
  if (!dataset.name().empty()) return true;
  if (dataset.format() != "auto") return dataset.format() != "input_ids";
  std::string format;
  // The first line decides (every other line is held to it when read).
  absl::Status s = ForEachJsonLine(dataset.path(), [&](int64_t, const nlohmann::json& j) {
    LORA_ASSIGN_OR_RETURN(format, DetectFormat(j));
    return absl::CancelledError("first line read");
  });
  if (!s.ok() && !absl::IsCancelled(s)) return s;
  return format != "input_ids";
}

DatasetSplit SplitExamples(std::vector<Example> examples, double validation_fraction) {
  std::mt19937_64 rng(kSplitSeed);
  std::vector<size_t> order(examples.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  // Fisher-Yates with our own draws: std::shuffle's output is implementation-defined.
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  size_t n_val = 0;
  if (validation_fraction > 0 && examples.size() >= 2) {
    n_val = static_cast<size_t>(
        std::llround(validation_fraction * static_cast<double>(examples.size())));
    n_val = std::clamp<size_t>(n_val, 1, examples.size() - 1);
  }
  DatasetSplit split;
  for (size_t i = 0; i < order.size(); ++i) {
    (i < n_val ? split.validation : split.train).push_back(std::move(examples[order[i]]));
  }
  return split;
}

}  // namespace lora
