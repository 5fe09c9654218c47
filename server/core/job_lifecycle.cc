#include "server/core/job_lifecycle.h"

#include "absl/strings/str_cat.h"
#include "server/store/job_store.h"

namespace lora::server {

using lora::v1::JobState;

bool TransitionAllowed(JobState from, JobState to) {
  using lora::v1::CANCELLED;
  using lora::v1::CANCELLING;
  using lora::v1::FAILED;
  using lora::v1::PAUSED;
  using lora::v1::PAUSING;
  using lora::v1::QUEUED;
  using lora::v1::RUNNING;
  using lora::v1::STARTING;
  using lora::v1::SUCCEEDED;
  switch (from) {
    case lora::v1::JOB_STATE_UNSPECIFIED:
      return to == QUEUED;
    case QUEUED:
      return to == STARTING || to == CANCELLED || to == FAILED || to == PAUSED;
    case STARTING:
      return to == RUNNING || to == QUEUED || to == CANCELLING || to == FAILED || to == SUCCEEDED ||
             to == PAUSING;
    case RUNNING:
      return to == SUCCEEDED || to == FAILED || to == CANCELLING || to == QUEUED || to == PAUSING;
    case CANCELLING:
      return to == CANCELLED || to == SUCCEEDED || to == FAILED;
    // A pause ends in PAUSED, or SUCCEEDED when the job finished first; a cancel overrides it.
    case PAUSING:
      return to == PAUSED || to == SUCCEEDED || to == FAILED || to == CANCELLING;
    case PAUSED:
      return to == QUEUED || to == CANCELLED;
    default:
      return false;
  }
}

JobUpdate PlanEvents(lora::v1::Job next, std::vector<lora::v1::JobEvent> events, int64_t now_us) {
  const auto now = FromMicros(now_us);
  for (lora::v1::JobEvent& e : events) {
    e.set_sequence(next.last_sequence() + 1);
    *e.mutable_time() = now;
    next.set_last_sequence(e.sequence());
  }
  return JobUpdate{std::move(next), std::move(events)};
}

absl::StatusOr<JobUpdate> PlanTransition(lora::v1::Job next, JobState to, const std::string& reason,
                                         std::vector<lora::v1::JobEvent> extra, int64_t now_us) {
  if (!TransitionAllowed(next.state(), to)) {
    return absl::FailedPreconditionError(absl::StrCat("jobs/", next.id(), " cannot go from ",
                                                      lora::v1::JobState_Name(next.state()), " to ",
                                                      lora::v1::JobState_Name(to)));
  }
  lora::v1::JobEvent change;
  change.mutable_state_change()->set_from(next.state());
  change.mutable_state_change()->set_to(to);
  change.mutable_state_change()->set_reason(reason);
  extra.insert(extra.begin(), std::move(change));
  next.set_state(to);
  if (to != lora::v1::QUEUED) next.clear_queue_reason();
  const auto now = FromMicros(now_us);
  if (to == lora::v1::STARTING && !next.has_start_time()) *next.mutable_start_time() = now;
  if (IsTerminal(to)) *next.mutable_end_time() = now;
  return PlanEvents(std::move(next), std::move(extra), now_us);
}

}  // namespace lora::server
