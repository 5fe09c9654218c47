#include "worker/engine/train/events.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <iostream>

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

void EventSink::Emit(const std::string& type, nlohmann::json fields, const std::string& readable) {
  if (!fields.is_object()) fields = nlohmann::json::object();
  fields["event"] = type;
  fields["time"] =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string line =
      fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  if (options_.fd >= 0) WriteAll(options_.fd, line);
  if (file_fd_ >= 0) WriteAll(file_fd_, line);
  if (options_.human_log && !readable.empty()) std::cerr << readable << std::endl;
}

void EventSink::Log(const std::string& level, const std::string& message) {
  Emit("log", {{"level", level}, {"message", message}}, message);
}

}  // namespace lora
