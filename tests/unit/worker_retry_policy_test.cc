// lora-worker's retry policy: how delays grow, jitter, the overall deadline, which codes retry.
#include "worker/agent/retry_policy.h"

#include <chrono>
#include <set>

#include "gtest/gtest.h"

namespace lora {
namespace {

using std::chrono::milliseconds;
using Clock = Backoff::Clock;

RetryPolicy NoJitter(milliseconds initial, double multiplier, milliseconds max,
                     milliseconds deadline = RetryPolicy::kNoDeadline) {
  RetryPolicy p;
  p.initial_delay = initial;
  p.multiplier = multiplier;
  p.max_delay = max;
  p.jitter = 0;
  p.deadline = deadline;
  return p;
}

milliseconds Ms(Clock::duration d) { return std::chrono::duration_cast<milliseconds>(d); }

TEST(RetryPolicyTest, DelaysGrowByTheMultiplierUpToTheMaximum) {
  const Clock::time_point t0 = Clock::now();
  Backoff b(NoJitter(milliseconds(100), 2, milliseconds(700)), t0, 1);
  std::vector<milliseconds> got;
  for (int i = 0; i < 6; ++i) got.push_back(Ms(*b.NextDelay(t0)));
  EXPECT_EQ(got,
            (std::vector<milliseconds>{milliseconds(100), milliseconds(200), milliseconds(400),
                                       milliseconds(700), milliseconds(700), milliseconds(700)}));
  EXPECT_EQ(b.retries(), 6);
}

TEST(RetryPolicyTest, JitterStaysWithinItsBandAndVaries) {
  RetryPolicy p = NoJitter(milliseconds(1000), 1, milliseconds(1000));
  p.jitter = 0.25;
  const Clock::time_point t0 = Clock::now();
  Backoff b(p, t0, 42);
  std::set<int64_t> distinct;
  for (int i = 0; i < 200; ++i) {
    const milliseconds d = Ms(*b.NextDelay(t0));
    EXPECT_GE(d.count(), 750);
    EXPECT_LE(d.count(), 1250);
    distinct.insert(d.count());
  }
  EXPECT_GT(distinct.size(), 50u) << "jitter should spread workers' retries apart";
}

TEST(RetryPolicyTest, TheSameSeedGivesTheSameDelays) {
  RetryPolicy p = RetryPolicy::Upload();
  const Clock::time_point t0 = Clock::now();
  Backoff a(p, t0, 7), b(p, t0, 7);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.NextDelay(t0), b.NextDelay(t0));
}

TEST(RetryPolicyTest, NoTryStartsPastTheDeadline) {
  const Clock::time_point t0 = Clock::now();
  Backoff b(NoJitter(milliseconds(100), 2, milliseconds(1000), milliseconds(1000)), t0, 1);
  Clock::time_point now = t0;
  int tries = 1;
  while (auto d = b.NextDelay(now)) {
    now += *d;
    EXPECT_LE(now, t0 + milliseconds(1000));
    ++tries;
  }
  // 100 + 200 + 400 = 700 ms; the next 800 would end at 1500 ms.
  EXPECT_EQ(tries, 4);
  EXPECT_EQ(Ms(now - t0), milliseconds(700));
}

TEST(RetryPolicyTest, ResetStartsOverFromTheInitialDelayAndANewDeadline) {
  const Clock::time_point t0 = Clock::now();
  Backoff b(NoJitter(milliseconds(100), 2, milliseconds(1000), milliseconds(500)), t0, 1);
  EXPECT_TRUE(b.NextDelay(t0));
  EXPECT_TRUE(b.NextDelay(t0));
  EXPECT_FALSE(b.NextDelay(t0 + milliseconds(400)));
  b.Reset(t0 + milliseconds(10000));
  EXPECT_EQ(b.retries(), 0);
  EXPECT_EQ(Ms(*b.NextDelay(t0 + milliseconds(10000))), milliseconds(100));
}

TEST(RetryPolicyTest, WithoutADeadlineItRetriesForEverAtTheMaximum) {
  const Clock::time_point t0 = Clock::now();
  Backoff b(RetryPolicy::Connect(), t0, 3);
  Clock::time_point now = t0;
  for (int i = 0; i < 10000; ++i) {
    auto d = b.NextDelay(now);
    ASSERT_TRUE(d);
    now += *d;
  }
  EXPECT_LE(Ms(*b.NextDelay(now)), milliseconds(6000));  // max 5 s, +20% jitter
}

TEST(RetryPolicyTest, OnlyNetworkAndOverloadCodesAreTransient) {
  const RetryPolicy p = RetryPolicy::Fetch();
  for (auto code : {grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::DEADLINE_EXCEEDED,
                    grpc::StatusCode::ABORTED, grpc::StatusCode::RESOURCE_EXHAUSTED}) {
    EXPECT_TRUE(p.IsTransient(code)) << code;
  }
  for (auto code : {grpc::StatusCode::OK, grpc::StatusCode::UNAUTHENTICATED,
                    grpc::StatusCode::PERMISSION_DENIED, grpc::StatusCode::INVALID_ARGUMENT,
                    grpc::StatusCode::NOT_FOUND, grpc::StatusCode::DATA_LOSS}) {
    EXPECT_FALSE(p.IsTransient(code)) << code;
  }
  RetryPolicy only_unavailable = p;
  only_unavailable.transient_codes = {grpc::StatusCode::UNAVAILABLE};
  EXPECT_FALSE(only_unavailable.IsTransient(grpc::StatusCode::ABORTED));
}

TEST(RetryPolicyTest, NamedDefaultsAreValidAndBounded) {
  for (const RetryPolicy& p : {RetryPolicy::Connect(), RetryPolicy::Upload(), RetryPolicy::Fetch()})
    EXPECT_TRUE(p.Validate().ok()) << p.Validate();
  EXPECT_EQ(RetryPolicy::Connect().deadline, RetryPolicy::kNoDeadline);
  EXPECT_NE(RetryPolicy::Upload().deadline, RetryPolicy::kNoDeadline);
  EXPECT_NE(RetryPolicy::Fetch().deadline, RetryPolicy::kNoDeadline);
}

TEST(RetryPolicyTest, ValidateNamesTheBadField) {
  RetryPolicy p;
  p.jitter = 1.5;
  EXPECT_NE(p.Validate().message().find("jitter"), std::string::npos);
  p = RetryPolicy();
  p.multiplier = 0.5;
  EXPECT_NE(p.Validate().message().find("multiplier"), std::string::npos);
  p = RetryPolicy();
  p.initial_delay = milliseconds(0);
  EXPECT_NE(p.Validate().message().find("initial_delay"), std::string::npos);
}

}  // namespace
}  // namespace lora
