#include "server/core/retry_policy.h"

#include "absl/strings/str_cat.h"
#include "common/exit_codes.h"

namespace lora::server {
namespace {

std::string Who(const AttemptView& v, size_t rank) {
  return v.ranks.size() > 1 ? absl::StrCat("rank ", rank) : "the engine";
}

Decision Requeue(const AttemptView& v, const std::string& why, bool counts) {
  Decision d;
  if (counts && AttemptsSpent(v.attempt, v.restarts) >= v.max_attempts) {
    d.outcome = Outcome::kFailed;
    d.code = absl::StatusCode::kUnavailable;
    d.reason =
        absl::StrCat(why, "; giving up after ", AttemptsSpent(v.attempt, v.restarts), " attempts");
    return d;
  }
  d.outcome = Outcome::kRequeue;
  d.counts_as_attempt = counts;
  const int spent = AttemptsSpent(v.attempt, v.restarts) + (counts ? 1 : 0);
  d.reason = absl::StrCat(
      counts ? "retrying" : "restarting", " (attempt ", spent, " of ", v.max_attempts, "): ", why,
      v.latest_checkpoint_step > 0 ? absl::StrCat("; resuming from step ", v.latest_checkpoint_step)
                                   : "");
  return d;
}

Decision Fail(absl::StatusCode code, std::string reason) {
  Decision d;
  d.outcome = Outcome::kFailed;
  d.code = code;
  d.reason = std::move(reason);
  return d;
}

}  // namespace

Decision DecideAttempt(const AttemptView& v) {
  bool all_gone = true;
  for (const RankView& r : v.ranks) all_gone = all_gone && (r.exited || r.lost);

  if (v.state == lora::v1::CANCELLING) {
    Decision d;
    if (all_gone) {
      const bool completed = v.rank0_finished && !v.ranks.empty() && v.ranks[0].exited &&
                             v.ranks[0].exit_code == kExitOk;
      d.outcome = completed ? Outcome::kSucceeded : Outcome::kCancelled;
      d.reason = completed ? "finished before the cancel took effect" : "cancelled";
    } else if (v.cancel_deadline_passed) {
      d.outcome = Outcome::kCancelled;
      d.reason = "ranks did not confirm the stop in time";
    }
    return d;
  }
  if (v.state == lora::v1::PAUSING) {
    Decision d;
    if (all_gone) {
      const bool completed = v.rank0_finished && !v.ranks.empty() && v.ranks[0].exited &&
                             v.ranks[0].exit_code == kExitOk;
      d.outcome = completed ? Outcome::kSucceeded : Outcome::kPaused;
      d.reason =
          completed
              ? "finished before the pause took effect"
              : (v.latest_checkpoint_step > 0
                     ? absl::StrCat("paused at the checkpoint of step ", v.latest_checkpoint_step)
                     : "paused (no checkpoint yet: it resumes from the start)");
    } else if (v.cancel_deadline_passed) {
      d.outcome = Outcome::kPaused;
      d.reason = "paused (ranks did not confirm the stop in time)";
    }
    return d;
  }
  if (v.state != lora::v1::STARTING && v.state != lora::v1::RUNNING) return {};

  // Infrastructure first: a lost worker explains whatever its peers reported after it.
  for (const RankView& r : v.ranks) {
    if (r.lost)
      return Requeue(v, v.lost_reason.empty() ? "a worker was lost" : v.lost_reason, true);
  }
  for (size_t i = 0; i < v.ranks.size(); ++i) {
    const RankView& r = v.ranks[i];
    if (r.exited && r.signal != 0)
      return Requeue(v, absl::StrCat(Who(v, i), " was killed by signal ", r.signal), true);
  }
  for (size_t i = 0; i < v.ranks.size(); ++i) {
    const RankView& r = v.ranks[i];
    if (r.exited && r.exit_code == kExitInterrupted) {
      return Requeue(v, absl::StrCat(Who(v, i), " stopped for a planned restart"), false);
    }
  }
  for (size_t i = 0; i < v.ranks.size(); ++i) {
    const RankView& r = v.ranks[i];
    if (!r.exited || r.exit_code == kExitOk) continue;
    if (v.failure_code == absl::StatusCode::kUnavailable) {
      // A peer died, hung or became unreachable: every rank restarts from the latest
      // checkpoint (the survivors may report before the lost rank's own exit arrives).
      return Requeue(v, v.failure_reason, true);
    }
    if (!v.failure_reason.empty()) {
      return Fail(
          v.failure_code == absl::StatusCode::kOk ? absl::StatusCode::kInternal : v.failure_code,
          v.failure_reason);
    }
    return Fail(absl::StatusCode::kInternal,
                absl::StrCat(Who(v, i), " exited with code ", r.exit_code,
                             r.reason.empty() ? "" : ": " + r.reason));
  }
  if (!all_gone) return {};
  if (v.rank0_finished) {
    Decision d;
    d.outcome = Outcome::kSucceeded;
    d.reason = "finished";
    return d;
  }
  // Finished, but its outputs were lost in transit: another attempt delivers them.
  if (v.failure_code == absl::StatusCode::kUnavailable) return Requeue(v, v.failure_reason, true);
  return Fail(
      v.failure_code == absl::StatusCode::kOk ? absl::StatusCode::kInternal : v.failure_code,
      v.failure_reason.empty() ? "ranks exited without reporting a result" : v.failure_reason);
}

absl::StatusCode StatusCodeFromName(const std::string& name) {
  for (int c = 0; c <= 16; ++c) {
    const auto code = static_cast<absl::StatusCode>(c);
    if (absl::StatusCodeToString(code) == name) return code;
  }
  return absl::StatusCode::kUnknown;
}

}  // namespace lora::server
