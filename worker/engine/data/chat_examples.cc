#include "worker/engine/data/chat_examples.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lora {
namespace {

using Turn = ChatMessage;

absl::StatusOr<std::vector<Turn>> ParseMessages(const nlohmann::json& line) {
  auto it = line.find("messages");
  if (it == line.end() || !it->is_array() || it->empty()) {
    return absl::InvalidArgumentError("\"messages\" must be a non-empty list");
  }
  std::vector<Turn> turns;
  for (size_t i = 0; i < it->size(); ++i) {
    const nlohmann::json& m = (*it)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object())
      return absl::InvalidArgumentError(absl::StrCat(where, ": must be an object"));
    Turn t;
    auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      return absl::InvalidArgumentError(absl::StrCat(where, ".role: must be a string"));
    t.role = role->get<std::string>();
    if (t.role != "system" && t.role != "user" && t.role != "assistant") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".role: must be \"system\", \"user\" or \"assistant\""));
    }
    auto content = m.find("content");
    if (content == m.end() || !content->is_string())
      return absl::InvalidArgumentError(absl::StrCat(where, ".content: must be a string"));
    t.content = content->get<std::string>();
    auto weight = m.find("weight");
    if (weight != m.end()) {
      if (t.role != "assistant") {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".weight: only assistant turns are trained"));
      }
      if (!weight->is_number() || (weight->get<double>() != 0 && weight->get<double>() != 1))
        return absl::InvalidArgumentError(absl::StrCat(where, ".weight: must be 0 or 1"));
      t.trained = weight->get<double>() != 0;
    }
    t.trained = t.trained && t.role == "assistant";
    turns.push_back(std::move(t));
  }
  return turns;
}

// Where byte `boundary` of `text` falls in its encoding `whole`: Encode(text[0, boundary)) and
// `whole` agree on their first n tokens. `aligned` when that is all of the prefix's encoding
// (no token straddles the boundary); otherwise token n carries bytes on both sides.
struct Cut {
  size_t n;
  bool aligned;
};

Cut CutAt(const Tokenizer& tok, const std::string& text, size_t boundary,
          const std::vector<int64_t>& whole) {
  if (boundary == 0) return {0, true};
  if (boundary >= text.size()) return {whole.size(), true};
  const std::vector<int64_t> prefix = tok.Encode(absl::string_view(text).substr(0, boundary));
  size_t n = 0;
  while (n < prefix.size() && n < whole.size() && prefix[n] == whole[n]) ++n;
  return {n, n == prefix.size()};
}

}  // namespace

absl::StatusOr<ChatTemplate> TokenizerChatTemplate(const Tokenizer& tokenizer) {
  if (tokenizer.chat_template().empty()) {
    return absl::InvalidArgumentError(
        "model.tokenizer: the tokenizer has no chat_template (tokenizer_config.json), which "
        "dataset.format = \"messages\" needs; use a chat model's tokenizer or another format");
  }
  auto parsed = ChatTemplate::Parse(tokenizer.chat_template());
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(), absl::StrCat("model.tokenizer: chat_template: ",
                                                             parsed.status().message()));
  }
  return parsed;
}

absl::StatusOr<Example> ChatExample(const nlohmann::json& line, const Tokenizer& tokenizer,
                                    const ChatTemplate& chat_template) {
  LORA_ASSIGN_OR_RETURN(std::vector<Turn> turns, ParseMessages(line));
  LORA_ASSIGN_OR_RETURN(
      RenderedChat chat,
      RenderForTraining(chat_template, turns, tokenizer.bos_token(), tokenizer.eos_token()));
  Example ex;
  ex.tokens = tokenizer.Encode(chat.text);
  ex.target.assign(ex.tokens.size(), 0);
  for (const auto& [begin, end] : chat.trained) {
    // A token trains when it carries any trained byte: a straddling token at either end does.
    const size_t first = CutAt(tokenizer, chat.text, begin, ex.tokens).n;
    const Cut last = CutAt(tokenizer, chat.text, end, ex.tokens);
    const size_t stop = std::min(ex.tokens.size(), last.aligned ? last.n : last.n + 1);
    for (size_t i = first; i < stop; ++i) ex.target[i] = 1;
  }
  return ex;
}

}  // namespace lora
