// The SQLite store's group commit, on real database files: what a batch of concurrent writers
// gets when all succeed, when one fails, and when the disk fills under them.
#include "server/store/sqlite_job_store.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"

namespace lora::server {
namespace {

lora::v1::Job NewJob(const std::string& id, const std::string& request_id = "") {
  lora::v1::Job job;
  job.set_id(id);
  job.set_name("jobs/" + id);
  job.set_request_id(request_id);
  job.set_state(lora::v1::QUEUED);
  job.set_last_sequence(1);
  job.mutable_spec()->mutable_job()->set_name(std::string(2000, 'n'));  // a few rows per page
  *job.mutable_create_time() = FromMicros(NowMicros());
  return job;
}

lora::v1::JobEvent FirstEvent() {
  lora::v1::JobEvent e;
  e.set_sequence(1);
  e.mutable_state_change()->set_to(lora::v1::QUEUED);
  return e;
}

// Inserts `jobs` from one thread each, all in one batch; returns each call's status.
std::vector<absl::Status> InsertTogether(SqliteJobStore& store,
                                         const std::vector<lora::v1::Job>& jobs) {
  store.GatherBatchesForTesting(static_cast<int>(jobs.size()));
  std::vector<absl::Status> results(jobs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = store.InsertJob(jobs[i], FirstEvent(), nullptr); });
  }
  for (auto& t : threads) t.join();
  store.GatherBatchesForTesting(1);
  return results;
}

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = SqliteJobStore::Open({dir_.Join("lorad.db")});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  testing::TempDir dir_;
  std::unique_ptr<SqliteJobStore> store_;
};

TEST_F(JobStoreTest, ConcurrentWritesShareOneCommitAndAFailedOneUndoesOnlyItself) {
  ASSERT_TRUE(store_->InsertJob(NewJob("first", "req-1"), FirstEvent(), nullptr).ok());
  const auto before = store_->GroupCommitStats();
  std::vector<lora::v1::Job> jobs;
  for (int i = 0; i < 7; ++i) jobs.push_back(NewJob(absl::StrCat("j", i)));
  jobs.push_back(NewJob("retry", "req-1"));  // the request id is taken: ALREADY_EXISTS
  const std::vector<absl::Status> results = InsertTogether(*store_, jobs);

  const auto after = store_->GroupCommitStats();
  EXPECT_EQ(after.first - before.first, 1);  // one transaction, one fsync
  EXPECT_EQ(after.second - before.second, 8);
  for (int i = 0; i < 7; ++i) {
    EXPECT_TRUE(results[static_cast<size_t>(i)].ok()) << results[static_cast<size_t>(i)];
    EXPECT_TRUE(store_->GetJob(absl::StrCat("j", i)).ok()) << i;
  }
  EXPECT_TRUE(absl::IsAlreadyExists(results[7])) << results[7];
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("retry").status()));
  EXPECT_EQ(*store_->CountJobs(), 8);
}

// Whatever a full disk does to a batch (SQLite may undo one statement or the whole
// transaction), a caller told OK finds its job stored and a caller told otherwise does not:
// nobody is acknowledged on the strength of a transaction that was rolled back.
TEST_F(JobStoreTest, AFullDiskUnderABatchNeverAcknowledgesAWriteItLost) {
  ASSERT_TRUE(store_->InsertJob(NewJob("seed"), FirstEvent(), nullptr).ok());
  int failed = 0;
  int stored = 0;
  int round = 0;
  // Tighten the cap until batches fail, then keep going: each round is one batch of 6.
  for (int64_t cap = 40; cap >= 8 && failed == 0; cap -= 4) {
    ASSERT_TRUE(store_->LimitPagesForTesting(cap).ok());
    for (int r = 0; r < 4; ++r, ++round) {
      std::vector<lora::v1::Job> jobs;
      for (int i = 0; i < 6; ++i) jobs.push_back(NewJob(absl::StrCat("r", round, "-", i)));
      const std::vector<absl::Status> results = InsertTogether(*store_, jobs);
      for (size_t i = 0; i < jobs.size(); ++i) {
        const bool found = store_->GetJob(jobs[i].id()).ok();
        EXPECT_EQ(results[i].ok(), found) << jobs[i].id() << ": " << results[i];
        if (results[i].ok()) {
          ++stored;
        } else {
          ++failed;
          EXPECT_EQ(results[i].code(), absl::StatusCode::kResourceExhausted) << results[i];
        }
      }
    }
  }
  EXPECT_GT(failed, 0) << "the cap never filled the database";
  EXPECT_GT(stored, 0);
  EXPECT_EQ(*store_->CountJobs(), stored + 1);
}

}  // namespace
}  // namespace lora::server
