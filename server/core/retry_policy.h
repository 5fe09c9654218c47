// What becomes of a job's current attempt, as a pure decision: a snapshot of its ranks
// (running, exited with a code or a signal, lost with their worker) in, an outcome out. The
// JobManager records what it learns (an exit, a lost worker, a failure event) in the snapshot's
// source and asks again after every change, and again on every tick when committing the last
// decision failed: the decision is level-triggered, so asking twice is harmless.
//
//   AttemptView v;  v.state = RUNNING;  v.ranks = {{.exited = true, .exit_code = 137,
//                                                   .signal = 9}};
//   Decision d = DecideAttempt(v);   // kRequeue, counts_as_attempt, "the engine was killed ..."
//
// Policy (each rule has a test in tests/unit/retry_policy_test.cc):
// - Failures of the infrastructure retry from the latest checkpoint and count against
//   max_attempts: a lost worker, a rank killed by a signal (the OOM killer, kill -9), a
//   failure reported as UNAVAILABLE (a peer lost mid-collective, outputs lost in transit).
// - A planned stop (a rank exits kExitInterrupted after a drain checkpoint because its worker
//   or lorad is shutting down) requeues without spending an attempt.
// - Any other non-zero exit fails the job with the engine's reason: retrying a bad spec or a
//   bug would fail the same way.
// - All ranks exited 0 and rank 0 reported its result: SUCCEEDED; without a result: FAILED.
// - CANCELLING ends when every rank is gone (SUCCEEDED if rank 0 finished first) or at the
//   cancel deadline; PAUSING likewise, in PAUSED (its ranks' exits, whatever they are, are the
//   stop it asked for: a real failure shows again when it resumes).
#ifndef LORA_SERVER_CORE_RETRY_POLICY_H_
#define LORA_SERVER_CORE_RETRY_POLICY_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "lora/v1/job.pb.h"

namespace lora::server {

struct RankView {
  bool exited = false;
  int exit_code = 0;
  int signal = 0;
  std::string reason;  // the worker's last error line for the exit
  bool lost = false;   // its worker is gone (or came back without it)
};

struct AttemptView {
  lora::v1::JobState state = lora::v1::RUNNING;
  std::vector<RankView> ranks;
  bool rank0_finished = false;  // rank 0 reported its result and outputs were verified
  std::string failure_reason;   // from a rank's failure event
  absl::StatusCode failure_code = absl::StatusCode::kOk;
  std::string lost_reason;  // why ranks were lost ("worker w1 lost (missed heartbeats)")
  bool cancel_deadline_passed = false;
  int attempt = 1;
  int max_attempts = 3;
  int restarts = 0;  // planned restarts so far (not counted as attempts)
  int64_t latest_checkpoint_step = 0;
};

enum class Outcome { kWait, kSucceeded, kCancelled, kRequeue, kFailed, kPaused };

struct Decision {
  Outcome outcome = Outcome::kWait;
  // kRequeue: the state change's reason; kFailed: the job's error message; else the reason.
  std::string reason;
  absl::StatusCode code = absl::StatusCode::kOk;  // kFailed: the job's error code
  bool counts_as_attempt = true;                  // kRequeue
};

Decision DecideAttempt(const AttemptView& view);

// Attempts spent so far: every attempt that did not end in a planned stop.
inline int AttemptsSpent(int attempt, int restarts) { return attempt - restarts; }

// google.rpc.Code from its name (absl::StatusCodeToString spelling); kUnknown for an unknown
// name.
absl::StatusCode StatusCodeFromName(const std::string& name);

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_RETRY_POLICY_H_
