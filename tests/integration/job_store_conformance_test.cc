// JobStore's contract (server/store/job_store.h): the same cases against SqliteJobStore and
// PgJobStore, then what only the replicated store does (fenced writes, two replicas on one
// database, reconnecting after the server restarts).
//
// The PostgreSQL cases share one server per process, started on first use (ctest runs each case
// in a process of its own, so SQLite cases never pay for it), and each gets a fresh database.
// They skip without the PostgreSQL 15 binaries.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/job_store.h"
#include "server/store/postgres/leader_lease.h"
#include "server/store/postgres/pg_connection.h"
#include "server/store/postgres/pg_job_store.h"
#include "server/store/sqlite_job_store.h"
#include "tests/integration/postgres_server.h"
#include "tests/test_util.h"

namespace lora::server {
namespace {

using lora::testing::PostgresServer;
using lora::v1::File;
using lora::v1::Job;
using lora::v1::JobEvent;
using lora::v1::JobState;
using pg::PgJobStore;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// --- the shared server and fresh databases

class SharedPostgres : public ::testing::Environment {
 public:
  // The process's server, started on first use; null (with `*error` set) when it cannot start.
  static PostgresServer* Get(absl::Status* error) {
    static absl::Status start_error;
    if (server_ == nullptr && start_error.ok()) {
      auto started = PostgresServer::Start();
      if (started.ok()) {
        server_ = std::move(*started);
      } else {
        start_error = started.status();
      }
    }
    *error = start_error;
    return server_.get();
  }
  void TearDown() override { server_.reset(); }

 private:
  static inline std::unique_ptr<PostgresServer> server_;
};
[[maybe_unused]] ::testing::Environment* const kSharedPostgres =
    ::testing::AddGlobalTestEnvironment(new SharedPostgres);

// conninfo of a new, empty database on `server`, named `*name`.
absl::StatusOr<std::string> FreshDatabase(PostgresServer& server, std::string* name) {
  static std::atomic<int> next{0};
  *name = absl::StrCat("t", ++next);
  auto conn = pg::PgConnection::Connect(server.conninfo(), absl::Seconds(10));
  if (!conn.ok()) return conn.status();
  auto created = (*conn)->Exec(absl::StrCat("CREATE DATABASE ", *name), {}, "create a database");
  if (!created.ok()) return created.status();
  return absl::StrReplaceAll(server.conninfo(), {{"dbname=postgres", "dbname=" + *name}});
}

absl::StatusOr<std::unique_ptr<PgJobStore>> OpenPg(const std::string& conninfo,
                                                   std::optional<std::string> fence = {},
                                                   int connections = 4) {
  PgJobStore::Options options;
  options.conninfo = conninfo;
  options.connections = connections;
  options.fence_lease = std::move(fence);
  options.replica_name = "lorad-2";
  return PgJobStore::Open(options);
}

// --- records

constexpr int64_t kT0 = 1700000000000000;  // a creation time, in microseconds

Job NewJob(const std::string& id, int64_t create_us = kT0, const std::string& tenant = "",
           const std::string& request_id = "") {
  Job job;
  job.set_id(id);
  job.set_name("jobs/" + id);
  job.set_tenant(tenant);
  job.set_request_id(request_id);
  job.set_kind(lora::v1::JOB_KIND_TRAIN);
  job.set_state(lora::v1::QUEUED);
  job.set_last_sequence(1);
  job.mutable_spec()->mutable_job()->set_priority(3);
  *job.mutable_create_time() = FromMicros(create_us);
  return job;
}

JobEvent Event(int64_t sequence, JobState to = lora::v1::QUEUED) {
  JobEvent e;
  e.set_sequence(sequence);
  e.mutable_state_change()->set_to(to);
  return e;
}

// `job` moved to `state` with events up to `last_sequence`; ended at `end_us` when given.
Job Moved(Job job, JobState state, int64_t last_sequence, std::optional<int64_t> end_us = {}) {
  job.set_state(state);
  job.set_last_sequence(last_sequence);
  if (end_us.has_value()) *job.mutable_end_time() = FromMicros(*end_us);
  return job;
}

std::vector<std::string> Ids(const std::vector<Job>& jobs) {
  std::vector<std::string> ids;
  for (const Job& j : jobs) ids.push_back(j.id());
  return ids;
}

std::vector<int64_t> Sequences(const std::vector<JobEvent>& events) {
  std::vector<int64_t> out;
  for (const JobEvent& e : events) out.push_back(e.sequence());
  return out;
}

lora::v1::ArtifactFile Artifact(const std::string& path, int64_t size = 1) {
  lora::v1::ArtifactFile f;
  f.set_path(path);
  f.set_size(size);
  f.set_sha256(std::string(64, 'a'));
  return f;
}

lora::v1::Checkpoint Checkpoint(int64_t step) {
  lora::v1::Checkpoint c;
  c.set_step(step);
  c.set_path(absl::StrCat("checkpoints/step-", step));
  return c;
}

File NewFile(const std::string& id, const std::string& tenant, int64_t create_us,
             const std::vector<std::pair<std::string, int64_t>>& blobs) {
  File f;
  f.set_id(id);
  f.set_name("files/" + id);
  f.set_tenant(tenant);
  *f.mutable_create_time() = FromMicros(create_us);
  for (const auto& [sha, size] : blobs) {
    auto* e = f.add_entries();
    e->set_path(sha + ".jsonl");
    e->set_sha256(sha);
    e->set_size(size);
  }
  return f;
}

#define ASSERT_OK(expr)                                          \
  do {                                                           \
    const absl::Status assert_ok_ = (expr);                      \
    ASSERT_TRUE(assert_ok_.ok()) << #expr << ": " << assert_ok_; \
  } while (false)

// --- the same cases against both stores

enum class Backend { kSqlite, kPostgres };
void PrintTo(Backend b, std::ostream* os) {
  *os << (b == Backend::kSqlite ? "Sqlite" : "Postgres");
}

class JobStoreConformanceTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::kSqlite) {
      auto store = SqliteJobStore::Open({dir_.Join("lorad.db")});
      ASSERT_TRUE(store.ok()) << store.status();
      store_ = std::move(*store);
      return;
    }
    if (!PostgresServer::Available()) GTEST_SKIP() << PostgresServer::MissingReason();
    absl::Status error;
    PostgresServer* server = SharedPostgres::Get(&error);
    ASSERT_NE(server, nullptr) << error;
    std::string name;
    auto conninfo = FreshDatabase(*server, &name);
    ASSERT_TRUE(conninfo.ok()) << conninfo.status();
    auto store = OpenPg(*conninfo);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  void Insert(const Job& job) { ASSERT_OK(store_->InsertJob(job, Event(1), nullptr)); }

