#include "worker/engine/data/chat_template.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/data/jinja_value.h"

namespace lora {

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(const std::string& source,
                                                 const jinja::RenderLimits& limits) {
  LORA_ASSIGN_OR_RETURN(std::unique_ptr<jinja::Program> program, jinja::ParseTemplate(source));
  return ChatTemplate(std::shared_ptr<const jinja::Program>(std::move(program)), limits);
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt,
                                                 const std::string& bos_token,
                                                 const std::string& eos_token) const {
  std::vector<jinja::Value> items;
  items.reserve(messages.size());
  for (const ChatMessage& m : messages) {
    LORA_ASSIGN_OR_RETURN(jinja::Value dict,
                          jinja::Value::Dict({{"role", jinja::Value::String(m.role)},
                                              {"content", jinja::Value::String(m.content)}}));
    items.push_back(std::move(dict));
  }
  LORA_ASSIGN_OR_RETURN(jinja::Value list, jinja::Value::List(std::move(items)));
  const std::vector<std::pair<std::string, jinja::Value>> context = {
      {"messages", std::move(list)},
      {"tools", jinja::Value::None()},
      {"documents", jinja::Value::None()},
      {"add_generation_prompt", jinja::Value::Bool(add_generation_prompt)},
      {"bos_token", jinja::Value::String(bos_token)},
      {"eos_token", jinja::Value::String(eos_token)},
  };
  return jinja::RenderProgram(*program_, context, limits_);
}

absl::StatusOr<RenderedChat> RenderForTraining(const ChatTemplate& t,
                                               const std::vector<ChatMessage>& messages,
                                               const std::string& bos_token,
                                               const std::string& eos_token) {
  RenderedChat out;
  LORA_ASSIGN_OR_RETURN(out.text, t.Render(messages, false, bos_token, eos_token));
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "assistant" || !messages[i].trained) continue;
    const std::vector<ChatMessage> before(messages.begin(), messages.begin() + i);
    const std::vector<ChatMessage> through(messages.begin(), messages.begin() + i + 1);
    absl::StatusOr<std::string> prompt = t.Render(before, true, bos_token, eos_token);
    if (!prompt.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("rendering the prompt of message ", i,
                                                     " (messages 0..", i,
                                                     ", without it): ", prompt.status().message()));
    }
    absl::StatusOr<std::string> turn = t.Render(through, false, bos_token, eos_token);
    if (!turn.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("rendering messages 0..", i, ": ", turn.status().message()));
    }
    if (!absl::StartsWith(*turn, *prompt) || !absl::StartsWith(out.text, *turn)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the chat template is not prefix-stable at message ", i, " (assistant): ",
          !absl::StartsWith(*turn, *prompt)
              ? "rendering the conversation through this message does not start with the "
                "prompt rendered for it (add_generation_prompt=true)"
              : "the conversation ending with this message renders differently from the same "
                "messages followed by the rest (the template treats a final assistant turn "
                "specially)",
          "; its trained span cannot be located"));
    }
    if (turn->size() > prompt->size()) out.trained.emplace_back(prompt->size(), turn->size());
  }
  return out;
}

}  // namespace lora
