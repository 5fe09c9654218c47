// Machine-readable engine events, one per line, plus a readable log.
//
// Each line is a lora.engine.v1.EngineEvent (proto/lora/engine/v1/events.proto) in the proto3
// JSON mapping (common/engine_events.h); docs/ENGINE.md shows one of each kind. The lines go to
// a file descriptor (a pipe from lora-worker) and/or a file; the readable line goes to stderr.
//
//   EventSink events({.fd = 3, .path = "", .human_log = true, .rank = 0});
//   EngineEvent e;
//   e.mutable_step()->set_step(10);
//   e.mutable_step()->set_loss(2.31);
//   events.Emit(e, "step 10  loss 2.3100");
//
// Invariants: every line parses with ParseEngineEvent (the message is built typed, never from
// loose JSON); each event carries the sink's rank; lines from several threads never interleave.
#ifndef LORA_WORKER_ENGINE_TRAIN_EVENTS_H_
#define LORA_WORKER_ENGINE_TRAIN_EVENTS_H_

#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "lora/engine/v1/events.pb.h"

namespace lora {

struct EventSinkOptions {
  int fd = -1;            // event lines to this descriptor (not closed by the sink)
  std::string path;       // and/or appended to this file
  bool human_log = true;  // readable lines on stderr
  int rank = 0;           // set on every event
};

class EventSink {
 public:
  explicit EventSink(const EventSinkOptions& options);
  ~EventSink();
  EventSink(const EventSink&) = delete;
  EventSink& operator=(const EventSink&) = delete;

  // Writes the event (its rank set to the sink's) and, if given, the readable line.
  void Emit(lora::engine::v1::EngineEvent event, const std::string& readable = "");
  void Log(const std::string& level, const std::string& message);
  // The `failed` event: the status's message and code name.
  void Failed(const absl::Status& status, const std::string& readable = "");

 private:
  void WriteAll(int fd, const std::string& data);
  EventSinkOptions options_;
  int file_fd_ = -1;
  std::mutex mu_;
};

// <run_dir>/summary.json from `summary` (proto JSON, proto field names, indented), then the
// `finished` event carrying the same message: the summary's format is the proto's alone.
absl::Status ReportFinished(EventSink& events, const std::string& run_dir,
                            const lora::engine::v1::Summary& summary, const std::string& readable);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_EVENTS_H_