  lora::testing::TempDir dir_;
  std::unique_ptr<JobStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Stores, JobStoreConformanceTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const auto& info) {
                           return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
                         });

TEST_P(JobStoreConformanceTest, AnInsertedJobReadsBackWithItsFirstEvent) {
  Job job = NewJob("j1", kT0, "acme", "req-1");
  job.set_display_name(std::string(5000, 'x') + "\x01\x00\xff" + "end");  // any bytes survive
  ASSERT_OK(store_->InsertJob(job, Event(1), nullptr));
  auto got = store_->GetJob("j1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), job.SerializeAsString());
  auto events = store_->ReadEvents("j1", 0, 10);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].SerializeAsString(), Event(1).SerializeAsString());
  EXPECT_EQ(*store_->CountJobs(), 1);
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("j2").status()));
  EXPECT_TRUE(absl::IsNotFound(store_->FindJobByRequestId("acme", "req-2").status()));
}

TEST_P(JobStoreConformanceTest, UpdateAppendsEventsAndReplacesTheRow) {
  const Job job = NewJob("j1");
  Insert(job);
  Job running = Moved(job, lora::v1::RUNNING, 3);
  running.set_attempt(1);
  ASSERT_OK(
      store_->UpdateJob(running, {Event(2, lora::v1::STARTING), Event(3, lora::v1::RUNNING)}));
  EXPECT_EQ(store_->GetJob("j1")->SerializeAsString(), running.SerializeAsString());
  EXPECT_THAT(Sequences(*store_->ReadEvents("j1", 0, 100)), ElementsAre(1, 2, 3));
  auto listed = store_->ListJobs({.states = {lora::v1::RUNNING}});
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_THAT(Ids(*listed), ElementsAre("j1"));

  // An event that is already there fails the whole update: the row stays as it was.
  const absl::Status dup =
      store_->UpdateJob(Moved(job, lora::v1::SUCCEEDED, 4, kT0 + 5), {Event(3), Event(4)});
  EXPECT_FALSE(dup.ok());
  EXPECT_FALSE(absl::IsAlreadyExists(dup)) << dup;  // not a request-id retry
  EXPECT_EQ(store_->GetJob("j1")->state(), lora::v1::RUNNING);
  EXPECT_THAT(Sequences(*store_->ReadEvents("j1", 0, 100)), ElementsAre(1, 2, 3));

  EXPECT_TRUE(absl::IsNotFound(store_->UpdateJob(NewJob("nope"), {Event(2)})));
  EXPECT_TRUE(store_->ReadEvents("nope", 0, 10)->empty());
}

TEST_P(JobStoreConformanceTest, ReadEventsPagesAfterASequence) {
  Insert(NewJob("j1"));
  std::vector<JobEvent> more;
  for (int64_t s = 2; s <= 10; ++s) more.push_back(Event(s));
  ASSERT_OK(store_->UpdateJob(Moved(NewJob("j1"), lora::v1::RUNNING, 10), more));
  EXPECT_THAT(Sequences(*store_->ReadEvents("j1", 3, 4)), ElementsAre(4, 5, 6, 7));
  EXPECT_THAT(Sequences(*store_->ReadEvents("j1", 9, 4)), ElementsAre(10));
  EXPECT_THAT(Sequences(*store_->ReadEvents("j1", 10, 4)), IsEmpty());
  EXPECT_THAT(Sequences(*store_->ReadEvents("j1", 0, 0)), IsEmpty());
  EXPECT_EQ(store_->ReadEvents("j1", 0, -1)->size(), 10u);  // negative: no limit
}

