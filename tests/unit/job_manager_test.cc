// The controller core without processes: a real SQLite store (that fails on demand), a fake
// worker channel, the JobManager in between. Each test names the behaviour it pins.

#include "server/core/job_manager.h"
#include "common/data_roots.h"
#include "server/store/sqlite_job_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/exit_codes.h"
#include "common/file_util.h"
#include "common/job_spec/job_spec.h"
#include "common/not_leader.h"
#include "common/sha256.h"
#include "server/store/data_dir_lock.h"

namespace lora::server {
namespace {

namespace fs = std::filesystem;
namespace wv1 = lora::worker::v1;
using ::testing::HasSubstr;

class FakeChannel : public WorkerChannel {
 public:
  void Send(const wv1::ControllerMessage& m) override { sent.push_back(m); }
  void Close() override { closed = true; }
  std::vector<wv1::Assignment> Assignments() const {
    std::vector<wv1::Assignment> out;
    for (const auto& m : sent)
      if (m.has_assignment()) out.push_back(m.assignment());
    return out;
  }
  std::vector<wv1::ControllerMessage> sent;
  bool closed = false;
};

class RecordingSubscriber : public EventSubscriber {
 public:
  void OnEvent(const std::shared_ptr<const PublishedEvent>& e) override {
    events.push_back(e->event);
  }
  void OnClose(bool) override { closed = true; }
  std::vector<lora::v1::JobEvent> events;
  bool closed = false;
};

lora::v1::JobSpec Spec(int keep_latest = 0) {
  auto parsed = ParseJobSpecToml(R"([job]
name = "t"
[model]
flavor = "tiny"
[training]
steps = 20
[dataset]
name = "synthetic-arith"
[checkpoint]
interval = 2
keep_latest = )" + std::to_string(keep_latest) +
                                     "\n",
                                 "t.toml");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? parsed->spec : lora::v1::JobSpec();
}

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("jm-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "artifacts");
    auto store = SqliteJobStore::Open({(dir_ / "lorad.db").string()});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    artifacts_ = std::make_unique<ArtifactStore>((dir_ / "artifacts").string());
    Restart();
  }
  void TearDown() override {
    manager_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }
  // A new manager over the same store: what a lorad restart sees.
  void Restart() {
    manager_.reset();
    JobManager::Options o;
    o.max_attempts = 3;
    o.heartbeat_timeout = absl::Seconds(60);
    o.max_queued_jobs_per_tenant = max_queued_per_tenant_;
    o.resolve_files =
        [this](const std::string& tenant,
               const lora::v1::JobSpec& spec) -> absl::StatusOr<std::vector<lora::v1::File>> {
      ++resolve_calls_;
      std::vector<lora::v1::File> out;
      for (const auto& f : files_) {
        if (spec.dataset().path() != f.name()) continue;
        if (tenant != f.tenant()) return absl::NotFoundError("dataset.path: not found");
        out.push_back(f);
      }
      if (IsFileRef(spec.dataset().path()) && out.empty())
        return absl::NotFoundError("dataset.path: not found");
      return out;
    };
    auto m = JobManager::Create(o, store_.get(), artifacts_.get());
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
  }
  std::shared_ptr<FakeChannel> Connect(const std::string& id, int slots = 1) {
    auto channel = std::make_shared<FakeChannel>();
    wv1::Register reg;
    reg.set_worker_id(id);
    reg.mutable_capabilities()->set_device("cpu");
    reg.mutable_capabilities()->set_slots(slots);
    EXPECT_TRUE(manager_->WorkerConnected(reg, channel).ok());
    return channel;
  }
  lora::v1::Job Create(int keep_latest = 0) {
    bool created = false;
    auto job = manager_->CreateJob(Spec(keep_latest), "", &created);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : lora::v1::Job();
  }
  lora::v1::Job Get(const std::string& id) {
    auto job = manager_->GetJob("jobs/" + id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : lora::v1::Job();
  }
  lora::v1::Job Stored(const std::string& id) {
    auto job = store_->GetJob(id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : lora::v1::Job();
  }
  static wv1::RankRef Ref(const lora::v1::Job& job, int rank = 0) {
    wv1::RankRef ref;
    ref.set_job_id(job.id());
    ref.set_attempt(job.attempt());
    ref.set_rank(rank);
    return ref;
  }
  void Event(const std::string& worker, const lora::v1::Job& job, int64_t seq,
             const lora::engine::v1::EngineEvent& e) {
    wv1::RankEvent ev;
    *ev.mutable_ref() = Ref(job);
    ev.set_worker_seq(seq);
    *ev.mutable_event() = e;
    manager_->OnRankEvent(worker, ev);
  }
  void Exit(const std::string& worker, const lora::v1::Job& job, int code, int signal = 0) {
    wv1::RankExited ex;
    *ex.mutable_ref() = Ref(job);
    ex.set_exit_code(code);
    ex.set_signal(signal);
    manager_->OnRankExited(worker, ex);
  }
  static lora::engine::v1::EngineEvent Step(int64_t step) {
    lora::engine::v1::EngineEvent e;
    e.mutable_step()->set_step(step);
    e.mutable_step()->set_total_steps(20);
    e.mutable_step()->set_loss(1.5);
    return e;
  }
  // A checkpoint of `step` whose one file was uploaded (stored on disk and recorded).
  lora::engine::v1::EngineEvent Checkpoint(const lora::v1::Job& job, int64_t step) {
    const std::string dir = "checkpoints/step-" + std::to_string(step);
    lora::engine::v1::EngineEvent e;
    auto* c = e.mutable_checkpoint();
    c->set_step(step);
    c->set_job_path(dir);
    c->add_files()->set_path("adapter.safetensors");
    // Both files stored on disk and recorded as uploaded, the manifest last.
    for (const std::string name : {"adapter.safetensors", "manifest.json"}) {
      const std::string path = dir + "/" + name;
      const std::string bytes = name + " at step " + std::to_string(step);
      const fs::path local = dir_ / "artifacts" / job.id() / path;
      fs::create_directories(local.parent_path());
      std::ofstream(local) << bytes;
      Sha256 h;
      h.Update(bytes);
      lora::v1::ArtifactFile file;
      file.set_path(path);
      file.set_size(static_cast<int64_t>(bytes.size()));
      file.set_sha256(h.HexDigest());
      wv1::UploadHeader header;
      *header.mutable_ref() = Ref(job);
      header.set_step(step);
      EXPECT_TRUE(manager_->OnArtifactStored(header, file).ok());
      auto* u = c->add_uploaded();
      u->set_path(path);
      u->set_size(file.size());
      u->set_sha256(file.sha256());
    }
    return e;
  }

  fs::path dir_;
  int max_queued_per_tenant_ = 0;
  std::atomic<int> resolve_calls_{0};  // resolve_files calls (CreateJob's check included)
  std::vector<lora::v1::File> files_;  // what resolve_files knows
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<ArtifactStore> artifacts_;
  std::unique_ptr<JobManager> manager_;
};

TEST_F(JobManagerTest, AKilledRankIsRetriedFromTheLatestCheckpointNotFailed) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  ASSERT_EQ(w->Assignments().size(), 1u);
  Event("w1", job, 1, Step(1));
  Event("w1", job, 2, Checkpoint(job, 2));
  Exit("w1", job, 128 + 9, 9);  // kill -9: the OOM killer
  lora::v1::Job now = Get(job.id());
  EXPECT_EQ(now.attempt(), 2);
  EXPECT_NE(now.state(), lora::v1::FAILED);
  ASSERT_EQ(w->Assignments().size(), 2u);  // started again at once: the slot is free
  EXPECT_EQ(w->Assignments()[1].resume().step(), 2);
}

TEST_F(JobManagerTest, APlannedStopRequeuesWithoutSpendingAnAttempt) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  for (int restart = 1; restart <= 5; ++restart) {
    lora::v1::Job current = Get(job.id());
    Exit("w1", current, kExitInterrupted);
  }
  lora::v1::Job now = Get(job.id());
  EXPECT_EQ(now.restarts(), 5);
  EXPECT_EQ(now.attempt(), 6);
  EXPECT_NE(now.state(), lora::v1::FAILED);
}

