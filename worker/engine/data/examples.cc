#include "worker/engine/data/examples.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "worker/engine/data/jsonl.h"

namespace lora {
namespace {

constexpr uint64_t kSplitSeed = 0x5eed5eed;

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
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is outside the model's vocabulary [0, ", vocab_size, ")"));
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

absl::StatusOr<std::vector<Example>> LoadExamples(const lora::v1::DatasetSection& dataset,
                                                  const Tokenizer& tok, int64_t vocab_size) {
  if (tok.vocab_size() > vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("model.tokenizer: the tokenizer has ",
                                                   tok.vocab_size(), " tokens but the model only ",
                                                   vocab_size));
  }
  if (!dataset.name().empty()) {
    auto generated = GenerateExamples(dataset.name(), dataset.num_examples(), tok);
    if (!generated.ok()) return generated.status();
    return generated;
  }
  std::vector<Example> out;
  const std::string& format = dataset.format();
  absl::Status s =
      ForEachJsonLine(dataset.path(), [&](int64_t, const nlohmann::json& j) -> absl::Status {
        if (!j.is_object()) return absl::InvalidArgumentError("expected a JSON object");
        Example ex;
        if (format == "text") {
          auto text = StringField(j, "text");
          if (!text.ok()) return text.status();
          ex = MakeExample(tok, "", *text, false);
        } else if (format == "prompt_completion") {
          auto prompt = StringField(j, "prompt");
          if (!prompt.ok()) return prompt.status();
          auto completion = StringField(j, "completion");
          if (!completion.ok()) return completion.status();
          ex = MakeExample(tok, *prompt, *completion, true);
        } else {
          auto it = j.find("input_ids");
          if (it == j.end() || !it->is_array())
            return absl::InvalidArgumentError("\"input_ids\" must be a list of integers");
          for (const auto& id : *it) {
            if (!id.is_number_integer())
              return absl::InvalidArgumentError("\"input_ids\" must be a list of integers");
            ex.tokens.push_back(id.get<int64_t>());
          }
          ex.target.assign(ex.tokens.size(), 1);
        }
        if (ex.tokens.size() < 2)
          return absl::InvalidArgumentError("example has fewer than 2 tokens");
        absl::Status v = CheckVocab(ex, vocab_size);
        if (!v.ok()) return v;
        out.push_back(std::move(ex));
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  if (out.empty())
    return absl::InvalidArgumentError(absl::StrCat(dataset.path(), ": dataset has no examples"));
  return out;
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
