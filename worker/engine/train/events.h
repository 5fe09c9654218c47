// Machine-readable training events, one JSON object per line, plus a readable log.
//
// Every event has "event" (started | step | eval | checkpoint | log | finished | failed),
// "time" (unix seconds) and its own fields; docs/ENGINE.md lists them. The JSON goes to a file
// descriptor (a pipe from lora-worker) and/or a file; the readable line goes to stderr.
//
//   EventSink events({.fd = 3, .path = "", .rank = 0});
//   events.Emit("step", {{"step", 10}, {"loss", 2.31}}, "step 10  loss 2.3100");
#ifndef LORA_WORKER_ENGINE_TRAIN_EVENTS_H_
#define LORA_WORKER_ENGINE_TRAIN_EVENTS_H_

#include <cstdio>
#include <mutex>
#include <string>

#include "nlohmann/json.hpp"

namespace lora {

struct EventSinkOptions {
  int fd = -1;            // JSON lines to this descriptor (not closed by the sink)
  std::string path;       // and/or appended to this file
  bool human_log = true;  // readable lines on stderr
};

class EventSink {
 public:
  explicit EventSink(const EventSinkOptions& options);
  ~EventSink();
  EventSink(const EventSink&) = delete;
  EventSink& operator=(const EventSink&) = delete;

  // Writes {"event": type, "time": now, ...fields} and, if given, the readable line.
  void Emit(const std::string& type, nlohmann::json fields, const std::string& readable = "");
  void Log(const std::string& level, const std::string& message);

 private:
  void WriteAll(int fd, const std::string& data);
  EventSinkOptions options_;
  int file_fd_ = -1;
  std::mutex mu_;
};

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_EVENTS_H_