TEST_F(JobManagerTest, AFailedWriteLeavesMemoryEqualToTheStoreAndIsDecidedWhenItHeals) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  Event("w1", job, 1, Step(1));
  ASSERT_EQ(Get(job.id()).state(), lora::v1::RUNNING);
  RecordingSubscriber watcher;
  int64_t last = 0;
  bool terminal = false;
  ASSERT_TRUE(manager_->Subscribe(job.name(), &watcher, &last, &terminal).ok());

  store_->FailWritesForTesting(absl::ResourceExhaustedError("database or disk is full"));
  lora::engine::v1::EngineEvent failed;
  failed.mutable_failed()->set_reason("dataset.path: unreadable");
  failed.mutable_failed()->set_code("INVALID_ARGUMENT");
  Event("w1", job, 2, failed);  // not stored: the worker is made to reconnect and re-send
  EXPECT_TRUE(w->closed);
  Exit("w1", job, 1);
  manager_->Tick();
  // What GetJob says is what the store holds: neither says FAILED yet.
  EXPECT_EQ(Get(job.id()).state(), lora::v1::RUNNING);
  EXPECT_EQ(Stored(job.id()).state(), lora::v1::RUNNING);
  EXPECT_EQ(Get(job.id()).last_sequence(), Stored(job.id()).last_sequence());
  EXPECT_TRUE(watcher.events.empty());
  EXPECT_EQ(manager_->Stats().undecided_jobs, 1);

  store_->FailWritesForTesting(absl::OkStatus());
  manager_->Tick();
  EXPECT_EQ(Get(job.id()).state(), lora::v1::FAILED);
  EXPECT_EQ(Stored(job.id()).state(), lora::v1::FAILED);
  EXPECT_TRUE(watcher.closed);
  EXPECT_EQ(manager_->Stats().undecided_jobs, 0);
}

