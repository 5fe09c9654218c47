// Tokenizer for Jinja2 templates with the settings transformers uses for chat templates
// (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False).
//
//   LORA_ASSIGN_OR_RETURN(std::vector<Token> tokens, Lex(source));
//   // kText tokens already have whitespace control applied; comments are gone.
//
// Whitespace rules reproduced from Jinja2's lexer: newlines are normalized to "\n" and one
// trailing newline is dropped; `{%-`/`{{-`/`{#-` strip all whitespace before the tag and
// `-%}`/`-}}`/`-#}` all whitespace after it; a block or comment tag that is alone on its line
// loses the spaces before it (unless written `{%+`), and the first newline after `%}` or `#}`
// is dropped (unless written `+%}`).
#ifndef LORA_WORKER_ENGINE_DATA_JINJA_LEXER_H_
#define LORA_WORKER_ENGINE_DATA_JINJA_LEXER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lora::jinja {

enum class TokenKind {
  kText,        // literal template text
  kPrintBegin,  // {{
  kPrintEnd,    // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,  // text holds the unescaped value
  kInt,
  kFloat,
  kOperator,  // text holds the operator
  kEnd,
};

struct Token {
  TokenKind kind = TokenKind::kEnd;
  std::string text;
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;
};

// Largest template accepted: real chat templates are a few KiB.
inline constexpr size_t kMaxTemplateBytes = 1 << 20;

absl::StatusOr<std::vector<Token>> Lex(absl::string_view source);

}  // namespace lora::jinja

#endif  // LORA_WORKER_ENGINE_DATA_JINJA_LEXER_H_
