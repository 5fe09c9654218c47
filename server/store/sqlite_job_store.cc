#include "server/store/sqlite_job_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "server/store/sqlite_util.h"

namespace lora::server {
namespace {

using namespace store_internal;  // NOLINT: the store's own helpers
using lora::v1::Job;
using lora::v1::JobEvent;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  request_id TEXT,
  state INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  create_time_us INTEGER NOT NULL,
  proto BLOB NOT NULL,
  tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(create_time_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
  job_id TEXT NOT NULL,
  sequence INTEGER NOT NULL,
  proto BLOB NOT NULL,
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
  job_id TEXT NOT NULL,
  step INTEGER NOT NULL,
  proto BLOB NOT NULL,
  PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS artifacts (
  job_id TEXT NOT NULL,
  path TEXT NOT NULL,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  step INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  PRIMARY KEY (job_id, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  create_time_us INTEGER NOT NULL,
  proto BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_tenant_created ON files(tenant, create_time_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS files_created ON files(create_time_us DESC, id DESC);
CREATE TABLE IF NOT EXISTS file_blobs (
  file_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  PRIMARY KEY (file_id, sha256)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS file_blobs_tenant_sha ON file_blobs(tenant, sha256);
CREATE TABLE IF NOT EXISTS tenant_blobs (
  tenant TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  create_time_us INTEGER NOT NULL,
  PRIMARY KEY (tenant, sha256)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tenant_blobs_sha ON tenant_blobs(sha256);
)sql";

// After kSchema, on databases of every age: stores made before tenants get the column (their
// jobs belong to tenant "", which only admins see), and request ids become unique per tenant
// (one tenant's retry must never return another tenant's job).
constexpr const char* kTenantIndexes = R"sql(
DROP INDEX IF EXISTS jobs_request_id;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_tenant_request_id ON jobs(tenant, request_id)
  WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs(tenant, create_time_us DESC, id DESC);
)sql";

absl::Status InsertEvent(StatementCache& sql, const std::string& job_id, const JobEvent& e) {
  sqlite3* db = sql.db();
  Statement s(sql, "INSERT INTO events (job_id, sequence, proto) VALUES (?, ?, ?)");
  if (!s.ok()) return SqlError(db, "prepare event insert");
  s.Bind(1, job_id).Bind(2, e.sequence()).BindBlob(3, e.SerializeAsString());
  if (s.Step() != SQLITE_DONE) return SqlError(db, "insert event");
  return absl::OkStatus();
}

// A job's rows, written inside a group commit's transaction (SqliteJobStore::GroupWrite).
absl::Status InsertJobRows(StatementCache& sql, const Job& job, const JobEvent& first_event,
                           Job* existing) {
  sqlite3* db = sql.db();
  if (!job.request_id().empty()) {
    Statement find(sql, "SELECT proto FROM jobs WHERE tenant = ? AND request_id = ?");
    find.Bind(1, job.tenant()).Bind(2, job.request_id());
    if (find.Step() == SQLITE_ROW) {
      auto found = Parse<Job>(find.Blob(0), "job");
      if (!found.ok()) return found.status();
      if (existing) *existing = *found;
      return absl::AlreadyExistsError(
          absl::StrCat("request_id ", job.request_id(), " already created ", found->name()));
    }
  }
  Statement s(sql,
              "INSERT INTO jobs (id, request_id, state, kind, priority, create_time_us, proto, "
              "tenant) VALUES (?,?,?,?,?,?,?,?)");
  if (!s.ok()) return SqlError(db, "prepare job insert");
  s.Bind(1, job.id());
  if (job.request_id().empty())
    s.BindNull(2);
  else
    s.Bind(2, job.request_id());
  s.Bind(3, job.state())
      .Bind(4, job.kind())
      .Bind(5, job.spec().job().priority())
      .Bind(6, ToMicros(job.create_time()));
  s.BindBlob(7, job.SerializeAsString());
  s.Bind(8, job.tenant());
  if (s.Step() != SQLITE_DONE) return SqlError(db, "insert job");
  return InsertEvent(sql, job.id(), first_event);
}

absl::Status UpdateJobRows(StatementCache& sql, const Job& job,
                           const std::vector<JobEvent>& events) {
  sqlite3* db = sql.db();
  Statement s(sql, "UPDATE jobs SET state = ?, proto = ?, end_time_us = ? WHERE id = ?");
  if (!s.ok()) return SqlError(db, "prepare job update");
  s.Bind(1, job.state())
      .BindBlob(2, job.SerializeAsString())
      .Bind(3, job.has_end_time() ? ToMicros(job.end_time()) : 0)
      .Bind(4, job.id());
  if (s.Step() != SQLITE_DONE) return SqlError(db, "update job");
  if (sqlite3_changes(db) != 1)
    return absl::NotFoundError(absl::StrCat("jobs/", job.id(), " not found"));
  for (const JobEvent& e : events) {
    if (absl::Status st = InsertEvent(sql, job.id(), e); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace

bool IsTerminal(lora::v1::JobState s) {
  return s == lora::v1::SUCCEEDED || s == lora::v1::FAILED || s == lora::v1::CANCELLED;
}

int64_t ToMicros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1000000 + t.nanos() / 1000;
}

google::protobuf::Timestamp FromMicros(int64_t us) {
  google::protobuf::Timestamp t;
  t.set_seconds(us / 1000000);
  t.set_nanos(static_cast<int32_t>((us % 1000000) * 1000));
  return t;
}

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const Options& options) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(options.path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    absl::Status s = absl::UnavailableError(absl::StrCat(
        options.path, ": cannot open database: ", db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(db));
  absl::MutexLock lock(&store->mu_);
  sqlite3_busy_timeout(db, 5000);
  for (const char* pragma :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
    if (absl::Status s = store->Exec(pragma); !s.ok()) return s;
  }
  if (absl::Status s = store->Exec(kSchema); !s.ok()) return s;
  bool has_tenant = false;
  {
    Statement columns(db, "PRAGMA table_info(jobs)");
    while (columns.Step() == SQLITE_ROW) {
      if (columns.Text(1) == "tenant") has_tenant = true;
    }
  }
  if (!has_tenant) {
    if (absl::Status s = store->Exec("ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT ''");
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = store->Exec(kTenantIndexes); !s.ok()) return s;
  bool has_end_time = false;
  {
    Statement columns(db, "PRAGMA table_info(jobs)");
    while (columns.Step() == SQLITE_ROW) {
      if (columns.Text(1) == "end_time_us") has_end_time = true;
    }
  }
  if (!has_end_time) {
    // Jobs that ended before the column existed count as ended when they were created (their
    // end time is only in the record): retention removes them no later than it should.
    for (const char* sql :
         {"ALTER TABLE jobs ADD COLUMN end_time_us INTEGER NOT NULL DEFAULT 0",
          "UPDATE jobs SET end_time_us = create_time_us WHERE state IN (4, 5, 7)"}) {
      if (absl::Status s = store->Exec(sql); !s.ok()) return s;
    }
  }
  if (absl::Status s = store->Exec(
          "CREATE INDEX IF NOT EXISTS jobs_ended ON jobs(end_time_us) WHERE end_time_us > 0");
      !s.ok()) {
    return s;
  }
  return store;
}

SqliteJobStore::SqliteJobStore(sqlite3* db)
    : db_(db), statements_(std::make_unique<StatementCache>(db)) {}

SqliteJobStore::~SqliteJobStore() {
  absl::MutexLock lock(&mu_);
  statements_.reset();  // its statements are finalized before the connection closes
  sqlite3_close(db_);
}

absl::Status SqliteJobStore::Exec(const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status s =
        absl::InternalError(absl::StrCat("sqlite: ", error ? error : "error", " in: ", sql));
    sqlite3_free(error);
    return s;
  }
  return absl::OkStatus();
}

struct SqliteJobStore::PendingWrite {
  const std::function<absl::Status()>* body;
  absl::Status result;
  bool done = false;  // guarded by queue_mu_
};

absl::Status SqliteJobStore::GroupWrite(const std::function<absl::Status()>& body) {
  PendingWrite self{&body};
  std::vector<PendingWrite*> batch;
  {
    absl::MutexLock lock(&queue_mu_);
    queue_.push_back(&self);
    if (gather_ > 1) gathered_.SignalAll();
    while (committing_ && !self.done) batch_done_.Wait(&queue_mu_);
    if (self.done) return self.result;  // a batch that started after we queued held us
    committing_ = true;                 // we write everything queued so far
    while (static_cast<int>(queue_.size()) < gather_) gathered_.Wait(&queue_mu_);
    batch.swap(queue_);
  }
  CommitBatch(batch);
  absl::MutexLock lock(&queue_mu_);
  for (PendingWrite* w : batch) w->done = true;
  ++batches_;
  grouped_writes_ += static_cast<int64_t>(batch.size());
  committing_ = false;
  batch_done_.SignalAll();  // the answered, and the queued of whom one writes the next batch
  return self.result;
}

void SqliteJobStore::CommitBatch(const std::vector<PendingWrite*>& batch) {
  absl::MutexLock lock(&mu_);
  auto fail_all = [&](const absl::Status& s) {
    for (PendingWrite* w : batch) w->result = s;
  };
  if (!write_fault_.ok()) return fail_all(write_fault_);
  Transaction tx(db_);
  if (!tx.ok()) return fail_all(SqlError(db_, "begin"));
  for (PendingWrite* w : batch) {
    if (Statement(*statements_, "SAVEPOINT w").Step() != SQLITE_DONE) {
      w->result = SqlError(db_, "savepoint");
    } else {
      w->result = (*w->body)();
    }
    if (w->result.ok()) {
      Statement(*statements_, "RELEASE w").Step();
      continue;
    }
    if (sqlite3_get_autocommit(db_)) {
      // SQLite rolled the whole transaction back (a full disk, an I/O error): the writes
      // before this one are gone too, and nothing after it can join a batch that is over.
      const absl::Status lost = w->result;
      for (PendingWrite* other : batch) {
        if (other != w) other->result = lost;
      }
      tx.Abandon();
      return;
    }
    Statement(*statements_, "ROLLBACK TO w").Step();
    Statement(*statements_, "RELEASE w").Step();
  }
  if (absl::Status s = tx.Commit(); !s.ok()) {
    for (PendingWrite* w : batch) {
      if (w->result.ok()) w->result = s;
    }
  }
}

void SqliteJobStore::GatherBatchesForTesting(int writes) {
  absl::MutexLock lock(&queue_mu_);
  gather_ = std::max(1, writes);
  gathered_.SignalAll();
}

std::pair<int64_t, int64_t> SqliteJobStore::GroupCommitStats() {
  absl::MutexLock lock(&queue_mu_);
  return {batches_, grouped_writes_};
}

absl::Status SqliteJobStore::InsertJob(const Job& job, const JobEvent& first_event, Job* existing) {
  return GroupWrite([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {  // CommitBatch holds mu_
    return InsertJobRows(*statements_, job, first_event, existing);
  });
}

absl::Status SqliteJobStore::UpdateJob(const Job& job, const std::vector<JobEvent>& events) {
  return GroupWrite([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {  // CommitBatch holds mu_
    return UpdateJobRows(*statements_, job, events);
  });
}

absl::StatusOr<Job> SqliteJobStore::GetJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT proto FROM jobs WHERE id = ?");
  s.Bind(1, id);
  const int rc = s.Step();
  if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("jobs/", id, " not found"));
  if (rc != SQLITE_ROW) return SqlError(db_, "get job");
  return Parse<Job>(s.Blob(0), "job");
}

absl::StatusOr<Job> SqliteJobStore::FindJobByRequestId(const std::string& tenant,
                                                       const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT proto FROM jobs WHERE tenant = ? AND request_id = ?");
  s.Bind(1, tenant).Bind(2, request_id);
  const int rc = s.Step();
  if (rc == SQLITE_DONE) return absl::NotFoundError("no job for this request_id");
  if (rc != SQLITE_ROW) return SqlError(db_, "find job by request id");
  return Parse<Job>(s.Blob(0), "job");
}

absl::StatusOr<std::vector<Job>> SqliteJobStore::ListJobs(const ListJobsQuery& q) {
  std::string sql = "SELECT proto FROM jobs WHERE 1";
  if (!q.states.empty()) {
    std::vector<std::string> v;
    for (auto st : q.states) v.push_back(std::to_string(static_cast<int>(st)));
    absl::StrAppend(&sql, " AND state IN (", absl::StrJoin(v, ","), ")");
  }
  if (!q.kinds.empty()) {
    std::vector<std::string> v;
    for (auto k : q.kinds) v.push_back(std::to_string(static_cast<int>(k)));
    absl::StrAppend(&sql, " AND kind IN (", absl::StrJoin(v, ","), ")");
  }
  if (q.tenant) absl::StrAppend(&sql, " AND tenant = ?");
  AppendKeysetPage(&sql, q.before.has_value(), q.ascending);
  absl::MutexLock lock(&mu_);
  Statement s(db_, sql.c_str());
  if (!s.ok()) return SqlError(db_, "prepare list");
  int i = 1;
  if (q.tenant) s.Bind(i++, *q.tenant);
  BindKeysetPage(s, i, q.before, q.limit);
  return ReadRecords<Job>(db_, s, "job", "list jobs");
}

absl::StatusOr<std::vector<Job>> SqliteJobStore::ListActiveJobs() {
  absl::MutexLock lock(&mu_);
  Statement s(db_,
              "SELECT proto FROM jobs WHERE state NOT IN (4, 5, 7) ORDER BY create_time_us, id");
  return ReadRecords<Job>(db_, s, "job", "list active jobs");
}

absl::StatusOr<std::vector<JobEvent>> SqliteJobStore::ReadEvents(const std::string& job_id,
                                                                 int64_t after, int limit) {
  absl::MutexLock lock(&mu_);
  Statement s(
      db_, "SELECT proto FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?");
  s.Bind(1, job_id).Bind(2, after).Bind(3, limit);
  return ReadRecords<JobEvent>(db_, s, "event", "read events");
}

absl::Status SqliteJobStore::PutCheckpoint(const std::string& job_id,
                                           const lora::v1::Checkpoint& c) {
  absl::MutexLock lock(&mu_);
  if (!write_fault_.ok()) return write_fault_;
  Statement s(db_, "INSERT OR REPLACE INTO checkpoints (job_id, step, proto) VALUES (?, ?, ?)");
  s.Bind(1, job_id).Bind(2, c.step()).BindBlob(3, c.SerializeAsString());
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "put checkpoint");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<lora::v1::Checkpoint>> SqliteJobStore::ListCheckpoints(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT proto FROM checkpoints WHERE job_id = ? ORDER BY step");
  s.Bind(1, job_id);
  return ReadRecords<lora::v1::Checkpoint>(db_, s, "checkpoint", "list checkpoints");
}

absl::Status SqliteJobStore::PutArtifact(const std::string& job_id, const lora::v1::ArtifactFile& f,
                                         int64_t step, int32_t attempt) {
  absl::MutexLock lock(&mu_);
  if (!write_fault_.ok()) return write_fault_;
  Statement s(db_,
              "INSERT OR REPLACE INTO artifacts (job_id, path, size, sha256, step, attempt) VALUES "
              "(?,?,?,?,?,?)");
  s.Bind(1, job_id)
      .Bind(2, f.path())
      .Bind(3, f.size())
      .Bind(4, f.sha256())
      .Bind(5, step)
      .Bind(6, attempt);
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "put artifact");
  return absl::OkStatus();
}

absl::StatusOr<lora::v1::ArtifactFile> SqliteJobStore::GetArtifact(const std::string& job_id,
                                                                   const std::string& path) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT size, sha256 FROM artifacts WHERE job_id = ? AND path = ?");
  s.Bind(1, job_id).Bind(2, path);
  if (s.Step() != SQLITE_ROW)
    return absl::NotFoundError(absl::StrCat("jobs/", job_id, " has no artifact '", path, "'"));
  lora::v1::ArtifactFile f;
  f.set_path(path);
  f.set_size(s.Int(0));
  f.set_sha256(s.Text(1));
  return f;
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::DeleteCheckpointsBefore(
    const std::string& job_id, int64_t first_kept_step) {
  absl::MutexLock lock(&mu_);
  if (!write_fault_.ok()) return write_fault_;
  Transaction tx(db_);
  if (!tx.ok()) return SqlError(db_, "begin");
  std::vector<std::string> paths;
  {
    Statement read(db_, "SELECT path FROM artifacts WHERE job_id = ? AND step > 0 AND step < ?");
    read.Bind(1, job_id).Bind(2, first_kept_step);
    while (read.Step() == SQLITE_ROW) paths.push_back(read.Text(0));
  }
  Statement artifacts(db_, "DELETE FROM artifacts WHERE job_id = ? AND step > 0 AND step < ?");
  artifacts.Bind(1, job_id).Bind(2, first_kept_step);
  if (artifacts.Step() != SQLITE_DONE) return SqlError(db_, "delete artifacts");
  Statement checkpoints(db_, "DELETE FROM checkpoints WHERE job_id = ? AND step < ?");
  checkpoints.Bind(1, job_id).Bind(2, first_kept_step);
  if (checkpoints.Step() != SQLITE_DONE) return SqlError(db_, "delete checkpoints");
  LORA_RETURN_IF_ERROR(tx.Commit());
  return paths;
}

void SqliteJobStore::FailWritesForTesting(absl::Status status) {
  absl::MutexLock lock(&mu_);
  write_fault_ = std::move(status);
}

absl::Status SqliteJobStore::LimitPagesForTesting(int64_t pages) {
  absl::MutexLock lock(&mu_);
  const std::string sql = absl::StrCat("PRAGMA max_page_count = ", pages);
  return Exec(sql.c_str());
}

absl::StatusOr<int64_t> SqliteJobStore::CountJobs() {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT COUNT(*) FROM jobs");
  if (s.Step() != SQLITE_ROW) return SqlError(db_, "count");
  return s.Int(0);
}

absl::Status SqliteJobStore::DeleteJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (!write_fault_.ok()) return write_fault_;
  Transaction tx(db_);
  if (!tx.ok()) return SqlError(db_, "begin");
  {
    Statement s(db_, "SELECT state FROM jobs WHERE id = ?");
    s.Bind(1, id);
    const int rc = s.Step();
    if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("jobs/", id, " not found"));
    if (rc != SQLITE_ROW) return SqlError(db_, "find job");
    if (!IsTerminal(static_cast<lora::v1::JobState>(s.Int(0)))) {
      return absl::FailedPreconditionError(
          absl::StrCat("jobs/", id, " has not ended; cancel it first"));
    }
  }
  for (const char* sql :
       {"DELETE FROM events WHERE job_id = ?", "DELETE FROM checkpoints WHERE job_id = ?",
        "DELETE FROM artifacts WHERE job_id = ?", "DELETE FROM jobs WHERE id = ?"}) {
    Statement s(db_, sql);
    if (!s.ok()) return SqlError(db_, "prepare job delete");
    s.Bind(1, id);
    if (s.Step() != SQLITE_DONE) return SqlError(db_, "delete job");
  }
  return tx.Commit();
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::JobsEndedBefore(int64_t before_us,
                                                                         int limit) {
  absl::MutexLock lock(&mu_);
  Statement s(
      db_,
      "SELECT id FROM jobs WHERE end_time_us > 0 AND end_time_us < ? AND state IN (4, 5, 7) "
      "ORDER BY end_time_us LIMIT ?");
  s.Bind(1, before_us).Bind(2, limit);
  std::vector<std::string> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(s.Text(0));
  if (rc != SQLITE_DONE) return SqlError(db_, "jobs ended before");
  return out;
}

}  // namespace lora::server
