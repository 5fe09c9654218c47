// The job state machine as pure functions: which transitions exist, and what a job looks like
// after one (on a copy: the caller writes the copy durably and only then publishes it, so
// memory never runs ahead of the store).
//
//   State machine (anything else is FAILED_PRECONDITION):
//     QUEUED -> STARTING -> RUNNING -> SUCCEEDED | FAILED
//     QUEUED -> CANCELLED | FAILED;  STARTING | RUNNING -> CANCELLING -> CANCELLED
//     STARTING | RUNNING -> QUEUED (a retry after a failure, or a restart after a planned stop)
//
//   LORA_ASSIGN_OR_RETURN(JobUpdate u, PlanTransition(job, RUNNING, "ranks started", {}, now));
//   LORA_RETURN_IF_ERROR(store->UpdateJob(u.job, u.events));   // then publish u
//
// Invariants of a JobUpdate: events carry consecutive sequences after the old job's
// last_sequence, and u.job.last_sequence() is the last of them; a state change is the first
// event; terminal states have an end_time, started jobs a start_time.
#ifndef LORA_SERVER_CORE_JOB_LIFECYCLE_H_
#define LORA_SERVER_CORE_JOB_LIFECYCLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lora/v1/job.pb.h"

namespace lora::server {

bool TransitionAllowed(lora::v1::JobState from, lora::v1::JobState to);

struct JobUpdate {
  lora::v1::Job job;
  std::vector<lora::v1::JobEvent> events;
};

// `next` (the job with whatever else changed) with `events` appended: sequences and times set.
JobUpdate PlanEvents(lora::v1::Job next, std::vector<lora::v1::JobEvent> events, int64_t now_us);

// `next` moved to state `to` (its current state must allow it), the state change first, then
// `extra`.
absl::StatusOr<JobUpdate> PlanTransition(lora::v1::Job next, lora::v1::JobState to,
                                         const std::string& reason,
                                         std::vector<lora::v1::JobEvent> extra, int64_t now_us);

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_JOB_LIFECYCLE_H_