// Found by the chaos test: lorad restarted between rank 0's result and its exit, forgot the
// result, and failed the job with "ranks exited without reporting a result".
TEST_F(JobManagerTest, AResultReportedBeforeALoradRestartStillCountsAfterIt) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  lora::engine::v1::EngineEvent finished;
  finished.mutable_finished();  // no output files: a job whose result is its summary alone
  Event("w1", job, 1, finished);
  Restart();
  wv1::Register reg;
  reg.set_worker_id("w1");
  reg.mutable_capabilities()->set_device("cpu");
  *reg.add_running()->mutable_ref() = Ref(job);
  ASSERT_TRUE(manager_->WorkerConnected(reg, std::make_shared<FakeChannel>()).ok());
  Exit("w1", job, 0);
  EXPECT_EQ(Get(job.id()).state(), lora::v1::SUCCEEDED) << Get(job.id()).error().message();
}

TEST_F(JobManagerTest, AFailedStartLeaksNoSlotAndTheJobStartsWhenTheStoreHeals) {
  lora::v1::Job job = Create();
  store_->FailWritesForTesting(absl::UnavailableError("disk I/O error"));
  auto w = Connect("w1");
  EXPECT_EQ(Get(job.id()).state(), lora::v1::QUEUED);
  EXPECT_EQ(manager_->Stats().workers_busy_slots, 0);
  EXPECT_TRUE(w->Assignments().empty());
  store_->FailWritesForTesting(absl::OkStatus());
  manager_->Tick();
  EXPECT_EQ(Get(job.id()).state(), lora::v1::STARTING);
  EXPECT_EQ(manager_->Stats().workers_busy_slots, 1);
  EXPECT_EQ(w->Assignments().size(), 1u);
}

TEST_F(JobManagerTest, AJobThatEndedWhileTheStoreFailedFreesItsSlotForTheNextJob) {
  auto w = Connect("w1");
  lora::v1::Job first = Create();
  lora::v1::Job second = Create();
  EXPECT_EQ(Get(second.id()).state(), lora::v1::QUEUED);
  store_->FailWritesForTesting(absl::ResourceExhaustedError("database or disk is full"));
  Exit("w1", first, 1);
  manager_->Tick();
  EXPECT_EQ(Get(second.id()).state(), lora::v1::QUEUED);
  store_->FailWritesForTesting(absl::OkStatus());
  manager_->Tick();
  EXPECT_EQ(Get(first.id()).state(), lora::v1::FAILED);
  EXPECT_EQ(Get(second.id()).state(), lora::v1::STARTING);
  EXPECT_EQ(w->Assignments().back().ref().job_id(), second.id());
}

TEST_F(JobManagerTest, AJobNeverReportedFailedRunsOnAfterARestart) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  store_->FailWritesForTesting(absl::ResourceExhaustedError("database or disk is full"));
  Exit("w1", job, 1);
  EXPECT_NE(Get(job.id()).state(), lora::v1::FAILED);
  store_->FailWritesForTesting(absl::OkStatus());
  Restart();  // lorad restarts before the decision was stored: the job is still the stored one
  EXPECT_EQ(Get(job.id()).state(), Stored(job.id()).state());
  EXPECT_EQ(Get(job.id()).state(), lora::v1::STARTING);
}

TEST_F(JobManagerTest, ACancelThatCannotBeStoredFailsTheCallAndChangesNothing) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  store_->FailWritesForTesting(absl::ResourceExhaustedError("database or disk is full"));
  auto cancelled = manager_->CancelJob(job.name());
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Get(job.id()).state(), lora::v1::STARTING);
  for (const auto& m : w->sent) EXPECT_FALSE(m.has_cancel());
}

TEST_F(JobManagerTest, AnEngineEventTheStoreRefusedIsAppliedWhenTheWorkerResendsIt) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  store_->FailWritesForTesting(absl::ResourceExhaustedError("database or disk is full"));
  Event("w1", job, 1, Step(1));
  EXPECT_TRUE(w->closed);
  EXPECT_EQ(Get(job.id()).progress().step(), 0);
  store_->FailWritesForTesting(absl::OkStatus());
  Event("w1", job, 1, Step(1));  // the re-send after reconnecting
  EXPECT_EQ(Get(job.id()).progress().step(), 1);
  EXPECT_EQ(Stored(job.id()).progress().step(), 1);
}

TEST_F(JobManagerTest, ARealFullDatabaseNeverSplitsMemoryFromDisk) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  ASSERT_TRUE(store_->LimitPagesForTesting(1).ok());  // no page beyond the current size
  // Fill the file until SQLite says SQLITE_FULL, comparing memory with disk at every step.
  for (int64_t step = 1; step <= 400; ++step) {
    lora::engine::v1::EngineEvent e = Step(step);
    e.mutable_step()->set_tokens(step);
    Event("w1", job, step, e);
    ASSERT_EQ(Get(job.id()).last_sequence(), Stored(job.id()).last_sequence()) << step;
    ASSERT_EQ(Get(job.id()).progress().step(), Stored(job.id()).progress().step()) << step;
    if (w->closed) break;
  }
  EXPECT_TRUE(w->closed) << "the database never filled up";
}