TEST_P(JobStoreConformanceTest, ARetriedRequestIdReturnsTheFirstJobAndIsPerTenant) {
  Insert(NewJob("first", kT0, "acme", "req-1"));
  Job existing;
  const absl::Status retried =
      store_->InsertJob(NewJob("second", kT0 + 1, "acme", "req-1"), Event(1), &existing);
  EXPECT_TRUE(absl::IsAlreadyExists(retried)) << retried;
  EXPECT_THAT(std::string(retried.message()), HasSubstr("jobs/first"));
  EXPECT_EQ(existing.id(), "first");
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("second").status()));
  EXPECT_TRUE(store_->ReadEvents("second", 0, 10)->empty());

  // Another tenant's same request id is another request.
  Insert(NewJob("other", kT0 + 2, "globex", "req-1"));
  EXPECT_EQ(store_->FindJobByRequestId("acme", "req-1")->id(), "first");
  EXPECT_EQ(store_->FindJobByRequestId("globex", "req-1")->id(), "other");
  EXPECT_TRUE(absl::IsNotFound(store_->FindJobByRequestId("initech", "req-1").status()));
  // Without a request id, nothing is a retry.
  Insert(NewJob("a", kT0 + 3, "acme"));
  Insert(NewJob("b", kT0 + 4, "acme"));
  EXPECT_EQ(*store_->CountJobs(), 4);
  // A duplicate job id is a fault, not a retry.
  const absl::Status same_id = store_->InsertJob(NewJob("a", kT0 + 5, "acme"), Event(1), nullptr);
  EXPECT_FALSE(same_id.ok());
  EXPECT_FALSE(absl::IsAlreadyExists(same_id)) << same_id;
}

TEST_P(JobStoreConformanceTest, ListJobsPagesNewestFirstWithAKeysetCursorAndFilters) {
  // Two pairs share a creation time: the id breaks the tie.
  struct Row {
    const char* id;
    int64_t create_us;
    const char* tenant;
    JobState state;
    lora::v1::JobKind kind;
  };
  const Row rows[] = {
      {"a", kT0 + 1, "acme", lora::v1::QUEUED, lora::v1::JOB_KIND_TRAIN},
      {"b", kT0 + 2, "globex", lora::v1::RUNNING, lora::v1::JOB_KIND_MERGE},
      {"c", kT0 + 2, "acme", lora::v1::SUCCEEDED, lora::v1::JOB_KIND_TRAIN},
      {"d", kT0 + 3, "acme", lora::v1::RUNNING, lora::v1::JOB_KIND_CONVERT},
      {"e", kT0 + 4, "globex", lora::v1::QUEUED, lora::v1::JOB_KIND_TRAIN},
      {"f", kT0 + 4, "acme", lora::v1::FAILED, lora::v1::JOB_KIND_TRAIN},
      {"g", kT0 + 5, "acme", lora::v1::RUNNING, lora::v1::JOB_KIND_TRAIN},
  };
  for (const Row& r : rows) {
    Job job = NewJob(r.id, r.create_us, r.tenant);
    job.set_kind(r.kind);
    job.set_state(r.state);
    Insert(job);
  }
  // Pages of three, each after the previous page's last job.
  auto all_pages = [&](ListJobsQuery q) {
    std::vector<std::string> ids;
    q.limit = 3;
    for (int page = 0; page < 10; ++page) {
      auto jobs = store_->ListJobs(q);
      EXPECT_TRUE(jobs.ok()) << jobs.status();
      if (!jobs.ok() || jobs->empty()) break;
      for (const Job& j : *jobs) ids.push_back(j.id());
      q.before = std::make_pair(ToMicros(jobs->back().create_time()), jobs->back().id());
    }
    return ids;
  };
  EXPECT_THAT(all_pages({}), ElementsAre("g", "f", "e", "d", "c", "b", "a"));
  EXPECT_THAT(all_pages({.ascending = true}), ElementsAre("a", "b", "c", "d", "e", "f", "g"));
  EXPECT_THAT(all_pages({.tenant = "acme"}), ElementsAre("g", "f", "d", "c", "a"));
  EXPECT_THAT(all_pages({.tenant = "nobody"}), IsEmpty());
  EXPECT_THAT(all_pages({.states = {lora::v1::RUNNING, lora::v1::QUEUED}}),
              ElementsAre("g", "e", "d", "b", "a"));
  EXPECT_THAT(all_pages({.kinds = {lora::v1::JOB_KIND_MERGE, lora::v1::JOB_KIND_CONVERT}}),
              ElementsAre("d", "b"));
  EXPECT_THAT(all_pages({.states = {lora::v1::RUNNING},
                         .kinds = {lora::v1::JOB_KIND_TRAIN},
                         .tenant = "acme",
                         .ascending = true}),
              ElementsAre("g"));
  // A cursor in the middle of a tie.
  auto after_e = store_->ListJobs({.before = std::make_pair(kT0 + 4, std::string("e"))});
  EXPECT_THAT(Ids(*after_e), ElementsAre("d", "c", "b", "a"));
  auto before_c = store_->ListJobs(
      {.before = std::make_pair(kT0 + 2, std::string("c")), .ascending = true, .limit = 2});
  EXPECT_THAT(Ids(*before_c), ElementsAre("d", "e"));
}

