// Chat templates for `dataset.format = "messages"`: renders a conversation exactly as Hugging
// Face transformers' `tokenizer.apply_chat_template(messages, tokenize=False)` does with the
// model's `chat_template` (tokenizer_config.json), and finds the bytes the loss trains on.
//
//   LORA_ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::Parse(config["chat_template"]));
//   std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", "Hi"},
//                                    {"assistant", "Hello!"}};
//   LORA_ASSIGN_OR_RETURN(RenderedChat r, RenderForTraining(t, chat, "<s>", "</s>"));
//   // r.text == apply_chat_template(chat, tokenize=False); r.trained == {{b, e}}: "Hello!</s>"
//
// Invariants:
// - The template is interpreted by jinja_eval (a Jinja2 subset: see docs/JOB_SPEC.md, "Chat
//   templates"); whatever it does not support fails in Parse or Render with INVALID_ARGUMENT
//   naming the construct and line, never with different text.
// - The render context is what transformers passes: messages (role, content), add_generation_
//   prompt, bos_token, eos_token, tools = None, documents = None, plus the globals
//   raise_exception and strftime_now. A template's raise_exception(msg) is an INVALID_ARGUMENT
//   carrying msg.
// - Rendering is bounded (output size, loop iterations, nesting): hostile templates or data
//   produce errors, not crashes.
#ifndef LORA_WORKER_ENGINE_DATA_CHAT_TEMPLATE_H_
#define LORA_WORKER_ENGINE_DATA_CHAT_TEMPLATE_H_

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/jinja_eval.h"
#include "worker/engine/data/jinja_parser.h"

namespace lora {

struct ChatMessage {
  std::string role;
  std::string content;
  bool trained = true;  // the JSONL "weight" != 0; only assistant messages ever train
};

class ChatTemplate {
 public:
  static absl::StatusOr<ChatTemplate> Parse(const std::string& source,
                                            const jinja::RenderLimits& limits = {});

  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages,
                                     bool add_generation_prompt, const std::string& bos_token,
                                     const std::string& eos_token) const;

 private:
  ChatTemplate(std::shared_ptr<const jinja::Program> program, jinja::RenderLimits limits)
      : program_(std::move(program)), limits_(limits) {}

  std::shared_ptr<const jinja::Program> program_;
  jinja::RenderLimits limits_;
};

// The rendered conversation and the byte ranges [begin, end) of `text` that train. Each
// assistant message i with trained=true contributes what rendering it adds after its prompt:
// Render(messages[0..i], gen=false) minus Render(messages[0..i-1], gen=true), i.e. its content
// and its end-of-turn marker. Both renderings must be prefixes of `text`; a template for which
// they are not (it renders a conversation's last turn differently from the same turn followed
// by more messages, as Qwen3 does with its empty <think> block) is an INVALID_ARGUMENT naming
// the message index.
struct RenderedChat {
  std::string text;
  std::vector<std::pair<size_t, size_t>> trained;
};

absl::StatusOr<RenderedChat> RenderForTraining(const ChatTemplate& t,
                                               const std::vector<ChatMessage>& messages,
                                               const std::string& bos_token,
                                               const std::string& eos_token);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_CHAT_TEMPLATE_H_