TEST_F(JobManagerTest, KeepLatestPrunesOlderCheckpointsAndTheirFiles) {
  auto w = Connect("w1");
  lora::v1::Job job = Create(/*keep_latest=*/2);
  for (int64_t step : {2, 4, 6}) Event("w1", job, step, Checkpoint(job, step));
  auto checkpoints = manager_->ListCheckpoints(job.name());
  ASSERT_TRUE(checkpoints.ok());
  ASSERT_EQ(checkpoints->size(), 2u);
  EXPECT_EQ((*checkpoints)[0].step(), 4);
  EXPECT_FALSE(fs::exists(dir_ / "artifacts" / job.id() /
                          "checkpoints/step-2"
                          "/adapter.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ / "artifacts" / job.id() /
                         "checkpoints/step-6"
                         "/adapter.safetensors"));
  EXPECT_FALSE(store_->GetArtifact(job.id(), "checkpoints/step-2/adapter.safetensors").ok());
}

// An upload cut short leaves a checkpoint unrecorded with some of its files stored. They
// belonged to no record, so retention used to keep them on the controller's disk for good.
TEST_F(JobManagerTest, KeepLatestAlsoRemovesTheFilesOfACheckpointThatNeverBecameWhole) {
  auto w = Connect("w1");
  lora::v1::Job job = Create(/*keep_latest=*/2);
  Event("w1", job, 2, Checkpoint(job, 2));
  lora::engine::v1::EngineEvent partial = Checkpoint(job, 4);
  partial.mutable_checkpoint()->mutable_uploaded()->RemoveLast();  // the manifest never came
  Event("w1", job, 4, partial);
  const fs::path orphan = dir_ / "artifacts" / job.id() / "checkpoints/step-4/adapter.safetensors";
  ASSERT_TRUE(fs::exists(orphan));
  ASSERT_EQ(manager_->ListCheckpoints(job.name())->size(), 1u);  // step 4 was not recorded
  for (int64_t step : {6, 8}) Event("w1", job, step, Checkpoint(job, step));
  auto checkpoints = manager_->ListCheckpoints(job.name());
  ASSERT_TRUE(checkpoints.ok());
  ASSERT_EQ(checkpoints->size(), 2u);
  EXPECT_EQ((*checkpoints)[0].step(), 6);
  EXPECT_FALSE(fs::exists(orphan));
  EXPECT_FALSE(fs::exists(orphan.parent_path()));
  EXPECT_FALSE(store_->GetArtifact(job.id(), "checkpoints/step-4/adapter.safetensors").ok());
  EXPECT_TRUE(fs::exists(dir_ / "artifacts" / job.id() / "checkpoints/step-6/manifest.json"));
}

// Creates write the store without the manager's lock (so that they share group commits): the
// queue limit must count the jobs still being written, or concurrent creates overshoot it.
TEST_F(JobManagerTest, ConcurrentCreatesShareCommitsAndNeverPassTheTenantsQueueLimit) {
  max_queued_per_tenant_ = 12;
  Restart();
  store_->GatherBatchesForTesting(4);  // every commit waits for four creates
  std::atomic<int> created{0}, refused{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 4; ++i) {
        bool was_created = false;
        auto job = manager_->CreateJob(Spec(), "", &was_created, "tenant-a");
        if (job.ok()) {
          ++created;
          // Whoever holds the answer can act on the job at once.
          EXPECT_EQ(Get(job->id()).state(), lora::v1::QUEUED);
        } else if (absl::IsResourceExhausted(job.status())) {
          ++refused;
        } else {
          ++other;
          ADD_FAILURE() << job.status();
        }
        // Keep the batches at four: a refused create writes nothing.
        if (!job.ok()) store_->GatherBatchesForTesting(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  store_->GatherBatchesForTesting(1);
  EXPECT_EQ(created.load(), 12);
  EXPECT_EQ(refused.load(), 20);
  EXPECT_EQ(other.load(), 0);
  auto stored = store_->ListActiveJobs();
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->size(), 12u);
  const auto [batches, writes] = store_->GroupCommitStats();
  EXPECT_LT(batches, writes);
}

TEST_F(JobManagerTest, AssignmentsOfferOlderCheckpointsNewestFirstAsFallbacks) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  for (int64_t step : {2, 4, 6}) Event("w1", job, step, Checkpoint(job, step));
  Exit("w1", job, 137, 9);
  const wv1::Assignment a = w->Assignments().back();
  EXPECT_EQ(a.resume().step(), 6);
  ASSERT_EQ(a.fallback_resume_size(), 2);
  EXPECT_EQ(a.fallback_resume(0).step(), 4);
  EXPECT_EQ(a.fallback_resume(1).step(), 2);
}

TEST_F(JobManagerTest, AWorkerThatComesBackWithoutItsRankRetriesTheJob) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  Connect("w1");  // re-registers running nothing
  lora::v1::Job now = Get(job.id());
  EXPECT_EQ(now.attempt(), 2);
  EXPECT_EQ(manager_->Stats().workers_busy_slots, 1);  // the retry holds the one slot again
}