TEST_P(JobStoreConformanceTest, ListActiveJobsIsOldestFirstAndSkipsEndedJobs) {
  Insert(NewJob("late", kT0 + 30));
  Insert(NewJob("early", kT0 + 10));
  Insert(NewJob("done", kT0 + 5));
  Insert(NewJob("failed", kT0 + 6));
  Insert(NewJob("cancelled", kT0 + 7));
  Insert(NewJob("running", kT0 + 20));
  ASSERT_OK(store_->UpdateJob(Moved(NewJob("done", kT0 + 5), lora::v1::SUCCEEDED, 2, kT0 + 50),
                              {Event(2)}));
  ASSERT_OK(store_->UpdateJob(Moved(NewJob("failed", kT0 + 6), lora::v1::FAILED, 2, kT0 + 50),
                              {Event(2)}));
  ASSERT_OK(store_->UpdateJob(Moved(NewJob("cancelled", kT0 + 7), lora::v1::CANCELLED, 2, kT0 + 50),
                              {Event(2)}));
  ASSERT_OK(
      store_->UpdateJob(Moved(NewJob("running", kT0 + 20), lora::v1::RUNNING, 2), {Event(2)}));
  auto active = store_->ListActiveJobs();
  ASSERT_TRUE(active.ok()) << active.status();
  EXPECT_THAT(Ids(*active), ElementsAre("early", "running", "late"));
}

TEST_P(JobStoreConformanceTest,
       DeleteCheckpointsBeforeAlsoRemovesOrphanCheckpointFilesButKeepsFinalOutputs) {
  Insert(NewJob("j1"));
  Insert(NewJob("j2"));
  for (int64_t step : {10, 20, 30}) ASSERT_OK(store_->PutCheckpoint("j1", Checkpoint(step)));
  lora::v1::Checkpoint replaced = Checkpoint(30);
  replaced.set_bytes(123);
  ASSERT_OK(store_->PutCheckpoint("j1", replaced));  // the same step again replaces it
  ASSERT_OK(store_->PutArtifact("j1", Artifact("checkpoints/step-10/b.safetensors"), 10, 1));
  ASSERT_OK(store_->PutArtifact("j1", Artifact("checkpoints/step-10/a.json"), 10, 1));
  ASSERT_OK(store_->PutArtifact("j1", Artifact("checkpoints/step-15/a.json"), 15, 1));  // orphan
  ASSERT_OK(store_->PutArtifact("j1", Artifact("checkpoints/step-30/a.json"), 30, 1));
  ASSERT_OK(store_->PutArtifact("j1", Artifact("adapter/adapter.safetensors", 7), 0, 1));
  ASSERT_OK(store_->PutArtifact("j1", Artifact("adapter/adapter.safetensors", 8), 0, 2));
  ASSERT_OK(store_->PutArtifact("j2", Artifact("checkpoints/step-10/a.json"), 10, 1));

  auto deleted = store_->DeleteCheckpointsBefore("j1", 30);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_THAT(*deleted,
              ElementsAre("checkpoints/step-10/a.json", "checkpoints/step-10/b.safetensors",
                          "checkpoints/step-15/a.json"));
  auto kept = store_->ListCheckpoints("j1");
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_EQ(kept->size(), 1u);
  EXPECT_EQ((*kept)[0].bytes(), 123);
  EXPECT_TRUE(absl::IsNotFound(store_->GetArtifact("j1", "checkpoints/step-10/a.json").status()));
  EXPECT_TRUE(store_->GetArtifact("j1", "checkpoints/step-30/a.json").ok());
  auto output = store_->GetArtifact("j1", "adapter/adapter.safetensors");
  ASSERT_TRUE(output.ok()) << output.status();
  EXPECT_EQ(output->size(), 8);  // the later record replaced the earlier
  EXPECT_EQ(output->sha256(), std::string(64, 'a'));
  EXPECT_TRUE(store_->GetArtifact("j2", "checkpoints/step-10/a.json").ok());  // another job's
  EXPECT_THAT(*store_->DeleteCheckpointsBefore("j1", 30), IsEmpty());
}

TEST_P(JobStoreConformanceTest,
       DeleteJobRefusesAJobThatHasNotEndedAndRemovesEverythingOfOneThatHas) {
  Insert(NewJob("j1"));
  Insert(NewJob("keep"));
  ASSERT_OK(store_->UpdateJob(Moved(NewJob("j1"), lora::v1::RUNNING, 2), {Event(2)}));
  ASSERT_OK(store_->PutCheckpoint("j1", Checkpoint(10)));
  ASSERT_OK(store_->PutArtifact("j1", Artifact("adapter/a.safetensors"), 0, 1));
  ASSERT_OK(store_->PutCheckpoint("keep", Checkpoint(10)));

  const absl::Status running = store_->DeleteJob("j1");
  EXPECT_TRUE(absl::IsFailedPrecondition(running)) << running;
  EXPECT_TRUE(store_->GetJob("j1").ok());
  EXPECT_TRUE(absl::IsNotFound(store_->DeleteJob("nope")));

  ASSERT_OK(store_->UpdateJob(Moved(NewJob("j1"), lora::v1::SUCCEEDED, 3, kT0 + 9), {Event(3)}));
  ASSERT_OK(store_->DeleteJob("j1"));
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("j1").status()));
  EXPECT_TRUE(store_->ReadEvents("j1", 0, 10)->empty());
  EXPECT_TRUE(store_->ListCheckpoints("j1")->empty());
  EXPECT_TRUE(absl::IsNotFound(store_->GetArtifact("j1", "adapter/a.safetensors").status()));
  EXPECT_EQ(*store_->CountJobs(), 1);
  EXPECT_EQ(store_->ListCheckpoints("keep")->size(), 1u);
  EXPECT_EQ(store_->ReadEvents("keep", 0, 10)->size(), 1u);
  EXPECT_TRUE(absl::IsNotFound(store_->DeleteJob("j1")));
}

