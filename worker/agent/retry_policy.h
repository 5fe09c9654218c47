// How lora-worker retries a call to lorad that failed: exponential backoff with jitter, an
// overall deadline, and the gRPC codes worth another try. One type for the three callers (the
// session's connect loop, artifact uploads, checkpoint fetches), each with its named defaults.
//
//   Backoff backoff(RetryPolicy::Upload(), Backoff::Clock::now());
//   while (true) {
//     grpc::Status s = TryOnce();
//     if (s.ok() || !backoff.policy().IsTransient(s.error_code())) return s;
//     std::optional<Backoff::Clock::duration> wait = backoff.NextDelay(Backoff::Clock::now());
//     if (!wait) return s;  // the next try would start past the deadline
//     SleepUnlessStopping(*wait);
//   }
//
// Invariants: the n-th delay (from 0) lies in base_n * [1 - jitter, 1 + jitter] with
// base_n = min(max_delay, initial_delay * multiplier^n); NextDelay never returns a delay that
// ends past start + deadline. Jitter keeps the workers of a cluster from retrying in lockstep
// after lorad comes back.
#ifndef LORA_WORKER_AGENT_RETRY_POLICY_H_
#define LORA_WORKER_AGENT_RETRY_POLICY_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/support/status_code_enum.h>

#include "absl/status/status.h"

namespace lora {

struct RetryPolicy {
  std::chrono::milliseconds initial_delay{250};
  double multiplier = 2.0;
  std::chrono::milliseconds max_delay{5000};
  double jitter = 0.2;  // each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter]
  // From the first try; past it there is no next try. kNoDeadline: retry for ever.
  std::chrono::milliseconds deadline = kNoDeadline;
  std::vector<grpc::StatusCode> transient_codes = DefaultTransientCodes();

  static constexpr std::chrono::milliseconds kNoDeadline = std::chrono::milliseconds::max();

  // What a restarting lorad, a dropped connection or an overloaded server answer: worth
  // another try. Everything else (UNAUTHENTICATED, INVALID_ARGUMENT, DATA_LOSS, ...) would fail
  // the same way again.
  static std::vector<grpc::StatusCode> DefaultTransientCodes();

  // The controller session: retried for as long as the worker runs (the caller retries any
  // code outside a drain: a worker outlives a controller's misconfiguration), quickly at first,
  // then every few seconds.
  static RetryPolicy Connect();
  // One artifact upload: rides out a lorad restart of a few minutes; a checkpoint that still
  // cannot be uploaded after that is reported without it.
  static RetryPolicy Upload();
  // One file of the checkpoint a rank resumes from: a minute, then the rank fails (the
  // controller retries the attempt elsewhere).
  static RetryPolicy Fetch();

  bool IsTransient(grpc::StatusCode code) const;
  // INVALID_ARGUMENT naming the field for a delay <= 0, a multiplier < 1, a jitter outside
  // [0, 1) or a deadline <= 0.
  absl::Status Validate() const;
};

class Backoff {
 public:
  using Clock = std::chrono::steady_clock;

  Backoff(RetryPolicy policy, Clock::time_point start);
  // A fixed seed makes the jitter reproducible (tests).
  Backoff(RetryPolicy policy, Clock::time_point start, uint64_t seed);

  // How long to wait before the next try, or nullopt when it would start past the deadline.
  std::optional<Clock::duration> NextDelay(Clock::time_point now);
  // After a success (a session that stayed up): the next delay is the initial one again and
  // the deadline counts from `now`.
  void Reset(Clock::time_point now);

  const RetryPolicy& policy() const { return policy_; }
  int retries() const { return retries_; }  // delays handed out since the last reset

 private:
  RetryPolicy policy_;
  Clock::time_point start_;
  int retries_ = 0;
  std::mt19937_64 random_;
};

}  // namespace lora

#endif  // LORA_WORKER_AGENT_RETRY_POLICY_H_
