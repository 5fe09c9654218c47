// Nesting limits for documents that come from outside (job specs, dataset lines, config files,
// tokenizer files, events from workers). toml11 parses recursively and nlohmann::json destroys
// values recursively, so a document nested 100,000 deep overflows the stack; these scans run
// first, in linear time and constant memory, and name the source instead.
//
//   LORA_RETURN_IF_ERROR(CheckJsonNesting(text, "config.json"));
//   auto j = nlohmann::json::parse(text);                   // now bounded
//   // or, both steps and an error that never quotes the text:
//   LORA_ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonDocument(path, /*max_bytes=*/1 << 20));
//
// Brackets inside strings (and, for TOML, comments) do not count; the scans do not validate
// anything else, which stays the parser's job.
#ifndef LORA_COMMON_NESTING_H_
#define LORA_COMMON_NESTING_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace lora {

inline constexpr int kMaxDocumentNesting = 64;

// INVALID_ARGUMENT "<source>: nested deeper than N levels" when [ and { nest deeper.
absl::Status CheckJsonNesting(absl::string_view text, absl::string_view source,
                              int max_depth = kMaxDocumentNesting);
absl::Status CheckTomlNesting(absl::string_view text, absl::string_view source,
                              int max_depth = kMaxDocumentNesting);

// CheckJsonNesting, then nlohmann's parser; a syntax error says where ("<source>: invalid JSON
// near byte B of N"), never what the text holds.
absl::StatusOr<nlohmann::json> ParseJsonDocument(absl::string_view text, absl::string_view source,
                                                 int max_depth = kMaxDocumentNesting);
// A regular file of at most `max_bytes`, through ParseJsonDocument.
absl::StatusOr<nlohmann::json> ReadJsonDocument(const std::string& path, uint64_t max_bytes,
                                                int max_depth = kMaxDocumentNesting);

}  // namespace lora

#endif  // LORA_COMMON_NESTING_H_