TEST_P(JobStoreConformanceTest, JobsEndedBeforeIsLongestEndedFirst) {
  const std::pair<const char*, int64_t> ended[] = {
      {"c", kT0 + 300}, {"a", kT0 + 100}, {"b", kT0 + 200}, {"late", kT0 + 500}};
  for (const auto& [id, end_us] : ended) {
    Insert(NewJob(id));
    ASSERT_OK(store_->UpdateJob(Moved(NewJob(id), lora::v1::FAILED, 2, end_us), {Event(2)}));
  }
  Insert(NewJob("running"));
  ASSERT_OK(store_->UpdateJob(Moved(NewJob("running"), lora::v1::RUNNING, 2), {Event(2)}));
  EXPECT_THAT(*store_->JobsEndedBefore(kT0 + 400, 10), ElementsAre("a", "b", "c"));
  EXPECT_THAT(*store_->JobsEndedBefore(kT0 + 400, 2), ElementsAre("a", "b"));
  EXPECT_THAT(*store_->JobsEndedBefore(kT0 + 100, 10), IsEmpty());  // strictly before
  EXPECT_THAT(*store_->JobsEndedBefore(kT0 + 1000, 10), ElementsAre("a", "b", "c", "late"));
}

TEST_P(JobStoreConformanceTest, FileRecords) {
  const std::string A(64, 'a'), B(64, 'b'), C(64, 'c'), D(64, 'd');
  ASSERT_OK(store_->PutTenantBlob({"acme", A, 10}, 1000));
  ASSERT_OK(store_->PutTenantBlob({"acme", B, 20}, 1000));
  ASSERT_OK(store_->PutTenantBlob({"acme", C, 30}, 1000));
  ASSERT_OK(store_->PutTenantBlob({"acme", C, 30}, 1000));  // idempotent
  ASSERT_OK(store_->PutTenantBlob({"globex", A, 10}, 1000));
  const File f1 = NewFile("f1", "acme", kT0 + 1, {{A, 10}, {B, 20}});
  const File f2 = NewFile("f2", "acme", kT0 + 2, {{B, 20}, {C, 30}});
  const File g1 = NewFile("g1", "globex", kT0 + 3, {{A, 10}});
  for (const File& f : {f1, f2, g1}) ASSERT_OK(store_->InsertFile(f));
  ASSERT_OK(store_->InsertFile(f1));  // the same file again: no change

  auto got = store_->GetFile("f1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), f1.SerializeAsString());
  EXPECT_TRUE(absl::IsNotFound(store_->GetFile("nope").status()));
  auto page1 = store_->ListFiles({.tenant = "acme", .limit = 1});
  ASSERT_TRUE(page1.ok()) << page1.status();
  ASSERT_EQ(page1->size(), 1u);
  EXPECT_EQ((*page1)[0].id(), "f2");
  auto page2 = store_->ListFiles(
      {.tenant = "acme", .before = std::make_pair(kT0 + 2, std::string("f2")), .limit = 5});
  ASSERT_EQ(page2->size(), 1u);
  EXPECT_EQ((*page2)[0].id(), "f1");
  EXPECT_EQ(store_->ListFiles({})->size(), 3u);

  EXPECT_EQ(*store_->FindTenantBlob("acme", A), std::optional<int64_t>(10));
  EXPECT_EQ(*store_->FindTenantBlob("acme", D), std::nullopt);
  EXPECT_EQ(*store_->TenantBlobBytes("acme"), 60);
  EXPECT_EQ(*store_->TenantBlobBytes("nobody"), 0);
  EXPECT_TRUE(*store_->BlobHeld(A));
  EXPECT_FALSE(*store_->BlobHeld(D));

  // f2 still names B: only A goes from acme; globex still holds A.
  auto released = store_->DeleteFile("f1");
  ASSERT_TRUE(released.ok()) << released.status();
  ASSERT_EQ(released->size(), 1u);
  EXPECT_EQ((*released)[0].tenant, "acme");
  EXPECT_EQ((*released)[0].sha256, A);
  EXPECT_EQ((*released)[0].size, 10);
  EXPECT_EQ(*store_->FindTenantBlob("acme", A), std::nullopt);
  EXPECT_TRUE(*store_->BlobHeld(A));
  EXPECT_EQ(*store_->TenantBlobBytes("acme"), 50);
  EXPECT_TRUE(absl::IsNotFound(store_->DeleteFile("f1").status()));

  // Blobs no file names, recorded before the cutoff, go; named or newer ones stay.
  ASSERT_OK(store_->PutTenantBlob({"acme", D, 40}, 5000));
  ASSERT_OK(store_->PutTenantBlob({"globex", B, 20}, 1000));
  ASSERT_OK(store_->PutTenantBlob({"acme", A, 10}, 1000));
  auto removed = store_->RemoveUnnamedTenantBlobs(2000);
  ASSERT_TRUE(removed.ok()) << removed.status();
  ASSERT_EQ(removed->size(), 2u);
  EXPECT_EQ((*removed)[0].tenant, "acme");
  EXPECT_EQ((*removed)[0].sha256, A);
  EXPECT_EQ((*removed)[1].tenant, "globex");
  EXPECT_EQ((*removed)[1].sha256, B);
  EXPECT_EQ((*removed)[1].size, 20);
  EXPECT_EQ(*store_->FindTenantBlob("acme", D), std::optional<int64_t>(40));
  EXPECT_EQ(*store_->FindTenantBlob("globex", A), std::optional<int64_t>(10));
  EXPECT_THAT(*store_->RemoveUnnamedTenantBlobs(2000), IsEmpty());

  // The last file naming them releases the rest.
  ASSERT_OK(store_->DeleteFile("f2").status());
  EXPECT_EQ(*store_->TenantBlobBytes("acme"), 40);  // D, unnamed but recent
}

TEST_P(JobStoreConformanceTest, AFailedWriteChangesNothing) {
  Insert(NewJob("j1"));
  ASSERT_OK(store_->PutTenantBlob({"acme", std::string(64, 'a'), 10}, 1000));
  const absl::Status fault = absl::ResourceExhaustedError("the disk is full");
  store_->FailWritesForTesting(fault);
  const Job ended = Moved(NewJob("j1"), lora::v1::SUCCEEDED, 2, kT0 + 1);
  EXPECT_EQ(store_->InsertJob(NewJob("j2"), Event(1), nullptr), fault);
  EXPECT_EQ(store_->UpdateJob(ended, {Event(2)}), fault);
  EXPECT_EQ(store_->PutCheckpoint("j1", Checkpoint(10)), fault);
  EXPECT_EQ(store_->PutArtifact("j1", Artifact("adapter/a"), 0, 1), fault);
  EXPECT_EQ(store_->DeleteCheckpointsBefore("j1", 10).status(), fault);
  EXPECT_EQ(store_->DeleteJob("j1"), fault);
  EXPECT_EQ(store_->InsertFile(NewFile("f1", "acme", kT0, {{std::string(64, 'a'), 10}})), fault);
  EXPECT_EQ(store_->DeleteFile("f1").status(), fault);
  EXPECT_EQ(store_->PutTenantBlob({"acme", std::string(64, 'b'), 10}, 1000), fault);
  EXPECT_EQ(store_->RemoveUnnamedTenantBlobs(5000).status(), fault);

  // Reads still answer, and show nothing of the refused writes.
  EXPECT_EQ(store_->GetJob("j1")->state(), lora::v1::QUEUED);
  EXPECT_EQ(*store_->CountJobs(), 1);
  EXPECT_EQ(store_->ReadEvents("j1", 0, 10)->size(), 1u);
  EXPECT_TRUE(store_->ListCheckpoints("j1")->empty());
  EXPECT_TRUE(absl::IsNotFound(store_->GetFile("f1").status()));
  EXPECT_EQ(*store_->TenantBlobBytes("acme"), 10);

  store_->FailWritesForTesting(absl::OkStatus());
  ASSERT_OK(store_->UpdateJob(ended, {Event(2)}));
  EXPECT_EQ(store_->GetJob("j1")->state(), lora::v1::SUCCEEDED);
}

TEST_P(JobStoreConformanceTest, ConcurrentInsertsFromEightThreadsAllLand) {
  constexpr int kThreads = 8;
  constexpr int kEach = 10;
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kThreads * kEach);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const Job job =
            NewJob(absl::StrCat("t", t, "-", i), kT0 + i, "acme", absl::StrCat("req-", t, "-", i));
        results[t * kEach + i] = store_->InsertJob(job, Event(1), nullptr);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(*store_->CountJobs(), kThreads * kEach);

  // Every thread retries the same request at once: one job, and each loser is handed it.
  for (int round = 0; round < 3; ++round) {
    const std::string request = absl::StrCat("shared-", round);
    std::vector<absl::Status> statuses(kThreads);
    std::vector<Job> existing(kThreads);
    threads.clear();
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        statuses[t] = store_->InsertJob(NewJob(absl::StrCat(request, "-", t), kT0, "acme", request),
                                        Event(1), &existing[t]);
      });
    }
    for (auto& t : threads) t.join();
    auto winner = store_->FindJobByRequestId("acme", request);
    ASSERT_TRUE(winner.ok()) << winner.status();
    int created = 0;
    for (int t = 0; t < kThreads; ++t) {
      if (statuses[t].ok()) {
        ++created;
        EXPECT_EQ(winner->id(), absl::StrCat(request, "-", t));
      } else {
        EXPECT_TRUE(absl::IsAlreadyExists(statuses[t])) << statuses[t];
        EXPECT_EQ(existing[t].id(), winner->id());
      }
    }
    EXPECT_EQ(created, 1);
  }
  EXPECT_EQ(*store_->CountJobs(), kThreads * kEach + 3);
}