// The ranks of one attempt get the same files and the same checkpoint, read once per attempt,
// not once per rank (with PostgreSQL each read is a round trip, under the manager's lock).
TEST_F(JobManagerTest, EveryRankOfAnAttemptIsSentTheSameInputsReadOncePerAttempt) {
  auto w1 = Connect("w1");
  auto w2 = Connect("w2");
  lora::v1::JobSpec spec = Spec();
  spec.mutable_resources()->set_world_size(2);
  bool created = false;
  const int before = resolve_calls_.load();
  auto job = manager_->CreateJob(spec, "", &created);
  ASSERT_TRUE(job.ok()) << job.status();
  wv1::RankAccepted accepted;
  *accepted.mutable_ref() = Ref(*job, 0);
  accepted.set_master_port(1234);
  manager_->OnRankAccepted("w1", accepted);
  EXPECT_EQ(resolve_calls_.load() - before, 1);  // both ranks of attempt 1: one read
  Event("w1", *job, 1, Checkpoint(*job, 2));
  // Rank 1 is killed: attempt 2 starts once rank 0 has stopped, from step 2.
  wv1::RankExited killed;
  *killed.mutable_ref() = Ref(*job, 1);
  killed.set_exit_code(137);
  killed.set_signal(9);
  manager_->OnRankExited("w2", killed);
  wv1::RankExited stopped;
  *stopped.mutable_ref() = Ref(*job, 0);
  stopped.set_exit_code(kExitInterrupted);
  manager_->OnRankExited("w1", stopped);
  lora::v1::Job second = Get(job->id());
  ASSERT_EQ(second.attempt(), 2);
  *accepted.mutable_ref() = Ref(second, 0);
  const std::string rank0_worker = second.workers(0);
  manager_->OnRankAccepted(rank0_worker, accepted);
  EXPECT_EQ(resolve_calls_.load() - before, 2);  // and one for both ranks of attempt 2
  std::vector<wv1::Assignment> sent;
  for (const auto* w : {w1.get(), w2.get()}) {
    for (const auto& as : w->Assignments()) {
      if (as.ref().attempt() == 2) sent.push_back(as);
    }
  }
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].resume().step(), 2);
  EXPECT_EQ(sent[1].resume().step(), 2);
}

TEST_F(JobManagerTest, RanksOfAReplacedAttemptHoldTheirSlotUntilTheyExit) {
  auto w1 = Connect("w1");
  auto w2 = Connect("w2");
  lora::v1::JobSpec spec = Spec();
  spec.mutable_resources()->set_world_size(2);
  bool created = false;
  auto job = manager_->CreateJob(spec, "", &created);
  ASSERT_TRUE(job.ok()) << job.status();
  wv1::RankAccepted accepted;
  *accepted.mutable_ref() = Ref(*job, 0);
  accepted.set_master_port(1234);
  manager_->OnRankAccepted("w1", accepted);  // rank 1 is assigned once rank 0 has its port
  ASSERT_EQ(w2->Assignments().size(), 1u);
  EXPECT_EQ(manager_->Stats().workers_busy_slots, 2);
  // Rank 1 is killed; rank 0 of that attempt is still stopping on w1.
  wv1::RankExited killed;
  *killed.mutable_ref() = Ref(*job, 1);
  killed.set_exit_code(137);
  killed.set_signal(9);
  manager_->OnRankExited("w2", killed);
  EXPECT_EQ(Get(job->id()).state(), lora::v1::QUEUED);
  EXPECT_EQ(manager_->Stats().workers_busy_slots, 1);
  EXPECT_EQ(w1->Assignments().size(), 1u);  // not restarted onto a busy slot
  wv1::RankExited stopped;
  *stopped.mutable_ref() = Ref(*job, 0);
  stopped.set_exit_code(kExitInterrupted);
  manager_->OnRankExited("w1", stopped);
  EXPECT_EQ(Get(job->id()).state(), lora::v1::STARTING);
  EXPECT_EQ(Get(job->id()).attempt(), 2);
  EXPECT_EQ(manager_->Stats().workers_busy_slots, 2);
}

