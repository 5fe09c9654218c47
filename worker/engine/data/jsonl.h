// Line-by-line JSONL reading with errors that name the file and line.
//
//   LORA_RETURN_IF_ERROR(ForEachJsonLine(path, [&](int64_t line, const nlohmann::json& j) {
//     return Use(j);   // an error returned here is prefixed with "path:line: "
//   }));
#ifndef LORA_WORKER_ENGINE_DATA_JSONL_H_
#define LORA_WORKER_ENGINE_DATA_JSONL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lora {

// A line may hold a long conversation or token list, but not an unbounded one.
inline constexpr size_t kMaxJsonLineBytes = 64 << 20;

// Calls `fn` for every non-blank line of a regular file. Stops at the first error. Lines over
// kMaxJsonLineBytes or nested deeper than kMaxDocumentNesting are errors naming file:line;
// errors never quote the line.
absl::Status ForEachJsonLine(
    const std::string& path,
    const std::function<absl::Status(int64_t line, const nlohmann::json&)>& fn);

// Reads `{"input_ids": [...]}` lines: one token sequence per line, nothing added.
absl::StatusOr<std::vector<std::vector<int64_t>>> ReadTokenSequences(const std::string& path,
                                                                     int64_t vocab_size);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_JSONL_H_
