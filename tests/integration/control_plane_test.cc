// The control plane's failure handling as real processes (lorad, lora-worker, lora-train on
// 127.0.0.1): what the OOM killer, a second lorad, planned restarts and a long job's checkpoints
// do to a job. Issue 13's defects 1, 3, 4 and 6.
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/lorad_harness.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using lora::v1::Job;
using ::testing::HasSubstr;
using testing::Lorad;
using testing::TinyTrainSpec;
using testing::WaitForJob;
namespace fs = std::filesystem;

bool Done(const Job& j) { return testing::JobEnded(j); }

class ControlPlaneTest : public testing::LoradTest {};

TEST_F(ControlPlaneTest, KillNineOfARankRetriesTheJobFromItsCheckpointAndItSucceeds) {
  auto lorad = StartLorad(1);
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(200, 20), "");
  ASSERT_TRUE(job.ok()) << job.status();
  Job running = WaitForJob(*client, job->name(),
                           [](const Job& j) { return j.latest_checkpoint_step() >= 20; });
  ASSERT_GE(running.latest_checkpoint_step(), 20) << lorad->log();
  std::vector<pid_t> ranks = testing::FindRankProcesses(job->id(), 0);
  ASSERT_EQ(ranks.size(), 1u);
  ::kill(ranks[0], SIGKILL);  // what the OOM killer does
  Job done = WaitForJob(*client, job->name(), Done, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  EXPECT_EQ(done.attempt(), 2);
  EXPECT_EQ(done.restarts(), 0);
}

TEST_F(ControlPlaneTest, ASecondLoradOnTheSameDataDirectoryRefusesNamingTheHoldersPid) {
  auto first = StartLorad(0);
  Lorad second(Lorad::Options{dir_.Join("data"), 0, 0, {}});
  EXPECT_FALSE(second.Start());  // it exited instead of serving
  EXPECT_THAT(second.log(),
              HasSubstr("in use by another lorad (pid " + std::to_string(first->pid()) + ")"));
  // The first one is unaffected.
  EXPECT_TRUE(first->Client()->ListJobs(lora::v1::ListJobsRequest()).ok());
}

TEST_F(ControlPlaneTest, SigtermRestartsOfLoradNeverFailAHealthyJobOrLoseItsProgress) {
  const int port = testing::FreePort();
  const std::vector<std::string> flags = {"--drain-grace", "30", "--max-attempts", "2"};
  auto lorad = StartLorad(1, flags, port);
  auto job = lorad->Client()->CreateJob(TinyTrainSpec(400, 50), "");
  ASSERT_TRUE(job.ok()) << job.status();
  int64_t last_step = 0;
  for (int restart = 1; restart <= 3; ++restart) {
    auto client = lorad->Client();
    Job running = WaitForJob(*client, job->name(), [&](const Job& j) {
      return j.state() == lora::v1::RUNNING && j.progress().step() > last_step + 5;
    });
    ASSERT_EQ(running.state(), lora::v1::RUNNING) << lorad->log();
    lorad->Kill(SIGTERM);
    ASSERT_EQ(lorad->WaitExit(60), 0) << lorad->log();
    lorad.reset();
    lorad = StartLorad(1, flags, port);
    Job after = *lorad->Client()->GetJob(job->name());
    // The drain checkpoint was uploaded and recorded: the job resumes from where it stopped,
    // not from the last periodic checkpoint.
    EXPECT_GE(after.latest_checkpoint_step(), running.progress().step()) << restart;
    EXPECT_EQ(after.restarts(), restart) << after.DebugString();
    last_step = after.latest_checkpoint_step();
  }
  Job done = WaitForJob(*lorad->Client(), job->name(), Done, 300);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  EXPECT_EQ(done.attempt() - done.restarts(), 1);  // no attempt spent on planned stops
}

TEST_F(ControlPlaneTest, TheControllerKeepsOnlyKeepLatestCheckpointsOnDisk) {
  auto lorad = StartLorad(1);
  auto client = lorad->Client();
  auto spec = TinyTrainSpec(60, 5);
  spec.mutable_checkpoint()->set_keep_latest(2);
  auto job = client->CreateJob(spec, "");
  ASSERT_TRUE(job.ok()) << job.status();
  Job done = WaitForJob(*client, job->name(), Done, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  auto checkpoints = client->ListCheckpoints(job->name());
  ASSERT_TRUE(checkpoints.ok());
  ASSERT_EQ(checkpoints->size(), 2u);
  EXPECT_EQ(checkpoints->back().step(), 60);
  int step_dirs_with_files = 0;
  const fs::path root = fs::path(dir_.Join("data")) / "artifacts" / job->id() / "checkpoints";
  for (const auto& step_dir : fs::directory_iterator(root)) {
    bool has_files = false;
    for (const auto& f : fs::recursive_directory_iterator(step_dir.path()))
      has_files = has_files || f.is_regular_file();
    step_dirs_with_files += has_files ? 1 : 0;
  }
  EXPECT_EQ(step_dirs_with_files, 2);
}

}  // namespace
}  // namespace lora
