#include "common/engine_events.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/nesting.h"
#include "google/protobuf/util/json_util.h"

namespace lora {

using lora::engine::v1::EngineEvent;

std::string FormatEngineEvent(EngineEvent event) {
  if (event.time() == 0) {
    event.set_time(
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  }
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string line;
  // Only fails for messages that cannot be printed (none here: no Any, no invalid UTF-8 in
  // well-formed strings); an empty object keeps the stream line-aligned even then.
  if (!google::protobuf::util::MessageToJsonString(event, &line, options).ok()) line = "{}";
  line += '\n';
  return line;
}

absl::StatusOr<EngineEvent> ParseEngineEvent(absl::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (line.size() > kMaxEngineEventBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine event: ", line.size(), " bytes, more than the limit of ", kMaxEngineEventBytes));
  }
  if (absl::Status s = CheckJsonNesting(line, "engine event"); !s.ok()) return s;
  EngineEvent event;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto s = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(line.data(), line.size()), &event, options);
  if (!s.ok()) {
    // protobuf names the field and the problem, never the value's bytes beyond a short token.
    return absl::InvalidArgumentError(
        absl::StrCat("engine event: ", std::string(s.message().data(), s.message().size())));
  }
  if (event.kind_case() == EngineEvent::KIND_NOT_SET)
    return absl::InvalidArgumentError("engine event: names no kind (started, step, ...)");
  return event;
}

std::string EngineEventKind(const EngineEvent& event) {
  if (event.kind_case() == EngineEvent::KIND_NOT_SET) return "";
  return std::string(EngineEvent::descriptor()->FindFieldByNumber(event.kind_case())->name());
}

}  // namespace lora
