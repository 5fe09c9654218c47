// The retry policy as a pure decision over an attempt's ranks.
#include "server/core/retry_policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/exit_codes.h"

namespace lora::server {
namespace {

using ::testing::HasSubstr;

RankView Running() { return RankView{}; }
RankView Exited(int code, int signal = 0) {
  RankView r;
  r.exited = true;
  r.exit_code = code;
  r.signal = signal;
  return r;
}
RankView Lost() {
  RankView r;
  r.lost = true;
  return r;
}

AttemptView View(std::vector<RankView> ranks, lora::v1::JobState state = lora::v1::RUNNING) {
  AttemptView v;
  v.state = state;
  v.ranks = std::move(ranks);
  return v;
}

TEST(JobRetryPolicyTest, APauseEndsInPausedOnceEveryRankIsGoneWhateverTheirExits) {
  AttemptView v = View({Exited(kExitInterrupted), Running()}, lora::v1::PAUSING);
  EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kWait);
  v.ranks[1] = Exited(128 + 15, 15);  // a rank that did not drain in time
  v.latest_checkpoint_step = 30;
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kPaused);
  EXPECT_THAT(d.reason, HasSubstr("step 30"));
  AttemptView late = View({Running()}, lora::v1::PAUSING);
  late.cancel_deadline_passed = true;
  EXPECT_EQ(DecideAttempt(late).outcome, Outcome::kPaused);
}

TEST(JobRetryPolicyTest, AJobThatFinishedBeforeThePauseTookEffectSucceeds) {
  AttemptView v = View({Exited(kExitOk)}, lora::v1::PAUSING);
  v.rank0_finished = true;
  EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kSucceeded);
}

TEST(JobRetryPolicyTest, ARankKilledBySignalRetriesFromTheLatestCheckpoint) {
  // What the OOM killer does: exit status 137, signal 9.
  AttemptView v = View({Exited(128 + 9, 9)});
  v.latest_checkpoint_step = 4;
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kRequeue);
  EXPECT_TRUE(d.counts_as_attempt);
  EXPECT_THAT(d.reason, HasSubstr("killed by signal 9"));
  EXPECT_THAT(d.reason, HasSubstr("resuming from step 4"));
}

TEST(JobRetryPolicyTest, ASignalIsCheckedBeforeTheExitCode) {
  // A signal with exit code 0 (what the worker used to report) is still a kill, not a success.
  Decision d = DecideAttempt(View({Exited(0, 9)}));
  EXPECT_EQ(d.outcome, Outcome::kRequeue);
}

TEST(JobRetryPolicyTest, APlannedStopRequeuesWithoutSpendingAnAttempt) {
  AttemptView v = View({Exited(kExitInterrupted), Running()});
  v.attempt = 3;
  v.max_attempts = 3;
  v.restarts = 2;  // two planned restarts before: one attempt spent
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kRequeue);
  EXPECT_FALSE(d.counts_as_attempt);
  EXPECT_THAT(d.reason, HasSubstr("planned restart"));
}

TEST(JobRetryPolicyTest, ManyPlannedRestartsNeverFailAHealthyJob) {
  AttemptView v = View({Exited(kExitInterrupted)});
  for (int restart = 0; restart < 10; ++restart) {
    v.attempt = 1 + restart;
    v.restarts = restart;
    EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kRequeue);
  }
}

TEST(JobRetryPolicyTest, ALostWorkerRetriesAndCounts) {
  AttemptView v = View({Lost(), Running()});
  v.lost_reason = "worker w2 lost (missed heartbeats)";
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kRequeue);
  EXPECT_TRUE(d.counts_as_attempt);
  EXPECT_THAT(d.reason, HasSubstr("worker w2 lost"));
}

TEST(JobRetryPolicyTest, FailuresStopAfterMaxAttempts) {
  AttemptView v = View({Exited(137, 9)});
  v.attempt = 3;
  v.max_attempts = 3;
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kFailed);
  EXPECT_EQ(d.code, absl::StatusCode::kUnavailable);
  EXPECT_THAT(d.reason, HasSubstr("giving up after 3 attempts"));
}

