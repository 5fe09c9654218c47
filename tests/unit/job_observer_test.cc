// JobManager::Options::observer: what lorad counts (lorad_jobs_finished_total,
// lorad_job_retries_total, lorad_workers_lost_total) and logs is reported once per stored
// change, with the retry policy's reason.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/exit_codes.h"
#include "common/job_spec/job_spec.h"

#include "server/core/job_manager.h"
#include "server/store/sqlite_job_store.h"

namespace lora::server {
namespace {

namespace fs = std::filesystem;
namespace wv1 = lora::worker::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class NullChannel : public WorkerChannel {
 public:
  void Send(const wv1::ControllerMessage&) override {}
  void Close() override {}
};

class JobObserverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("jo-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "artifacts");
    auto store = SqliteJobStore::Open({(dir_ / "lorad.db").string()});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    artifacts_ = std::make_unique<ArtifactStore>((dir_ / "artifacts").string());
    JobManager::Options o;
    o.max_attempts = 3;
    o.heartbeat_timeout = absl::Milliseconds(200);
    o.observer.job_finished = [this](const lora::v1::Job& job) {
      finished.push_back(lora::v1::JobState_Name(job.state()) + " " +
                         lora::v1::JobKind_Name(job.kind()));
    };
    o.observer.job_retried = [this](const lora::v1::Job& job, const char* reason,
                                    const std::string& why) {
      retried.push_back(std::string(reason) + " attempt " + std::to_string(job.attempt()));
      whys.push_back(why);
    };
    o.observer.worker_lost = [this](const std::string& worker, const std::string& reason) {
      lost.push_back(worker + ": " + reason);
    };
    auto m = JobManager::Create(o, store_.get(), artifacts_.get());
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
  }
  void TearDown() override {
    manager_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }
  void Connect(const std::string& id) {
    wv1::Register reg;
    reg.set_worker_id(id);
    reg.mutable_capabilities()->set_device("cpu");
    reg.mutable_capabilities()->set_slots(1);
    ASSERT_TRUE(manager_->WorkerConnected(reg, std::make_shared<NullChannel>()).ok());
  }
  lora::v1::Job Create() {
    auto parsed = ParseJobSpecToml(R"([job]
name = "t"
[model]
flavor = "tiny"
[training]
steps = 20
[dataset]
name = "synthetic-arith"
)",
                                   "t.toml");
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    bool created = false;
    auto job = manager_->CreateJob(parsed->spec, "", &created);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : lora::v1::Job();
  }
  lora::v1::Job Get(const std::string& id) {
    auto job = manager_->GetJob("jobs/" + id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : lora::v1::Job();
  }
  // The current attempt's rank 0 exits.
  void Exit(const std::string& worker, const std::string& id, int code, int signal = 0) {
    const lora::v1::Job job = Get(id);
    wv1::RankExited ex;
    ex.mutable_ref()->set_job_id(id);
    ex.mutable_ref()->set_attempt(job.attempt());
    ex.mutable_ref()->set_rank(0);
    ex.set_exit_code(code);
    ex.set_signal(signal);
    manager_->OnRankExited(worker, ex);
  }

  fs::path dir_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<ArtifactStore> artifacts_;
  std::unique_ptr<JobManager> manager_;
  std::vector<std::string> finished, retried, whys, lost;
};

TEST_F(JobObserverTest, RetriesAreReportedWithThePolicysReasonAndTheEndOnce) {
  Connect("w1");
  const lora::v1::Job job = Create();
  ASSERT_EQ(Get(job.id()).state(), lora::v1::STARTING);
  Exit("w1", job.id(), 128 + 9, 9);        // the OOM killer
  Exit("w1", job.id(), kExitInterrupted);  // a drain: a planned restart, no attempt spent
  EXPECT_THAT(retried, ElementsAre("killed attempt 2", "planned_restart attempt 3"));
  EXPECT_THAT(whys[0], HasSubstr("killed by signal 9"));
  EXPECT_TRUE(finished.empty());
  Exit("w1", job.id(), 1);  // the engine's own failure: no retry
  EXPECT_THAT(finished, ElementsAre("FAILED JOB_KIND_TRAIN"));
  EXPECT_EQ(retried.size(), 2u);
  EXPECT_TRUE(lost.empty());
  // A cancel ends a job once its ranks are gone.
  const lora::v1::Job second = Create();
  ASSERT_EQ(Get(second.id()).state(), lora::v1::STARTING);
  ASSERT_TRUE(manager_->CancelJob(second.name()).ok());
  EXPECT_EQ(finished.size(), 1u) << "CANCELLING is not an end";
  Exit("w1", second.id(), 128 + 15, 15);
  EXPECT_THAT(finished, ElementsAre("FAILED JOB_KIND_TRAIN", "CANCELLED JOB_KIND_TRAIN"));
  EXPECT_EQ(retried.size(), 2u) << "a rank stopped by a cancel is no retry";
}

TEST_F(JobObserverTest, ALostWorkerIsReportedAndItsJobRetried) {
  Connect("w1");
  const lora::v1::Job job = Create();
  ASSERT_EQ(Get(job.id()).state(), lora::v1::STARTING);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // past heartbeat_timeout
  manager_->Tick();
  EXPECT_THAT(lost, ElementsAre("w1: missed heartbeats"));
  EXPECT_THAT(retried, ElementsAre("worker_lost attempt 2"));
  EXPECT_THAT(whys[0], HasSubstr("worker w1 lost (missed heartbeats)"));
  manager_->Tick();  // reported once, not on every tick
  EXPECT_EQ(lost.size(), 1u);
  EXPECT_TRUE(finished.empty());
}

}  // namespace
}  // namespace lora::server
