// Structured log lines for lorad and lora-worker: one line per call, on stderr, as text (the
// default: "lorad: message", what an operator reads) or as JSON (`--log-format json`: one object
// per line for a log shipper).
//
//   // In main, once the flags are parsed and before other threads log:
//   auto format = lora::ParseLogFormat(flag);             // "text" | "json"
//   lora::LogOptions options;
//   options.component = "lora-worker";
//   options.format = *format;
//   options.fields = {{"worker", worker_id}};              // on every JSON line
//   lora::InitLogging(options);
//
//   lora::LogInfo(absl::StrCat("assigned jobs/", id, " attempt ", a, " rank ", r))
//       .Job(id).Attempt(a).Rank(r);
//   lora::LogWarning("upload failed: ...").Job(id).Field("path", path);
//
// The line is written when the LogLine temporary dies, at the end of the statement:
//   text  lora-worker: assigned jobs/j1 attempt 1 rank 0        (fields are not printed: put
//                                                                what a reader needs in the
//         lorad: error: --listen: cannot listen on ...           message; errors say "error: ")
//   json  {"ts":"2025-01-02T03:04:05.678Z","level":"info","component":"lora-worker",
//          "msg":"assigned jobs/j1 attempt 1 rank 0","worker":"w1","job":"j1","attempt":1,
//          "rank":0}
// ts is RFC 3339 in UTC with milliseconds; level is info, warning or error; invalid UTF-8
// in a message or field becomes U+FFFD, so every line parses. A text message's newlines are
// written as "\n" (one record, one line).
//
// Thread-safe: each line is formatted whole and written with one write(2) under a lock, so lines
// of different threads never interleave (and lines up to PIPE_BUF bytes are atomic even between
// processes sharing the file). Never log secrets (tokens, keys) or file contents.
#ifndef LORA_COMMON_LOG_H_
#define LORA_COMMON_LOG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace lora {

enum class LogFormat { kText, kJson };
enum class LogLevel { kInfo, kWarning, kError };

// "text" or "json"; InvalidArgument naming both otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view name);
const char* LogLevelName(LogLevel level);  // "info", "warning", "error"

struct LogField {
  std::string key;
  std::variant<std::string, int64_t, double, bool> value;
};

struct LogOptions {
  std::string component = "lora";  // the text prefix and JSON "component"
  LogFormat format = LogFormat::kText;
  std::vector<LogField> fields;  // added to every JSON line (a line's own field of a key wins)
  int fd = 2;                    // where lines go (stderr); the caller keeps it open
};

// Sets how this process logs. Call once early in main; later calls are safe (tests) and apply
// to lines written after them.
void InitLogging(LogOptions options);

// One formatted line, newline included: what a LogLine writes (exposed for tests).
std::string FormatLogLine(const LogOptions& options, LogLevel level, int64_t unix_micros,
                          std::string_view message, const std::vector<LogField>& fields);

class LogLine {
 public:
  LogLine(LogLevel level, std::string message) : level_(level), message_(std::move(message)) {}
  ~LogLine();  // formats and writes the line
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;

  // The ids a line concerns. Job takes "ID" or "jobs/ID" and records the bare ID.
  LogLine& Job(std::string_view id);
  LogLine& Attempt(int64_t attempt) { return Field("attempt", attempt); }
  LogLine& Rank(int64_t rank) { return Field("rank", rank); }
  LogLine& Worker(std::string_view id) { return Field("worker", id); }

  // Any other field: a string, an integer, a floating-point number or a bool.
  template <typename T>
  LogLine& Field(std::string_view key, T value) {
    using V = std::decay_t<T>;
    if constexpr (std::is_same_v<V, bool>) {
      fields_.push_back({std::string(key), value});
    } else if constexpr (std::is_integral_v<V>) {
      fields_.push_back({std::string(key), static_cast<int64_t>(value)});
    } else if constexpr (std::is_floating_point_v<V>) {
      fields_.push_back({std::string(key), static_cast<double>(value)});
    } else {
      fields_.push_back({std::string(key), std::string(value)});
    }
    return *this;
  }

 private:
  LogLevel level_;
  std::string message_;
  std::vector<LogField> fields_;
};

// Returned as prvalues (C++17 guarantees no copy): the line is written at the end of the
// caller's statement.
inline LogLine LogInfo(std::string message) { return LogLine(LogLevel::kInfo, std::move(message)); }
inline LogLine LogWarning(std::string message) {
  return LogLine(LogLevel::kWarning, std::move(message));
}
inline LogLine LogError(std::string message) {
  return LogLine(LogLevel::kError, std::move(message));
}

}  // namespace lora

#endif  // LORA_COMMON_LOG_H_
