// loractl output: tables for people, JSON / YAML for scripts, and exit codes.
#ifndef LORA_CLIENT_LORACTL_OUTPUT_H_
#define LORA_CLIENT_LORACTL_OUTPUT_H_

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/message.h"
#include "lora/v1/job.pb.h"
#include "nlohmann/json.hpp"

namespace lora::loractl {

// Exit codes (docs/LORACTL.md).
inline constexpr int kOk = 0;
inline constexpr int kError = 1;         // anything else (server-side error, I/O)
inline constexpr int kUsage = 2;         // bad flags or an invalid job spec
inline constexpr int kNotFound = 3;      // no such job / checkpoint / artifact
inline constexpr int kJobFailed = 4;     // the watched job ended FAILED
inline constexpr int kJobCancelled = 5;  // the watched job ended CANCELLED
inline constexpr int kUnreachable = 6;   // lorad could not be reached
inline constexpr int kUnauthenticated = 7;

enum class Format { kTable, kJson, kYaml };

// Prints "loractl: error: ..." and maps the status to an exit code. A live status line on the
// terminal is ended first, so the error starts a line of its own.
int ReportError(const absl::Status& status);

// "loractl: TEXT" on stderr. A live status line is erased first and drawn again below it.
void Notice(const std::string& text);

// The terminal's live status line: a progress bar redrawn in place, with no newline after it
// (e.g. `watch`'s). Whatever draws one says so, so that messages on stderr never land on it.
// At most one at a time.
//   LiveLineDrawn(stdout, [this] { Draw(); });  // after each draw
//   EndLiveLine();                               // a newline: the line stays as it was
void LiveLineDrawn(std::FILE* out, std::function<void()> redraw);
void EndLiveLine();
// Forgets the line without printing (the one who drew it ended or erased it itself).
void LiveLineGone();

nlohmann::json ToJson(const google::protobuf::Message& message);
std::string ToYaml(const nlohmann::json& value);
// Messages as JSON/YAML documents (a list prints as a JSON array / YAML sequence).
void PrintMessages(const std::vector<const google::protobuf::Message*>& messages, Format format,
                   bool as_list);

// A left-aligned text table.
void PrintTable(const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows);

std::string StateName(lora::v1::JobState state);        // "RUNNING"
std::string Age(const google::protobuf::Timestamp& t);  // "5m", "2h", "3d"
std::string Duration(double seconds);                   // "1:02:03" / "4:05"
std::string Progress(const lora::v1::Job& job);         // "52%" or "-"
std::string FormatLoss(double loss);                    // "1.5234" or "-"
std::string FormatBytes(int64_t bytes);                 // "312.4 MiB"
// One rank's health on a line: "local-2  running  step 57  seen 1s ago  rss 312.4 MiB ...".
std::string DescribeRank(const lora::v1::RankStatus& rank);
// "jobs/abc" from "abc" or "jobs/abc".
std::string JobName(const std::string& arg);

}  // namespace lora::loractl

#endif  // LORA_CLIENT_LORACTL_OUTPUT_H_
