// lora-train's events on the wire: lora.engine.v1.EngineEvent as one JSON line (proto3 JSON
// mapping, proto field names). The engine formats, lora-worker parses each line once and
// forwards the message, lorad translates it. Strict: an unknown field or a wrong type is an
// error naming it, never a silent 0.
//
//   EngineEvent e;  e.mutable_step()->set_step(10);
//   write(fd, FormatEngineEvent(e));                       // {"time":...,"step":{"step":"10"}}\n
//   LORA_ASSIGN_OR_RETURN(EngineEvent back, ParseEngineEvent(line));
//
// Invariants: a line is at most kMaxEngineEventBytes and nests at most 64 deep (checked before
// the JSON parser runs); Parse(Format(e)) == e.
#ifndef LORA_COMMON_ENGINE_EVENTS_H_
#define LORA_COMMON_ENGINE_EVENTS_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lora/engine/v1/events.pb.h"

namespace lora {

inline constexpr size_t kMaxEngineEventBytes = size_t{1} << 20;

// One line, '\n'-terminated. Sets `time` to now when it is 0.
std::string FormatEngineEvent(lora::engine::v1::EngineEvent event);

// Parses one line (a trailing newline is allowed).
absl::StatusOr<lora::engine::v1::EngineEvent> ParseEngineEvent(absl::string_view line);

// The event's kind as it is named in the oneof ("step", "checkpoint", ...), "" when unset.
std::string EngineEventKind(const lora::engine::v1::EngineEvent& event);

}  // namespace lora

#endif  // LORA_COMMON_ENGINE_EVENTS_H_