TEST(JobRetryPolicyTest, PlannedRestartsDoNotCountTowardsMaxAttempts) {
  AttemptView v = View({Exited(137, 9)});
  v.attempt = 3;
  v.restarts = 2;  // only one attempt spent so far
  v.max_attempts = 3;
  EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kRequeue);
}

TEST(JobRetryPolicyTest, ALostPeerInAMultiRankJobRetries) {
  AttemptView v = View({Exited(1), Running()});
  v.failure_code = absl::StatusCode::kUnavailable;
  v.failure_reason = "rank 1: peer closed the connection";
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kRequeue);
  EXPECT_THAT(d.reason, HasSubstr("peer closed"));
}

// Found by the chaos test: lorad restarted while rank 0 uploaded its outputs; the job was
// reported SUCCEEDED without its adapter.
TEST(JobRetryPolicyTest, OutputsLostInTransitRetryInsteadOfSucceedingWithoutThem) {
  AttemptView v = View({Exited(0)});
  v.failure_code = absl::StatusCode::kUnavailable;
  v.failure_reason = "outputs incomplete: final/adapter/adapter_model.safetensors was not uploaded";
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kRequeue);
  EXPECT_TRUE(d.counts_as_attempt);
  EXPECT_THAT(d.reason, HasSubstr("outputs incomplete"));
}

TEST(JobRetryPolicyTest, AnEngineErrorFailsWithItsReasonAndCode) {
  AttemptView v = View({Exited(1)});
  v.failure_code = absl::StatusCode::kInvalidArgument;
  v.failure_reason = "dataset.path: no such file";
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kFailed);
  EXPECT_EQ(d.code, absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d.reason, "dataset.path: no such file");
}

TEST(JobRetryPolicyTest, ANonZeroExitWithoutAReasonNamesTheRankAndCode) {
  RankView r = Exited(3);
  r.reason = "segfault in a kernel";
  Decision d = DecideAttempt(View({Running(), r}));
  EXPECT_EQ(d.outcome, Outcome::kFailed);
  EXPECT_EQ(d.reason, "rank 1 exited with code 3: segfault in a kernel");
}

TEST(JobRetryPolicyTest, SucceedsOnlyWhenAllRanksExitedAndRankZeroReported) {
  AttemptView v = View({Exited(0), Running()});
  v.rank0_finished = true;
  EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kWait);
  v.ranks[1] = Exited(0);
  EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kSucceeded);
  v.rank0_finished = false;
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kFailed);
  EXPECT_THAT(d.reason, HasSubstr("without reporting a result"));
}

TEST(JobRetryPolicyTest, CancellingEndsWhenEveryRankIsGoneOrAtTheDeadline) {
  AttemptView v = View({Exited(kExitInterrupted), Running()}, lora::v1::CANCELLING);
  EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kWait);
  v.ranks[1] = Lost();
  EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kCancelled);
  v.ranks[1] = Running();
  v.cancel_deadline_passed = true;
  Decision d = DecideAttempt(v);
  EXPECT_EQ(d.outcome, Outcome::kCancelled);
  EXPECT_THAT(d.reason, HasSubstr("did not confirm"));
}

TEST(JobRetryPolicyTest, AJobThatFinishedBeforeTheCancelTookEffectSucceeds) {
  AttemptView v = View({Exited(0)}, lora::v1::CANCELLING);
  v.rank0_finished = true;
  EXPECT_EQ(DecideAttempt(v).outcome, Outcome::kSucceeded);
}

TEST(JobRetryPolicyTest, QueuedAndTerminalJobsHaveNothingToDecide) {
  EXPECT_EQ(DecideAttempt(View({}, lora::v1::QUEUED)).outcome, Outcome::kWait);
  EXPECT_EQ(DecideAttempt(View({Exited(137, 9)}, lora::v1::FAILED)).outcome, Outcome::kWait);
}

TEST(JobRetryPolicyTest, StatusCodeNamesCoverAllSeventeenCodes) {
  for (int c = 0; c <= 16; ++c) {
    const auto code = static_cast<absl::StatusCode>(c);
    EXPECT_EQ(StatusCodeFromName(absl::StatusCodeToString(code)), code) << c;
  }
  EXPECT_EQ(StatusCodeFromName("NOT_A_CODE"), absl::StatusCode::kUnknown);
}

}  // namespace
}  // namespace lora::server
