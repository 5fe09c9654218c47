#include "worker/engine/train/events.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/engine_events.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace lora {

EventSink::EventSink(const EventSinkOptions& options) : options_(options) {
  if (!options_.path.empty()) {
    file_fd_ = ::open(options_.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  }
  // A reader that goes away must not kill the trainer: writes then fail with EPIPE instead.
  ::signal(SIGPIPE, SIG_IGN);
}

EventSink::~EventSink() {
  if (file_fd_ >= 0) ::close(file_fd_);
}

void EventSink::WriteAll(int fd, const std::string& data) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the reader is gone; training goes on
    p += n;
    left -= static_cast<size_t>(n);
  }
}

void EventSink::Emit(lora::engine::v1::EngineEvent event, const std::string& readable) {
  event.set_rank(options_.rank);
  const std::string line = FormatEngineEvent(std::move(event));
  std::lock_guard<std::mutex> lock(mu_);
  if (options_.fd >= 0) WriteAll(options_.fd, line);
  if (file_fd_ >= 0) WriteAll(file_fd_, line);
  if (options_.human_log && !readable.empty()) std::cerr << readable << std::endl;
}

void EventSink::Log(const std::string& level, const std::string& message) {
  lora::engine::v1::EngineEvent event;
  event.mutable_log()->set_level(level);
  event.mutable_log()->set_message(message);
  Emit(std::move(event), message);
}

void EventSink::Failed(const absl::Status& status, const std::string& readable) {
  lora::engine::v1::EngineEvent event;
  event.mutable_failed()->set_reason(std::string(status.message()));
  event.mutable_failed()->set_code(absl::StatusCodeToString(status.code()));
  Emit(std::move(event), readable);
}

absl::Status ReportFinished(EventSink& events, const std::string& run_dir,
                            const lora::engine::v1::Summary& summary, const std::string& readable) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.add_whitespace = true;
  std::string json;
  if (auto s = google::protobuf::util::MessageToJsonString(summary, &json, options); !s.ok()) {
    return absl::InternalError(absl::StrCat("summary.json: ", s.ToString()));
  }
  LORA_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(run_dir, "summary.json"), json + "\n"));
  lora::engine::v1::EngineEvent event;
  *event.mutable_finished()->mutable_summary() = summary;
  events.Emit(std::move(event), readable);
  return absl::OkStatus();
}

}  // namespace lora
