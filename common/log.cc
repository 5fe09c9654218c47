#include "common/log.h"

#include <errno.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace lora {
namespace {

std::mutex& ConfigMutex() {
  static std::mutex* mu = new std::mutex();  // never destroyed: threads may log during exit
  return *mu;
}

LogOptions& Config() {
  static LogOptions* options = new LogOptions();
  return *options;
}

// RFC 3339, UTC, milliseconds: 2025-01-02T03:04:05.678Z.
std::string Rfc3339(int64_t unix_micros) {
  int64_t seconds = unix_micros / 1000000;
  int64_t micros = unix_micros % 1000000;
  if (micros < 0) {
    micros += 1000000;
    --seconds;
  }
  const time_t t = static_cast<time_t>(seconds);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(micros / 1000));
  return buf;
}

void SetJson(nlohmann::ordered_json& object, const LogField& field) {
  // The record's own keys are not fields' to replace.
  if (field.key == "ts" || field.key == "level" || field.key == "component" || field.key == "msg")
    return;
  std::visit([&](const auto& v) { object[field.key] = v; }, field.value);
}

void WriteAll(int fd, const std::string& line) {
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // nowhere to complain to
    done += static_cast<size_t>(n);
  }
}

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log format '", std::string(name), "': expected text or json"));
}

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

void InitLogging(LogOptions options) {
  std::lock_guard<std::mutex> lock(ConfigMutex());
  Config() = std::move(options);
}

std::string FormatLogLine(const LogOptions& options, LogLevel level, int64_t unix_micros,
                          std::string_view message, const std::vector<LogField>& fields) {
  if (options.format == LogFormat::kText) {
    std::string line =
        absl::StrCat(options.component, ": ", level == LogLevel::kError ? "error: " : "");
    line.reserve(line.size() + message.size() + 1);
    for (char c : message) {
      if (c == '\n') {
        line += "\\n";
      } else if (c != '\r') {
        line += c;
      }
    }
    line += '\n';
    return line;
  }
  nlohmann::ordered_json object;
  object["ts"] = Rfc3339(unix_micros);
  object["level"] = LogLevelName(level);
  object["component"] = options.component;
  object["msg"] = std::string(message);
  for (const LogField& f : options.fields) SetJson(object, f);
  for (const LogField& f : fields) SetJson(object, f);
  // Replace, not throw: messages carry text from outside (paths, workers' errors).
  std::string line = object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += '\n';
  return line;
}

LogLine& LogLine::Job(std::string_view id) {
  if (id.substr(0, 5) == "jobs/") id.remove_prefix(5);
  return Field("job", std::string(id));
}

LogLine::~LogLine() {
  const int64_t now = NowMicros();
  std::lock_guard<std::mutex> lock(ConfigMutex());
  const LogOptions& options = Config();
  WriteAll(options.fd, FormatLogLine(options, level_, now, message_, fields_));
}

}  // namespace lora
