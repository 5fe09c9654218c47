#include "worker/engine/data/chat_examples.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lora {
namespace {

struct Turn {
  std::string role;
  std::string content;
  bool trained = true;
};

absl::StatusOr<std::vector<Turn>> ParseMessages(const nlohmann::json& line) {
  auto it = line.find("messages");
  if (it == line.end() || !it->is_array() || it->empty()) {
    return absl::InvalidArgumentError("\"messages\" must be a non-empty list");
  }
  std::vector<Turn> turns;
  for (size_t i = 0; i < it->size(); ++i) {
    const nlohmann::json& m = (*it)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": must be an object"));
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

}  // namespace

absl::StatusOr<Example> ChatExample(const nlohmann::json& line, const Tokenizer& tokenizer) {
  LORA_ASSIGN_OR_RETURN(std::vector<Turn> turns, ParseMessages(line));
  (void)turns;
  (void)tokenizer;
  return absl::UnimplementedError("messages: chat templates are not wired yet");
}

}  // namespace lora