// --- PostgreSQL only

class PgJobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!PostgresServer::Available()) GTEST_SKIP() << PostgresServer::MissingReason();
    absl::Status error;
    server_ = SharedPostgres::Get(&error);
    ASSERT_NE(server_, nullptr) << error;
    auto conninfo = FreshDatabase(*server_, &database_);
    ASSERT_TRUE(conninfo.ok()) << conninfo.status();
    conninfo_ = *conninfo;
  }

  std::unique_ptr<PgJobStore> Open(std::optional<std::string> fence = {}, int connections = 4) {
    auto store = OpenPg(conninfo_, std::move(fence), connections);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  std::unique_ptr<pg::LeaderLease> NewLease() {
    auto conn = pg::PgConnection::Connect(conninfo_, absl::Seconds(10));
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return nullptr;
    auto lease = pg::LeaderLease::Create(std::move(*conn));
    EXPECT_TRUE(lease.ok()) << lease.status();
    return lease.ok() ? std::move(*lease) : nullptr;
  }

  PostgresServer* server_ = nullptr;
  std::string database_;
  std::string conninfo_;
};

TEST_F(PgJobStoreTest, AFollowerRefusesWritesWithUnavailableAndServesReads) {
  auto unfenced = Open();
  auto follower = Open("lorad");
  ASSERT_TRUE(unfenced && follower);
  ASSERT_OK(unfenced->InsertJob(NewJob("j1"), Event(1), nullptr));

  const absl::Status refused = follower->InsertJob(NewJob("j2"), Event(1), nullptr);
  EXPECT_TRUE(absl::IsUnavailable(refused)) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr("lorad-2 is a follower"));
  EXPECT_TRUE(absl::IsUnavailable(
      follower->UpdateJob(Moved(NewJob("j1"), lora::v1::RUNNING, 2), {Event(2)})));
  EXPECT_TRUE(absl::IsUnavailable(follower->PutTenantBlob({"acme", "x", 1}, 1)));
  EXPECT_TRUE(absl::IsUnavailable(follower->DeleteFile("f").status()));

  EXPECT_EQ(follower->GetJob("j1")->id(), "j1");
  EXPECT_THAT(Ids(*follower->ListJobs({})), ElementsAre("j1"));
  EXPECT_TRUE(absl::IsNotFound(follower->GetJob("j2").status()));
}

