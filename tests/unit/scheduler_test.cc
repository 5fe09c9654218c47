// The scheduler as a pure function: snapshots in, placements and queue reasons out.
#include "server/core/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace lora::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

QueuedJob Job(const std::string& id, int ranks, int priority = 0, int64_t created = 0,
              const std::string& device = "cpu", const std::string& tenant = "") {
  return QueuedJob{id, tenant, device, priority, created, ranks};
}

WorkerSlots Worker(const std::string& id, int slots, int used = 0,
                   const std::string& device = "cpu") {
  return WorkerSlots{id, device, slots, used};
}

// Ids of the placed jobs, in placement order.
std::vector<std::string> Placed(const SchedulerInput& in, const SchedulerOutput& out) {
  std::vector<std::string> ids;
  for (const Placement& p : out.placements) ids.push_back(in.queued[p.job].id);
  return ids;
}

// Why the job `id` waits.
std::string Reason(const SchedulerInput& in, const SchedulerOutput& out, const std::string& id) {
  for (size_t i = 0; i < in.queued.size(); ++i) {
    if (in.queued[i].id == id) return out.queue_reasons[i];
  }
  return "(no such job)";
}

TEST(SchedulerTest, HigherPriorityStartsFirstThenOlderJobs) {
  SchedulerInput in;
  in.queued = {Job("old", 1, 0, 1), Job("urgent", 1, 5, 3), Job("new", 1, 0, 2)};
  in.workers = {Worker("w1", 2)};
  SchedulerOutput out = ScheduleJobs(in);
  EXPECT_THAT(Placed(in, out), ElementsAre("urgent", "old"));
  EXPECT_THAT(Reason(in, out, "new"), HasSubstr("waiting for 1 cpu slot (0 free)"));
}

TEST(SchedulerTest, GangJobStartsWithAllRanksOrNotAtAll) {
  SchedulerInput in;
  in.queued = {Job("big", 3)};
  in.workers = {Worker("w1", 1), Worker("w2", 1)};
  SchedulerOutput out = ScheduleJobs(in);
  EXPECT_THAT(out.placements, IsEmpty());
  EXPECT_THAT(Reason(in, out, "big"), HasSubstr("needs 3 cpu slots at once"));
  in.workers.push_back(Worker("w3", 1));
  out = ScheduleJobs(in);
  ASSERT_EQ(out.placements.size(), 1u);
  EXPECT_THAT(out.placements[0].workers, ElementsAre("w1", "w2", "w3"));
}

TEST(SchedulerTest, RanksFillWorkersInIdOrderAndRespectUsedSlots) {
  SchedulerInput in;
  in.queued = {Job("a", 3)};
  in.workers = {Worker("w2", 2), Worker("w1", 2, 1)};
  SchedulerOutput out = ScheduleJobs(in);
  ASSERT_EQ(out.placements.size(), 1u);
  EXPECT_THAT(out.placements[0].workers, ElementsAre("w1", "w2", "w2"));
}

TEST(SchedulerTest, ABlockedLargeJobHoldsTheLineForSmallerOnesBehindIt) {
  SchedulerInput in;
  in.queued = {Job("large", 2, 0, 1), Job("small", 1, 0, 2)};
  in.workers = {Worker("w1", 2, 1)};
  SchedulerOutput out = ScheduleJobs(in);
  EXPECT_THAT(out.placements, IsEmpty());
  EXPECT_THAT(Reason(in, out, "small"), HasSubstr("behind jobs/large in the cpu queue"));
}

TEST(SchedulerTest, AJobWaitingForGpusNeverHoldsUpCpuJobs) {
  SchedulerInput in;
  in.queued = {Job("gpu", 1, 0, 1, "cuda"), Job("cpu", 1, 0, 2, "cpu")};
  in.workers = {Worker("w1", 1)};
  SchedulerOutput out = ScheduleJobs(in);
  EXPECT_THAT(Placed(in, out), ElementsAre("cpu"));
  EXPECT_THAT(Reason(in, out, "gpu"), HasSubstr("no connected worker has device cuda"));
}

TEST(SchedulerTest, SlotsTakenByOnePlacementAreNotGivenTwice) {
  SchedulerInput in;
  in.queued = {Job("a", 1, 0, 1), Job("b", 1, 0, 2), Job("c", 1, 0, 3)};
  in.workers = {Worker("w1", 2)};
  SchedulerOutput out = ScheduleJobs(in);
  EXPECT_THAT(Placed(in, out), ElementsAre("a", "b"));
  EXPECT_FALSE(Reason(in, out, "c").empty());
}

TEST(SchedulerTest, ATenantOverItsRankQuotaWaitsWithoutHoldingTheLine) {
  SchedulerInput in;
  in.queued = {Job("t1-second", 1, 0, 1, "cpu", "t1"), Job("t2-first", 1, 0, 2, "cpu", "t2")};
  in.workers = {Worker("w1", 4)};
  in.running_ranks_by_tenant = {{"t1", 2}};
  in.max_running_ranks_per_tenant = 2;
  SchedulerOutput out = ScheduleJobs(in);
  EXPECT_THAT(Placed(in, out), ElementsAre("t2-first"));
  EXPECT_THAT(Reason(in, out, "t1-second"), HasSubstr("tenant 't1' runs 2 of its 2 ranks"));
}

TEST(SchedulerTest, ATenantsPlacementsCountTowardsItsQuotaWithinOneRound) {
  SchedulerInput in;
  in.queued = {Job("a", 1, 0, 1, "cpu", "t"), Job("b", 1, 0, 2, "cpu", "t")};
  in.workers = {Worker("w1", 4)};
  in.max_running_ranks_per_tenant = 1;
  EXPECT_THAT(Placed(in, ScheduleJobs(in)), ElementsAre("a"));
}

TEST(SchedulerTest, UnschedulableWhenNoWorkerHasTheDeviceOrTooFewSlotsInAll) {
  const auto pools = PoolsOf({Worker("w1", 2), Worker("w2", 1)});
  EXPECT_FALSE(Unschedulable(Job("a", 3), pools));
  EXPECT_TRUE(Unschedulable(Job("b", 4), pools));
  EXPECT_TRUE(Unschedulable(Job("c", 1, 0, 0, "cuda"), pools));
}

TEST(SchedulerTest, CudaReasonsCountGpus) {
  EXPECT_EQ(QueueReason("cuda", 2, DevicePool{1, 4}, 1, 1), "waiting for 2 GPUs (1 free)");
}

}  // namespace
}  // namespace lora::server
