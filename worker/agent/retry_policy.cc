#include "worker/agent/retry_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace lora {

std::vector<grpc::StatusCode> RetryPolicy::DefaultTransientCodes() {
  return {grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::DEADLINE_EXCEEDED,
          grpc::StatusCode::CANCELLED,   grpc::StatusCode::ABORTED,
          grpc::StatusCode::INTERNAL,    grpc::StatusCode::RESOURCE_EXHAUSTED};
}

RetryPolicy RetryPolicy::Connect() {
  RetryPolicy p;
  p.initial_delay = std::chrono::milliseconds(250);
  p.multiplier = 2;
  p.max_delay = std::chrono::seconds(5);
  p.jitter = 0.2;
  p.deadline = kNoDeadline;
  return p;
}

RetryPolicy RetryPolicy::Upload() {
  RetryPolicy p;
  p.initial_delay = std::chrono::milliseconds(250);
  p.multiplier = 2;
  p.max_delay = std::chrono::seconds(2);
  p.jitter = 0.2;
  p.deadline = std::chrono::minutes(4);
  return p;
}

RetryPolicy RetryPolicy::Fetch() {
  RetryPolicy p;
  p.initial_delay = std::chrono::milliseconds(500);
  p.multiplier = 2;
  p.max_delay = std::chrono::seconds(2);
  p.jitter = 0.2;
  p.deadline = std::chrono::minutes(1);
  return p;
}

bool RetryPolicy::IsTransient(grpc::StatusCode code) const {
  return std::find(transient_codes.begin(), transient_codes.end(), code) != transient_codes.end();
}

absl::Status RetryPolicy::Validate() const {
  if (initial_delay.count() <= 0) return absl::InvalidArgumentError("initial_delay: must be > 0");
  if (max_delay < initial_delay)
    return absl::InvalidArgumentError("max_delay: must be >= initial_delay");
  if (!(multiplier >= 1)) return absl::InvalidArgumentError("multiplier: must be >= 1");
  if (!(jitter >= 0 && jitter < 1)) return absl::InvalidArgumentError("jitter: must be in [0, 1)");
  if (deadline.count() <= 0) return absl::InvalidArgumentError("deadline: must be > 0");
  return absl::OkStatus();
}

Backoff::Backoff(RetryPolicy policy, Clock::time_point start)
    : Backoff(std::move(policy), start, std::random_device{}()) {}

Backoff::Backoff(RetryPolicy policy, Clock::time_point start, uint64_t seed)
    : policy_(std::move(policy)), start_(start), random_(seed) {}

std::optional<Backoff::Clock::duration> Backoff::NextDelay(Clock::time_point now) {
  using Ms = std::chrono::duration<double, std::milli>;
  // Capped before it can overflow: multiplier^retries only matters until it passes max_delay.
  const double grown = Ms(policy_.initial_delay).count() *
                       std::pow(policy_.multiplier, static_cast<double>(std::min(retries_, 64)));
  const double base = std::min(grown, Ms(policy_.max_delay).count());
  std::uniform_real_distribution<double> factor(1 - policy_.jitter, 1 + policy_.jitter);
  const auto delay = std::chrono::duration_cast<Clock::duration>(Ms(base * factor(random_)));
  if (policy_.deadline != RetryPolicy::kNoDeadline && now + delay > start_ + policy_.deadline) {
    return std::nullopt;
  }
  ++retries_;
  return delay;
}

void Backoff::Reset(Clock::time_point now) {
  start_ = now;
  retries_ = 0;
}

}  // namespace lora
