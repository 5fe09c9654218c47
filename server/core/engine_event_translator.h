// From one rank's engine event (lora.engine.v1.EngineEvent) to what the job's watchers see
// (lora.v1.JobEvents) and what the job records (progress, rank health, outputs, error).
// Pure apart from `lookup`, which reads the controller's own record of an uploaded file: a
// checkpoint or an output counts only when every file the worker announced was stored intact.
//
//   Job next = current;
//   TranslatedEvent t = TranslateEngineEvent(event, rank, world, lookup, NowMicros(), &next);
//   // record t.checkpoint, commit `next` with t.events, then apply t.rank0_finished / failure
//
// Invariants: only rank 0 reports job metrics, evals, checkpoints and results; every rank
// reports its own health, logs and failures.
#ifndef LORA_SERVER_CORE_ENGINE_EVENT_TRANSLATOR_H_
#define LORA_SERVER_CORE_ENGINE_EVENT_TRANSLATOR_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lora/engine/v1/events.pb.h"
#include "lora/v1/job.pb.h"

namespace lora::server {

// The stored artifact of the job at `path` (NOT_FOUND if none).
using ArtifactLookup = std::function<absl::StatusOr<lora::v1::ArtifactFile>(const std::string&)>;

struct TranslatedEvent {
  std::vector<lora::v1::JobEvent> events;
  // A verified checkpoint to record before the job update is committed.
  std::optional<lora::v1::Checkpoint> checkpoint;
  bool rank0_finished = false;  // rank 0 reported its result, its outputs verified
  // A failure the rank reported (or the outputs it could not deliver).
  std::optional<std::string> failure_reason;
  absl::StatusCode failure_code = absl::StatusCode::kOk;
};

TranslatedEvent TranslateEngineEvent(const lora::engine::v1::EngineEvent& event, int rank,
                                     int world_size, const ArtifactLookup& lookup, int64_t now_us,
                                     lora::v1::Job* job);

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_ENGINE_EVENT_TRANSLATOR_H_