TEST_F(PgJobStoreTest, ADeposedLeadersWriteIsRefusedAndNeverMade) {
  auto store = Open("lorad");
  auto lease_a = NewLease();
  auto lease_b = NewLease();
  ASSERT_TRUE(store && lease_a && lease_b);
  auto first = lease_a->TryAcquire("a", absl::Milliseconds(200));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->held_by_caller);
  store->SetFenceEpoch(first->epoch);
  ASSERT_OK(store->InsertJob(NewJob("j1"), Event(1), nullptr));
  ASSERT_OK(store->UpdateJob(Moved(NewJob("j1"), lora::v1::RUNNING, 2), {Event(2)}));

  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a's term expires
  auto second = lease_b->TryAcquire("b", absl::Seconds(30));
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(second->held_by_caller);
  ASSERT_GT(second->epoch, first->epoch);

  const absl::Status deposed =
      store->UpdateJob(Moved(NewJob("j1"), lora::v1::SUCCEEDED, 3, kT0 + 1), {Event(3)});
  EXPECT_TRUE(absl::IsFailedPrecondition(deposed)) << deposed;
  const absl::Status inserted = store->InsertJob(NewJob("j2"), Event(1), nullptr);
  EXPECT_TRUE(absl::IsFailedPrecondition(inserted)) << inserted;
  EXPECT_EQ(store->GetJob("j1")->state(), lora::v1::RUNNING);
  EXPECT_THAT(Sequences(*store->ReadEvents("j1", 0, 10)), ElementsAre(1, 2));
  EXPECT_TRUE(absl::IsNotFound(store->GetJob("j2").status()));

  // Under the new term's epoch the same write goes through.
  store->SetFenceEpoch(second->epoch);
  ASSERT_OK(store->UpdateJob(Moved(NewJob("j1"), lora::v1::SUCCEEDED, 3, kT0 + 1), {Event(3)}));
  EXPECT_EQ(store->GetJob("j1")->state(), lora::v1::SUCCEEDED);
}

