// Nesting limits for documents that come from outside (job specs, dataset lines, config files,
// tokenizer files, events from workers). toml11 parses recursively and nlohmann::json destroys
// values recursively, so a document nested 100,000 deep overflows the stack; these scans run
// first, in linear time and constant memory, and name the source instead.
//
//   LORA_RETURN_IF_ERROR(CheckJsonNesting(text, "config.json"));
//   auto j = nlohmann::json::parse(text);                   // now bounded
//
// Brackets inside strings (and, for TOML, comments) do not count; the scans do not validate
// anything else, which stays the parser's job.
#ifndef LORA_COMMON_NESTING_H_
#define LORA_COMMON_NESTING_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lora {

inline constexpr int kMaxDocumentNesting = 64;

// INVALID_ARGUMENT "<source>: nested deeper than N levels" when [ and { nest deeper.
absl::Status CheckJsonNesting(absl::string_view text, absl::string_view source,
                              int max_depth = kMaxDocumentNesting);
absl::Status CheckTomlNesting(absl::string_view text, absl::string_view source,
                              int max_depth = kMaxDocumentNesting);

}  // namespace lora

#endif  // LORA_COMMON_NESTING_H_