TEST_F(JobManagerTest, APausedJobFreesItsSlotAndResumesFromItsCheckpointWithoutSpendingAnAttempt) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  Event("w1", job, 1, Step(1));
  Event("w1", job, 2, Checkpoint(job, 2));
  auto pausing = manager_->PauseJob(job.name());
  ASSERT_TRUE(pausing.ok()) << pausing.status();
  EXPECT_EQ(pausing->state(), lora::v1::PAUSING);
  ASSERT_TRUE(w->sent.back().has_cancel());  // the rank is asked to checkpoint and stop
  EXPECT_EQ(w->sent.back().cancel().reason(), "pause requested");
  Event("w1", job, 3, Checkpoint(job, 4));  // the drain checkpoint
  Exit("w1", job, kExitInterrupted);
  lora::v1::Job paused = Get(job.id());
  ASSERT_EQ(paused.state(), lora::v1::PAUSED);
  EXPECT_EQ(paused.latest_checkpoint_step(), 4);
  EXPECT_EQ(Stored(job.id()).state(), lora::v1::PAUSED);

  // Paused, it holds no slot: another job starts on the one worker.
  lora::v1::Job other = Create();
  EXPECT_EQ(Get(other.id()).state(), lora::v1::STARTING);
  ASSERT_TRUE(manager_->CancelJob(other.name()).ok());
  Exit("w1", Get(other.id()), kExitInterrupted);

  Restart();  // PAUSED survives a lorad restart
  w = Connect("w1");
  EXPECT_EQ(Get(job.id()).state(), lora::v1::PAUSED);
  auto resumed = manager_->ResumeJob(job.name());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  lora::v1::Job now = Get(job.id());
  EXPECT_EQ(now.state(), lora::v1::STARTING);
  EXPECT_EQ(now.restarts(), 1);  // a planned stop, not an attempt
  ASSERT_FALSE(w->Assignments().empty());
  EXPECT_EQ(w->Assignments().back().resume().step(), 4);
  EXPECT_EQ(manager_->ResumeJob(job.name()).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(JobManagerTest, PausingAQueuedJobPausesItAtOnceAndCancellingAPausedJobEndsIt) {
  lora::v1::Job job = Create();  // no worker: it stays QUEUED
  auto paused = manager_->PauseJob(job.name());
  ASSERT_TRUE(paused.ok());
  EXPECT_EQ(paused->state(), lora::v1::PAUSED);
  auto w = Connect("w1");
  EXPECT_TRUE(w->Assignments().empty()) << "a paused job is never scheduled";
  ASSERT_TRUE(manager_->CancelJob(job.name()).ok());
  EXPECT_EQ(Get(job.id()).state(), lora::v1::CANCELLED);
  EXPECT_EQ(manager_->PauseJob(job.name()).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(JobManagerTest, OnlyAJobThatEndedCanBeDeletedAndItsFilesGoWithIt) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  Event("w1", job, 1, Checkpoint(job, 2));
  EXPECT_EQ(manager_->DeleteJob(job.name()).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(manager_->CancelJob(job.name()).ok());
  Exit("w1", job, kExitInterrupted);
  ASSERT_EQ(Get(job.id()).state(), lora::v1::CANCELLED);
  ASSERT_TRUE(fs::exists(dir_ / "artifacts" / job.id()));
  ASSERT_TRUE(manager_->DeleteJob(job.name()).ok());
  EXPECT_EQ(manager_->GetJob(job.name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(dir_ / "artifacts" / job.id()));
  auto checkpoints = store_->ListCheckpoints(job.id());
  ASSERT_TRUE(checkpoints.ok());
  EXPECT_TRUE(checkpoints->empty());
  EXPECT_EQ(manager_->DeleteJob(job.name()).code(), absl::StatusCode::kNotFound);
}

TEST_F(JobManagerTest, RetentionDeletesOnlyJobsThatEndedBeforeTheCutoff) {
  lora::v1::Job old_job = Create();
  ASSERT_TRUE(manager_->CancelJob(old_job.name()).ok());
  lora::v1::Job running = Create();
  EXPECT_EQ(manager_->DeleteFinishedBefore(absl::Now() - absl::Hours(1)), 0);
  EXPECT_EQ(manager_->DeleteFinishedBefore(absl::Now() + absl::Seconds(1)), 1);
  EXPECT_EQ(manager_->GetJob(old_job.name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(manager_->GetJob(running.name()).ok());
}

TEST_F(JobManagerTest, ARequestIdReusedWithADifferentSpecIsAnErrorNamingTheField) {
  bool created = false;
  auto first = manager_->CreateJob(Spec(), "req-1", &created);
  ASSERT_TRUE(first.ok());
  auto same = manager_->CreateJob(Spec(), "req-1", &created);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_FALSE(created);
  EXPECT_EQ(same->id(), first->id());
  auto other = manager_->CreateJob(Spec(/*keep_latest=*/3), "req-1", &created);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(other.status().message()), HasSubstr("checkpoint.keep_latest"));
  EXPECT_THAT(std::string(other.status().message()), HasSubstr(first->name()));
}

TEST_F(JobManagerTest, ListJobsFiltersByLabelsAndOrdersByCreateTimeEitherWay) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    lora::v1::JobSpec spec = Spec();
    (*spec.mutable_job()->mutable_labels())["team"] = i % 2 == 0 ? "nlp" : "vision";
    if (i == 4) (*spec.mutable_job()->mutable_labels())["sweep"] = "lr";
    bool created = false;
    auto job = manager_->CreateJob(spec, "", &created);
    ASSERT_TRUE(job.ok());
    ids.push_back(job->id());
  }
  lora::v1::ListJobsRequest r;
  r.set_filter("labels.team = \"nlp\"");
  r.set_order_by("create_time asc");
  r.set_page_size(2);
  auto page1 = manager_->ListJobs(r);
  ASSERT_TRUE(page1.ok()) << page1.status();
  ASSERT_EQ(page1->jobs_size(), 2);
  EXPECT_EQ(page1->jobs(0).id(), ids[0]);
  EXPECT_EQ(page1->jobs(1).id(), ids[2]);
  r.set_page_token(page1->next_page_token());
  auto page2 = manager_->ListJobs(r);
  ASSERT_TRUE(page2.ok());
  ASSERT_EQ(page2->jobs_size(), 1);
  EXPECT_EQ(page2->jobs(0).id(), ids[4]);
  EXPECT_TRUE(page2->next_page_token().empty());

  lora::v1::ListJobsRequest newest;
  newest.set_filter("labels.sweep:* AND state = QUEUED");
  auto swept = manager_->ListJobs(newest);
  ASSERT_TRUE(swept.ok());
  ASSERT_EQ(swept->jobs_size(), 1);
  EXPECT_EQ(swept->jobs(0).id(), ids[4]);
  newest.set_filter("labels.team = nlp AND kind = MERGE");
  EXPECT_EQ(manager_->ListJobs(newest)->jobs_size(), 0);
  newest.set_filter("owner = me");
  EXPECT_EQ(manager_->ListJobs(newest).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(JobManagerTest, AssignmentsCarryTheirFilesAndOnlyTheirHoldersMayFetchTheirBlobs) {
  lora::v1::File file;
  file.set_id("f-1");
  file.set_name("files/f-1");
  auto* entry = file.add_entries();
  entry->set_path("train.jsonl");
  entry->set_sha256(std::string(64, 'a'));
  files_.push_back(file);
  auto w1 = Connect("w1");
  auto w2 = Connect("w2");
  lora::v1::JobSpec spec = Spec();
  spec.mutable_dataset()->clear_name();
  spec.mutable_dataset()->set_path("files/f-1");
  bool created = false;
  auto other_tenant = manager_->CreateJob(spec, "", &created, "someone-else");
  EXPECT_EQ(other_tenant.status().code(), absl::StatusCode::kNotFound) << other_tenant.status();
  auto job = manager_->CreateJob(spec, "", &created);
  ASSERT_TRUE(job.ok()) << job.status();
  const auto& sent = w1->Assignments().empty() ? w2->Assignments() : w1->Assignments();
  ASSERT_EQ(sent.size(), 1u);
  ASSERT_EQ(sent[0].files_size(), 1);
  EXPECT_EQ(sent[0].files(0).name(), "files/f-1");
  const std::string holder = w1->Assignments().empty() ? "w2" : "w1";
  const std::string other = holder == "w1" ? "w2" : "w1";
  EXPECT_TRUE(manager_->CheckBlobForRank(holder, Ref(*job), std::string(64, 'a')).ok());
  EXPECT_FALSE(manager_->CheckBlobForRank(other, Ref(*job), std::string(64, 'a')).ok());
  EXPECT_EQ(manager_->CheckBlobForRank(holder, Ref(*job), std::string(64, 'b')).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(manager_->NamesFile("files/f-1"));
  ASSERT_TRUE(manager_->CancelJob(job->name()).ok());
  Exit(holder, *job, kExitInterrupted);
  EXPECT_FALSE(manager_->NamesFile("files/f-1"));
  EXPECT_FALSE(manager_->CheckBlobForRank(holder, Ref(*job), std::string(64, 'a')).ok());
}

TEST_F(JobManagerTest, TheQueueIndexStartsJobsInOrderAndNamesAReasonPastTheSchedulingWindow) {
  std::vector<lora::v1::Job> jobs;
  for (int i = 0; i < 300; ++i) jobs.push_back(Create());
  EXPECT_THAT(Get(jobs[0].id()).queue_reason(), HasSubstr("no connected worker"));
  EXPECT_THAT(Get(jobs[299].id()).queue_reason(), HasSubstr("no connected worker"));
  manager_->Tick();  // a full pass: the window ends at the 256th job
  EXPECT_THAT(Get(jobs[255].id()).queue_reason(), HasSubstr("behind jobs/" + jobs[0].id()));
  EXPECT_THAT(Get(jobs[299].id()).queue_reason(), HasSubstr("behind at least 256 jobs"));
  lora::v1::JobSpec urgent = Spec();
  urgent.mutable_job()->set_priority(5);
  bool created = false;
  auto first = manager_->CreateJob(urgent, "", &created);  // jumps the queue
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(manager_->CancelJob(jobs[0].name()).ok());
  ASSERT_TRUE(manager_->PauseJob(jobs[1].name()).ok());
  auto w = Connect("w1", /*slots=*/2);
  EXPECT_EQ(Get(first->id()).state(), lora::v1::STARTING);
  EXPECT_EQ(Get(jobs[2].id()).state(), lora::v1::STARTING);  // 0 cancelled, 1 paused
  EXPECT_EQ(Get(jobs[3].id()).state(), lora::v1::QUEUED);
  // A finished job frees its slot for the next in line, found through the index.
  Exit("w1", Get(jobs[2].id()), kExitInterrupted);  // requeued: back in the queue, in order
  EXPECT_EQ(Get(jobs[2].id()).state(), lora::v1::STARTING);
  ASSERT_TRUE(manager_->ResumeJob(jobs[1].name()).ok());
  EXPECT_EQ(Get(jobs[1].id()).state(), lora::v1::QUEUED);
  Restart();  // the index is rebuilt from the store
  w = Connect("w1", 3);
  EXPECT_EQ(Get(jobs[1].id()).state(), lora::v1::STARTING);
}

TEST(DataDirLockTest, ASecondHolderIsRefusedWithTheFirstOnesPid) {
  const std::string dir =
      (fs::temp_directory_path() / ("lock-" + std::to_string(::getpid()))).string();
  fs::create_directories(dir);
  auto first = DataDirLock::Acquire(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = DataDirLock::Acquire(dir);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("pid " + std::to_string(::getpid())));
  first->reset();
  EXPECT_TRUE(DataDirLock::Acquire(dir).ok());
  fs::remove_all(dir);
}

// Two replicas over one store (PostgreSQL in production; the same SQLite file here): the
// follower serves reads, follows a watched job from the store, refuses writes and workers, and
// on election recovers the running job as after a restart.
TEST_F(JobManagerTest, AFollowerServesReadsAndFollowsWatchersUntilElectedThenTakesTheJobsOver) {
  auto w = Connect("w1");
  lora::v1::Job job = Create();
  Event("w1", job, 1, Step(1));

  JobManager::Options fo;
  fo.follower = true;
  fo.reattach_grace = absl::Seconds(60);
  auto follower = JobManager::Create(fo, store_.get(), artifacts_.get());
  ASSERT_TRUE(follower.ok()) << follower.status();
  JobManager& f = **follower;
  f.SetLeaderHint("lorad-0:50051");
  // Reads.
  auto read = f.GetJob(job.name());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->state(), lora::v1::RUNNING);
  // Writes and workers: UNAVAILABLE, naming the leader.
  bool created = false;
  auto refused = f.CreateJob(Spec(), "", &created);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("lorad-0:50051"));
  // Typed, so that a client may send even a call that is not idempotent elsewhere.
  EXPECT_EQ(NotLeader(refused.status()), std::optional<std::string>("lorad-0:50051"));
  EXPECT_EQ(NotLeader(absl::UnavailableError("lorad-0:50051 went away")), std::nullopt);
  EXPECT_EQ(f.CancelJob(job.name()).status().code(), absl::StatusCode::kUnavailable);
  wv1::Register reg;
  reg.set_worker_id("w2");
  reg.mutable_capabilities()->set_device("cpu");
  reg.mutable_capabilities()->set_slots(1);
  EXPECT_EQ(f.WorkerConnected(reg, std::make_shared<FakeChannel>()).status().code(),
            absl::StatusCode::kUnavailable);
  // A watcher on the follower gets what the leader stores, in order, without a gap.
  RecordingSubscriber watcher;
  int64_t last = 0;
  bool terminal = true;
  ASSERT_TRUE(f.Subscribe(job.name(), &watcher, &last, &terminal).ok());
  EXPECT_FALSE(terminal);
  EXPECT_EQ(last, Stored(job.id()).last_sequence());
  Event("w1", job, 2, Step(2));
  Event("w1", job, 3, Step(3));
  f.Tick();
  ASSERT_FALSE(watcher.events.empty());
  int64_t expected = last;
  for (const auto& e : watcher.events) EXPECT_EQ(e.sequence(), ++expected);
  EXPECT_EQ(expected, Stored(job.id()).last_sequence());
  EXPECT_FALSE(watcher.closed);

  // The leader dies; the follower is elected: its watchers end resumably, the running job is
  // recovered and waits for its worker, writes are accepted.
  manager_.reset();
  ASSERT_TRUE(f.Lead().ok());
  EXPECT_TRUE(watcher.closed);
  EXPECT_TRUE(f.leading());
  manager_ = std::move(*follower);  // the fixture's helpers now drive the new leader
  wv1::Register back;
  back.set_worker_id("w1");
  back.mutable_capabilities()->set_device("cpu");
  back.mutable_capabilities()->set_slots(1);
  *back.add_running()->mutable_ref() = Ref(job);
  ASSERT_TRUE(manager_->WorkerConnected(back, std::make_shared<FakeChannel>()).ok());
  lora::engine::v1::EngineEvent finished;
  finished.mutable_finished();
  Event("w1", job, 4, finished);
  Exit("w1", job, 0);
  EXPECT_EQ(Stored(job.id()).state(), lora::v1::SUCCEEDED) << Stored(job.id()).error().message();
  EXPECT_EQ(Stored(job.id()).attempt(), 1);  // taken over, not retried
  EXPECT_TRUE(manager_->CreateJob(Spec(), "", &created).ok());
}

TEST_F(JobManagerTest, AFollowersWatcherEndsWhenTheLeaderFinishesTheJob) {
  JobManager::Options fo;
  fo.follower = true;
  auto follower = JobManager::Create(fo, store_.get(), artifacts_.get());
  ASSERT_TRUE(follower.ok()) << follower.status();
  lora::v1::Job job = Create();
  RecordingSubscriber watcher;
  int64_t last = 0;
  bool terminal = true;
  ASSERT_TRUE((*follower)->Subscribe(job.name(), &watcher, &last, &terminal).ok());
  ASSERT_TRUE(manager_->CancelJob(job.name()).ok());
  (*follower)->Tick();
  ASSERT_FALSE(watcher.events.empty());
  EXPECT_EQ(watcher.events.back().state_change().to(), lora::v1::CANCELLED);
  EXPECT_TRUE(watcher.closed);
}

}  // namespace
}  // namespace lora::server