TEST_F(PgJobStoreTest, TwoStoresOnOneDatabaseSeeEachOthersWrites) {
  // Two replicas starting together both create the schema.
  absl::StatusOr<std::unique_ptr<PgJobStore>> opened[2];
  std::thread other([&] { opened[1] = OpenPg(conninfo_); });
  opened[0] = OpenPg(conninfo_);
  other.join();
  ASSERT_TRUE(opened[0].ok()) << opened[0].status();
  ASSERT_TRUE(opened[1].ok()) << opened[1].status();
  PgJobStore& a = **opened[0];
  PgJobStore& b = **opened[1];

  ASSERT_OK(a.InsertJob(NewJob("j1", kT0, "acme", "req-1"), Event(1), nullptr));
  EXPECT_EQ(b.GetJob("j1")->id(), "j1");
  ASSERT_OK(
      b.UpdateJob(Moved(NewJob("j1", kT0, "acme", "req-1"), lora::v1::RUNNING, 2), {Event(2)}));
  EXPECT_EQ(a.GetJob("j1")->state(), lora::v1::RUNNING);
  EXPECT_THAT(Sequences(*a.ReadEvents("j1", 0, 10)), ElementsAre(1, 2));
  Job existing;
  EXPECT_TRUE(
      absl::IsAlreadyExists(b.InsertJob(NewJob("j2", kT0, "acme", "req-1"), Event(1), &existing)));
  EXPECT_EQ(existing.id(), "j1");

  // The same request through both replicas at once: one job.
  for (int round = 0; round < 5; ++round) {
    const std::string request = absl::StrCat("race-", round);
    absl::Status via_b;
    Job existing_b;
    Job existing_a;
    std::thread t([&] {
      via_b = b.InsertJob(NewJob(request + "-b", kT0, "acme", request), Event(1), &existing_b);
    });
    const absl::Status via_a =
        a.InsertJob(NewJob(request + "-a", kT0, "acme", request), Event(1), &existing_a);
    t.join();
    EXPECT_NE(via_a.ok(), via_b.ok()) << via_a << " / " << via_b;
    const std::string winner = a.FindJobByRequestId("acme", request)->id();
    if (!via_a.ok()) {
      EXPECT_EQ(existing_a.id(), winner) << via_a;
    }
    if (!via_b.ok()) {
      EXPECT_EQ(existing_b.id(), winner) << via_b;
    }
  }
  EXPECT_EQ(*b.CountJobs(), 6);
}

TEST_F(PgJobStoreTest, OpenRefusesADatabaseWhereCommitsAreNotDurable) {
  auto conn = pg::PgConnection::Connect(conninfo_, absl::Seconds(10));
  ASSERT_TRUE(conn.ok()) << conn.status();
  ASSERT_OK((*conn)
                ->Exec(absl::StrCat("ALTER DATABASE ", database_, " SET synchronous_commit = off"))
                .status());
  auto store = OpenPg(conninfo_);
  EXPECT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("synchronous_commit"));
}

// Its own server: a restart must not disturb the other cases' databases.
TEST(PgJobStoreRestartTest, TheStoreReconnectsAfterTheServerRestarts) {
  if (!PostgresServer::Available()) GTEST_SKIP() << PostgresServer::MissingReason();
  auto server = PostgresServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto opened = OpenPg((*server)->conninfo(), std::nullopt, /*connections=*/2);
  ASSERT_TRUE(opened.ok()) << opened.status();
  JobStore& store = **opened;
  ASSERT_OK(store.InsertJob(NewJob("j1"), Event(1), nullptr));

  // A call may fail UNAVAILABLE once on a session the restart dropped; a later one succeeds.
  int failures = 0;
  auto eventually = [&](const std::function<absl::Status()>& call) {
    absl::Status s;
    for (int attempt = 0; attempt < 3; ++attempt) {
      s = call();
      if (s.ok()) return s;
      EXPECT_TRUE(absl::IsUnavailable(s)) << s;
      ++failures;
    }
    return s;
  };
  // Both sessions were idle across the restart: the first call after it is a write.
  ASSERT_OK((*server)->Restart());
  ASSERT_OK(eventually(
      [&] { return store.UpdateJob(Moved(NewJob("j1"), lora::v1::RUNNING, 2), {Event(2)}); }));
  ASSERT_OK(eventually([&] { return store.GetJob("j1").status(); }));
  // Every session of the pool serves again.
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back(
        [&, t] { results[t] = eventually([&] { return store.CountJobs().status(); }); });
  }
  for (auto& t : threads) t.join();
  for (const absl::Status& r : results) EXPECT_TRUE(r.ok()) << r;
  // Sessions found dropped before anything was sent are reopened and the call goes on.
  EXPECT_EQ(failures, 0);

  // While the server is down, calls fail UNAVAILABLE at once rather than hang.
  ASSERT_OK((*server)->Stop());
  const absl::Status down = store.GetJob("j1").status();
  EXPECT_TRUE(absl::IsUnavailable(down)) << down;
  const absl::Status write_down = store.InsertJob(NewJob("j2"), Event(1), nullptr);
  EXPECT_TRUE(absl::IsUnavailable(write_down)) << write_down;
  ASSERT_OK((*server)->Restart());
  ASSERT_OK(eventually([&] { return store.InsertJob(NewJob("j2"), Event(1), nullptr); }));
  EXPECT_EQ(*store.CountJobs(), 2);
  EXPECT_EQ(store.GetJob("j1")->state(), lora::v1::RUNNING);
}

}  // namespace
}  // namespace lora::server
