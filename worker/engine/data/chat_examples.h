// Chat data: one `{"messages": [...]}` line becomes one training example, rendered with the
// model's chat template exactly as transformers' apply_chat_template renders it, with the loss
// only on assistant turns (their content and end-of-turn token).
//
//   LORA_ASSIGN_OR_RETURN(ChatTemplate t, TokenizerChatTemplate(*tokenizer));   // once
//   LORA_ASSIGN_OR_RETURN(Example ex, ChatExample(line_json, *tokenizer, t));    // per line
//
// Tokens: the rendered text is encoded whole, as apply_chat_template(tokenize=True) does (no
// post-processor: templates write their own BOS). A token trains when it carries any byte of a
// trained span; spans start after a generation prompt and end at an end-of-turn marker, which
// real tokenizers never cross.
//
// A line: {"messages": [{"role": "system"|"user"|"assistant", "content": "...",
//                        "weight": 0|1 (optional, assistant turns only; 0 = not trained)}]}.
// Errors name the message index and field; a tokenizer without a chat template is an error
// naming model.tokenizer (never a silent fallback to some default format).
#ifndef LORA_WORKER_ENGINE_DATA_CHAT_EXAMPLES_H_
#define LORA_WORKER_ENGINE_DATA_CHAT_EXAMPLES_H_

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/data/chat_template.h"
#include "worker/engine/data/examples.h"
#include "worker/engine/data/tokenizer.h"

namespace lora {

// The tokenizer's chat_template, parsed; an error naming model.tokenizer when it has none.
absl::StatusOr<ChatTemplate> TokenizerChatTemplate(const Tokenizer& tokenizer);

absl::StatusOr<Example> ChatExample(const nlohmann::json& line, const Tokenizer& tokenizer,
                                    const ChatTemplate& chat_template);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_CHAT_EXAMPLES_H_
