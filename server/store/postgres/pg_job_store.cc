#include "server/store/postgres/pg_job_store.h"

#include <algorithm>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/not_leader.h"
#include "common/status_macros.h"
#include "google/protobuf/message_lite.h"
#include "server/store/postgres/leader_lease.h"

namespace lora::server::pg {
namespace {

using lora::v1::File;
using lora::v1::Job;
using lora::v1::JobEvent;

// pg_advisory_xact_lock keys (arbitrary, fixed: every replica must use the same ones).
// CREATE ... IF NOT EXISTS is not safe against itself: two replicas opening at once could both
// pass the check and one fail on the catalog's unique index.
constexpr char kSchemaLock[] = "SELECT pg_advisory_xact_lock(7433021500000001)";
// DeleteFile and RemoveUnnamedTenantBlobs release a blob when no file names it; under READ
// COMMITTED a concurrent InsertFile naming it would not be seen, and the blob's bytes could go
// while a file still needs them. SQLite's single writer rules that out; this lock does here.
constexpr char kFileRecordsLock[] = "SELECT pg_advisory_xact_lock(7433021500000002)";

// Ids, tenants and paths compare bytewise (COLLATE "C"), as in SQLite, so keyset cursors page
// in the same order whatever the database's locale.
constexpr const char* kSchema[] = {
    R"sql(CREATE TABLE IF NOT EXISTS jobs (
  id text COLLATE "C" PRIMARY KEY, request_id text COLLATE "C",
  state integer NOT NULL, kind integer NOT NULL, priority integer NOT NULL,
  create_time_us bigint NOT NULL, end_time_us bigint NOT NULL DEFAULT 0,
  tenant text COLLATE "C" NOT NULL DEFAULT '', proto bytea NOT NULL))sql",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (create_time_us DESC, id DESC)",
    "CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, create_time_us DESC, id DESC)",
    R"sql(CREATE UNIQUE INDEX IF NOT EXISTS jobs_tenant_request_id ON jobs (tenant, request_id)
  WHERE request_id IS NOT NULL)sql",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state)",
    "CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (end_time_us) WHERE end_time_us > 0",
    R"sql(CREATE TABLE IF NOT EXISTS events (
  job_id text COLLATE "C" NOT NULL, sequence bigint NOT NULL, proto bytea NOT NULL,
  PRIMARY KEY (job_id, sequence)))sql",
    R"sql(CREATE TABLE IF NOT EXISTS checkpoints (
  job_id text COLLATE "C" NOT NULL, step bigint NOT NULL, proto bytea NOT NULL,
  PRIMARY KEY (job_id, step)))sql",
    R"sql(CREATE TABLE IF NOT EXISTS artifacts (
  job_id text COLLATE "C" NOT NULL, path text COLLATE "C" NOT NULL, size bigint NOT NULL,
  sha256 text NOT NULL, step bigint NOT NULL, attempt integer NOT NULL,
  PRIMARY KEY (job_id, path)))sql",
    R"sql(CREATE TABLE IF NOT EXISTS files (
  id text COLLATE "C" PRIMARY KEY, tenant text COLLATE "C" NOT NULL,
  create_time_us bigint NOT NULL, proto bytea NOT NULL))sql",
    "CREATE INDEX IF NOT EXISTS files_created ON files (create_time_us DESC, id DESC)",
    R"sql(CREATE INDEX IF NOT EXISTS files_tenant_created
  ON files (tenant, create_time_us DESC, id DESC))sql",
    R"sql(CREATE TABLE IF NOT EXISTS file_blobs (
  file_id text COLLATE "C" NOT NULL, tenant text COLLATE "C" NOT NULL, sha256 text NOT NULL,
  PRIMARY KEY (file_id, sha256)))sql",
    "CREATE INDEX IF NOT EXISTS file_blobs_tenant_sha ON file_blobs (tenant, sha256)",
    R"sql(CREATE TABLE IF NOT EXISTS tenant_blobs (
  tenant text COLLATE "C" NOT NULL, sha256 text NOT NULL, size bigint NOT NULL,
  create_time_us bigint NOT NULL, PRIMARY KEY (tenant, sha256)))sql",
    "CREATE INDEX IF NOT EXISTS tenant_blobs_sha ON tenant_blobs (sha256)",
};

// Runs on every new session, before its first use. bytea_output could be 'escape' for the
// database or role; ParseBytea reads only hex. synchronous_commit is checked per session
// because a role or database setting can turn it off for some sessions only.
absl::Status PrepareSession(PgConnection& conn, absl::Duration statement_timeout) {
  conn.set_statement_timeout(statement_timeout);
  LORA_ASSIGN_OR_RETURN(PgResult r, conn.Exec("SELECT set_config('bytea_output', 'hex', false), "
                                              "current_setting('synchronous_commit')",
                                              {}, "prepare the session"));
  if (r.empty() || r.at(0, 1).value_or("off") == "off") {
    return absl::FailedPreconditionError(absl::StrCat(
        "PostgreSQL at ", conn.description(),
        " runs this session with synchronous_commit = off, so a commit it acknowledged could "
        "be lost in a crash; the job store needs synchronous_commit on (the server's default)"));
  }
  return absl::OkStatus();
}

// Protos travel as bytea's hex text form ("\x0a1b..."): text parameters and results can carry
// any bytes that way.
std::string Bytea(const google::protobuf::MessageLite& m) {
  return absl::StrCat("\\x", absl::BytesToHexString(m.SerializeAsString()));
}

template <typename Message>
absl::StatusOr<Message> ParseBytea(const std::optional<std::string>& text, const char* what) {
  absl::string_view hex = text.has_value() ? absl::string_view(*text) : absl::string_view();
  Message m;
  if (!absl::ConsumePrefix(&hex, "\\x") || hex.size() % 2 != 0 ||
      hex.find_first_not_of("0123456789abcdefABCDEF") != absl::string_view::npos ||
      !m.ParseFromString(absl::HexStringToBytes(hex))) {
    return absl::DataLossError(absl::StrCat("store: corrupt ", what, " record"));
  }
  return m;
}

// Column 0 of every row, parsed as `Message` records named `what`.
template <typename Message>
absl::StatusOr<std::vector<Message>> ParseRows(const PgResult& r, const char* what) {
  std::vector<Message> out;
  out.reserve(r.rows.size());
  for (size_t i = 0; i < r.rows.size(); ++i) {
    LORA_ASSIGN_OR_RETURN(Message m, ParseBytea<Message>(r.at(i, 0), what));
    out.push_back(std::move(m));
  }
  return out;
}

std::string Int(int64_t v) { return absl::StrCat(v); }

// LIMIT NULL is no limit, which is what a negative limit means to SQLite.
std::optional<std::string> Limit(int limit) {
  return limit >= 0 ? std::optional<std::string>(Int(limit)) : std::nullopt;
}

absl::StatusOr<int64_t> IntAt(const PgResult& r, size_t row, size_t column) {
  int64_t v = 0;
  if (!r.at(row, column).has_value() || !absl::SimpleAtoi(*r.at(row, column), &v)) {
    return absl::InternalError("PostgreSQL answered with a value that is not an integer");
  }
  return v;
}

// An array parameter ("{...}" for text[] or integer[]): one statement for any number of values.
// Each element is quoted so that none can end the literal.
template <typename T>
std::string ArrayLiteral(const std::vector<T>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    absl::StrAppend(&out, i > 0 ? ",\"" : "\"");
    for (char c : absl::StrCat(values[i])) {
      if (c == '"' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
    out.push_back('"');
  }
  return out + "}";
}

// Ids and event sequences are unique by construction: a duplicate is a fault (INTERNAL, as in
// SQLite), never the request-id retry that ALREADY_EXISTS tells InsertJob's caller.
absl::StatusOr<PgResult> ExecNoDuplicate(PgConnection& txn, absl::string_view sql,
                                         const PgParams& params, absl::string_view purpose) {
  absl::StatusOr<PgResult> r = txn.Exec(sql, params, purpose);
  if (absl::IsAlreadyExists(r.status())) return absl::InternalError(r.status().message());
  return r;
}

absl::Status InsertEvent(PgConnection& txn, const std::string& job_id, const JobEvent& e) {
  return ExecNoDuplicate(txn, "INSERT INTO events (job_id, sequence, proto) VALUES ($1, $2, $3)",
                         {job_id, Int(e.sequence()), Bytea(e)}, "insert a job event")
      .status();
}

// A statement whose parameters are numbered as they are added.
struct Statement {
  std::string sql;
  PgParams params;

  std::string Param(std::optional<std::string> value) {
    params.push_back(std::move(value));
    return absl::StrCat("$", params.size());
  }
  // The keyset cursor, order and limit of every list: (create_time_us, id), newest first unless
  // `ascending`.
  void KeysetPage(const std::optional<std::pair<int64_t, std::string>>& cursor, bool ascending,
                  int limit) {
    if (cursor.has_value()) {
      absl::StrAppend(&sql, " AND (create_time_us, id) ", ascending ? ">" : "<", " (",
                      Param(Int(cursor->first)), "::bigint, ", Param(cursor->second), ")");
    }
    absl::StrAppend(
        &sql, ascending ? " ORDER BY create_time_us, id" : " ORDER BY create_time_us DESC, id DESC",
        " LIMIT ", Param(Limit(limit)), "::bigint");
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<PgJobStore>> PgJobStore::Open(const Options& options) {
  if (options.conninfo.empty()) {
    return absl::InvalidArgumentError("the PostgreSQL job store needs a conninfo");
  }
  if (options.connections < 1 || options.connections > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the PostgreSQL job store needs 1 to 64 connections, not ", options.connections));
  }
  std::vector<Session> sessions;
  for (int i = 0; i < options.connections; ++i) {
    LORA_ASSIGN_OR_RETURN(auto conn,
                          PgConnection::Connect(options.conninfo, options.connect_timeout));
    LORA_RETURN_IF_ERROR(PrepareSession(*conn, options.statement_timeout));
    sessions.push_back({std::move(conn), true});
  }
  LORA_RETURN_IF_ERROR(sessions.front().conn->InTransaction([](PgConnection& txn) -> absl::Status {
    LORA_RETURN_IF_ERROR(txn.Exec(kSchemaLock, {}, "lock the job store schema").status());
    for (const char* sql : kSchema) {
      LORA_RETURN_IF_ERROR(txn.Exec(sql, {}, "create the job store schema").status());
    }
    return absl::OkStatus();
  }));
  std::unique_ptr<PgJobStore> store(new PgJobStore(options));
  absl::MutexLock lock(&store->mu_);
  store->idle_ = std::move(sessions);
  return store;
}

PgJobStore::~PgJobStore() = default;

absl::Status PgJobStore::Ready(Session& session) {
  if (session.conn->ok() && session.prepared) return absl::OkStatus();
  if (!session.conn->ok()) {
    session.prepared = false;
    absl::Status reconnected = session.conn->Reconnect();
    // A connect that timed out is as much "the database is out of reach" as a refused one.
    if (!reconnected.ok()) return absl::UnavailableError(reconnected.message());
  }
  LORA_RETURN_IF_ERROR(PrepareSession(*session.conn, options_.statement_timeout));
  session.prepared = true;
  return absl::OkStatus();
}

absl::Status PgJobStore::Borrow(absl::FunctionRef<absl::Status(Session&)> fn) {
  Session session;
  {
    absl::MutexLock lock(&mu_);
    // Bounded like a statement: a pool held by calls stuck on a hung server must not queue the
    // rest forever.
    const absl::Time deadline = absl::Now() + options_.statement_timeout;
    while (idle_.empty()) {
      if (returned_.WaitWithDeadline(&mu_, deadline) && idle_.empty()) {
        return absl::UnavailableError(absl::StrCat(
            "PostgreSQL store: all ", options_.connections, " sessions stayed busy for ",
            absl::FormatDuration(options_.statement_timeout)));
      }
    }
    session = std::move(idle_.back());
    idle_.pop_back();
  }
  absl::Status status = Ready(session);
  if (status.ok()) status = fn(session);
  absl::MutexLock lock(&mu_);
  idle_.push_back(std::move(session));
  returned_.Signal();
  return status;
}

absl::Status PgJobStore::Read(absl::FunctionRef<absl::Status(PgConnection&)> fn) {
  return Borrow([&](Session& session) -> absl::Status {
    absl::Status status = fn(*session.conn);
    // A session the server dropped while it sat idle (a restart, a failover) fails its next
    // statement; a read is safe to repeat, so it gets one more try on a new session.
    if (absl::IsUnavailable(status) && !session.conn->ok()) {
      LORA_RETURN_IF_ERROR(Ready(session));
      status = fn(*session.conn);
    }
    return status;
  });
}

absl::StatusOr<PgResult> PgJobStore::Query(absl::string_view sql, const PgParams& params,
                                           absl::string_view purpose) {
  PgResult result;
  LORA_RETURN_IF_ERROR(Read([&](PgConnection& conn) -> absl::Status {
    LORA_ASSIGN_OR_RETURN(result, conn.Exec(sql, params, purpose));
    return absl::OkStatus();
  }));
  return result;
}

absl::Status PgJobStore::Write(absl::FunctionRef<absl::Status(PgConnection&)> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (!write_fault_.ok()) return write_fault_;
  }
  const int64_t epoch = fence_epoch_.load();
  if (options_.fence_lease.has_value() && epoch == 0) {
    return NotLeaderError(absl::StrCat(options_.replica_name,
                                       " is a follower: it does not lead, so it cannot write; "
                                       "send writes to the leader"),
                          /*leader=*/"");
  }
  return Borrow([&](Session& session) -> absl::Status {
    bool began = false;
    auto attempt = [&] {
      return session.conn->InTransaction([&](PgConnection& txn) -> absl::Status {
        began = true;
        if (options_.fence_lease.has_value()) {
          LORA_RETURN_IF_ERROR(CheckLeaderFence(txn, *options_.fence_lease, epoch));
        }
        return fn(txn);
      });
    };
    absl::Status status = attempt();
    // As in Read, but only when BEGIN itself failed: nothing was sent that could take effect.
    if (!began && absl::IsUnavailable(status) && !session.conn->ok()) {
      LORA_RETURN_IF_ERROR(Ready(session));
      status = attempt();
    }
    // A transaction cut short by its deadline lost its session, maybe after COMMIT was sent:
    // like a lost COMMIT answer, an outcome the caller must treat as unknown and retry.
    if (absl::IsDeadlineExceeded(status)) return absl::UnavailableError(status.message());
    return status;
  });
}

absl::Status PgJobStore::InsertJob(const Job& job, const JobEvent& first_event, Job* existing) {
  const std::optional<std::string> request_id =
      job.request_id().empty() ? std::nullopt : std::optional<std::string>(job.request_id());
  return Write([&](PgConnection& txn) -> absl::Status {
    // A request-id conflict is answered, not raised: an insert racing the same request waits
    // for the other transaction, and the next statement's snapshot (READ COMMITTED) sees the
    // winner's job.
    LORA_ASSIGN_OR_RETURN(
        PgResult inserted,
        ExecNoDuplicate(
            txn,
            "INSERT INTO jobs (id, request_id, state, kind, priority, create_time_us, "
            "end_time_us, tenant, proto) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (tenant, request_id) WHERE request_id IS NOT NULL DO NOTHING",
            {job.id(), request_id, Int(job.state()), Int(job.kind()),
             Int(job.spec().job().priority()), Int(ToMicros(job.create_time())),
             Int(job.has_end_time() ? ToMicros(job.end_time()) : 0), job.tenant(), Bytea(job)},
            "insert a job"));
    if (inserted.affected_rows == 0) {
      LORA_ASSIGN_OR_RETURN(PgResult found,
                            txn.Exec("SELECT proto FROM jobs WHERE tenant = $1 AND request_id = $2",
                                     {job.tenant(), request_id}, "find the job of a request id"));
      if (found.empty()) {
        return absl::AbortedError("the job of this request id went away while it was read; retry");
      }
      LORA_ASSIGN_OR_RETURN(Job winner, ParseBytea<Job>(found.at(0, 0), "job"));
      const std::string name = winner.name();
      if (existing != nullptr) *existing = std::move(winner);
      return absl::AlreadyExistsError(
          absl::StrCat("request_id ", job.request_id(), " already created ", name));
    }
    return InsertEvent(txn, job.id(), first_event);
  });
}

absl::Status PgJobStore::UpdateJob(const Job& job, const std::vector<JobEvent>& events) {
  return Write([&](PgConnection& txn) -> absl::Status {
    LORA_ASSIGN_OR_RETURN(
        PgResult updated,
        txn.Exec("UPDATE jobs SET state = $2, proto = $3, end_time_us = $4 WHERE id = $1",
                 {job.id(), Int(job.state()), Bytea(job),
                  Int(job.has_end_time() ? ToMicros(job.end_time()) : 0)},
                 "update a job"));
    if (updated.affected_rows != 1) {
      return absl::NotFoundError(absl::StrCat("jobs/", job.id(), " not found"));
    }
    for (const JobEvent& e : events) LORA_RETURN_IF_ERROR(InsertEvent(txn, job.id(), e));
    return absl::OkStatus();
  });
}

absl::StatusOr<Job> PgJobStore::GetJob(const std::string& id) {
  LORA_ASSIGN_OR_RETURN(PgResult r,
                        Query("SELECT proto FROM jobs WHERE id = $1", {id}, "get a job"));
  if (r.empty()) return absl::NotFoundError(absl::StrCat("jobs/", id, " not found"));
  return ParseBytea<Job>(r.at(0, 0), "job");
}

absl::StatusOr<Job> PgJobStore::FindJobByRequestId(const std::string& tenant,
                                                   const std::string& request_id) {
  LORA_ASSIGN_OR_RETURN(PgResult r,
                        Query("SELECT proto FROM jobs WHERE tenant = $1 AND request_id = $2",
                              {tenant, request_id}, "find a job by request id"));
  if (r.empty()) return absl::NotFoundError("no job for this request_id");
  return ParseBytea<Job>(r.at(0, 0), "job");
}

absl::StatusOr<std::vector<Job>> PgJobStore::ListJobs(const ListJobsQuery& q) {
  Statement s{"SELECT proto FROM jobs WHERE true"};
  if (!q.states.empty()) {
    absl::StrAppend(&s.sql, " AND state = ANY(", s.Param(ArrayLiteral(q.states)), "::integer[])");
  }
  if (!q.kinds.empty()) {
    absl::StrAppend(&s.sql, " AND kind = ANY(", s.Param(ArrayLiteral(q.kinds)), "::integer[])");
  }
  if (q.tenant.has_value()) absl::StrAppend(&s.sql, " AND tenant = ", s.Param(*q.tenant));
  s.KeysetPage(q.before, q.ascending, q.limit);
  LORA_ASSIGN_OR_RETURN(PgResult r, Query(s.sql, s.params, "list jobs"));
  return ParseRows<Job>(r, "job");
}

absl::StatusOr<std::vector<Job>> PgJobStore::ListActiveJobs() {
  LORA_ASSIGN_OR_RETURN(
      PgResult r,
      Query("SELECT proto FROM jobs WHERE state NOT IN (4, 5, 7) ORDER BY create_time_us, id", {},
            "list active jobs"));
  return ParseRows<Job>(r, "job");
}

absl::StatusOr<std::vector<JobEvent>> PgJobStore::ReadEvents(const std::string& job_id,
                                                             int64_t after_sequence, int limit) {
  LORA_ASSIGN_OR_RETURN(PgResult r,
                        Query("SELECT proto FROM events WHERE job_id = $1 AND "
                              "sequence > $2 ORDER BY sequence LIMIT $3::bigint",
                              {job_id, Int(after_sequence), Limit(limit)}, "read job events"));
  return ParseRows<JobEvent>(r, "event");
}

absl::Status PgJobStore::PutCheckpoint(const std::string& job_id,
                                       const lora::v1::Checkpoint& checkpoint) {
  return Write([&](PgConnection& txn) -> absl::Status {
    return txn
        .Exec(
            "INSERT INTO checkpoints (job_id, step, proto) VALUES ($1, $2, $3) "
            "ON CONFLICT (job_id, step) DO UPDATE SET proto = excluded.proto",
            {job_id, Int(checkpoint.step()), Bytea(checkpoint)}, "put a checkpoint")
        .status();
  });
}

absl::StatusOr<std::vector<lora::v1::Checkpoint>> PgJobStore::ListCheckpoints(
    const std::string& job_id) {
  LORA_ASSIGN_OR_RETURN(
      PgResult r, Query("SELECT proto FROM checkpoints WHERE job_id = $1 ORDER BY step", {job_id},
                        "list checkpoints"));
  return ParseRows<lora::v1::Checkpoint>(r, "checkpoint");
}

absl::Status PgJobStore::PutArtifact(const std::string& job_id, const lora::v1::ArtifactFile& file,
                                     int64_t step, int32_t attempt) {
  return Write([&](PgConnection& txn) -> absl::Status {
    return txn
        .Exec(
            "INSERT INTO artifacts (job_id, path, size, sha256, step, attempt) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id, path) DO UPDATE SET "
            "size = excluded.size, sha256 = excluded.sha256, step = excluded.step, "
            "attempt = excluded.attempt",
            {job_id, file.path(), Int(file.size()), file.sha256(), Int(step), Int(attempt)},
            "put an artifact record")
        .status();
  });
}

absl::StatusOr<lora::v1::ArtifactFile> PgJobStore::GetArtifact(const std::string& job_id,
                                                               const std::string& path) {
  LORA_ASSIGN_OR_RETURN(PgResult r,
                        Query("SELECT size, sha256 FROM artifacts WHERE job_id = $1 AND path = $2",
                              {job_id, path}, "get an artifact record"));
  if (r.empty()) {
    return absl::NotFoundError(absl::StrCat("jobs/", job_id, " has no artifact '", path, "'"));
  }
  lora::v1::ArtifactFile f;
  f.set_path(path);
  LORA_ASSIGN_OR_RETURN(int64_t size, IntAt(r, 0, 0));
  f.set_size(size);
  f.set_sha256(r.at(0, 1).value_or(""));
  return f;
}

absl::StatusOr<int64_t> PgJobStore::CountJobs() {
  LORA_ASSIGN_OR_RETURN(PgResult r, Query("SELECT count(*) FROM jobs", {}, "count jobs"));
  return IntAt(r, 0, 0);
}

absl::Status PgJobStore::DeleteJob(const std::string& id) {
  return Write([&](PgConnection& txn) -> absl::Status {
    // FOR UPDATE: an update racing the delete waits for it, then finds no row.
    LORA_ASSIGN_OR_RETURN(PgResult r, txn.Exec("SELECT state FROM jobs WHERE id = $1 FOR UPDATE",
                                               {id}, "find the job to delete"));
    if (r.empty()) return absl::NotFoundError(absl::StrCat("jobs/", id, " not found"));
    LORA_ASSIGN_OR_RETURN(int64_t state, IntAt(r, 0, 0));
    if (!IsTerminal(static_cast<lora::v1::JobState>(state))) {
      return absl::FailedPreconditionError(
          absl::StrCat("jobs/", id, " has not ended; cancel it first"));
    }
    for (const char* sql :
         {"DELETE FROM events WHERE job_id = $1", "DELETE FROM checkpoints WHERE job_id = $1",
          "DELETE FROM artifacts WHERE job_id = $1", "DELETE FROM jobs WHERE id = $1"}) {
      LORA_RETURN_IF_ERROR(txn.Exec(sql, {id}, "delete a job").status());
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<std::string>> PgJobStore::JobsEndedBefore(int64_t before_us, int limit) {
  LORA_ASSIGN_OR_RETURN(PgResult r,
                        Query("SELECT id FROM jobs WHERE end_time_us > 0 AND end_time_us < $1 AND "
                              "state IN (4, 5, 7) ORDER BY end_time_us LIMIT $2::bigint",
                              {Int(before_us), Limit(limit)}, "find jobs that ended"));
  std::vector<std::string> ids;
  for (const auto& row : r.rows) ids.push_back(row[0].value_or(""));
  return ids;
}

absl::StatusOr<std::vector<std::string>> PgJobStore::DeleteCheckpointsBefore(
    const std::string& job_id, int64_t first_kept_step) {
  std::vector<std::string> paths;
  LORA_RETURN_IF_ERROR(Write([&](PgConnection& txn) -> absl::Status {
    LORA_ASSIGN_OR_RETURN(
        PgResult r, txn.Exec("DELETE FROM artifacts WHERE job_id = $1 AND step > 0 AND step < $2 "
                             "RETURNING path",
                             {job_id, Int(first_kept_step)}, "delete checkpoint artifact records"));
    for (const auto& row : r.rows) paths.push_back(row[0].value_or(""));
    return txn
        .Exec("DELETE FROM checkpoints WHERE job_id = $1 AND step < $2",
              {job_id, Int(first_kept_step)}, "delete checkpoints")
        .status();
  }));
  std::sort(paths.begin(), paths.end());  // SQLite's order (its primary key's)
  return paths;
}

absl::Status PgJobStore::InsertFile(const File& file) {
  std::vector<std::string> blobs;
  for (const auto& entry : file.entries()) blobs.push_back(entry.sha256());
  return Write([&](PgConnection& txn) -> absl::Status {
    LORA_RETURN_IF_ERROR(txn.Exec(kFileRecordsLock, {}, "lock the file records").status());
    LORA_ASSIGN_OR_RETURN(
        PgResult inserted,
        txn.Exec("INSERT INTO files (id, tenant, create_time_us, proto) VALUES ($1, $2, $3, $4) "
                 "ON CONFLICT (id) DO NOTHING",
                 {file.id(), file.tenant(), Int(ToMicros(file.create_time())), Bytea(file)},
                 "insert a file"));
    if (inserted.affected_rows == 0) return absl::OkStatus();  // the same file exists
    return txn
        .Exec(
            "INSERT INTO file_blobs (file_id, tenant, sha256) "
            "SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING",
            {file.id(), file.tenant(), ArrayLiteral(blobs)}, "insert a file's blob references")
        .status();
  });
}

absl::StatusOr<File> PgJobStore::GetFile(const std::string& id) {
  LORA_ASSIGN_OR_RETURN(PgResult r,
                        Query("SELECT proto FROM files WHERE id = $1", {id}, "get a file"));
  if (r.empty()) return absl::NotFoundError(absl::StrCat("files/", id, " not found"));
  return ParseBytea<File>(r.at(0, 0), "file");
}

absl::StatusOr<std::vector<File>> PgJobStore::ListFiles(const ListFilesQuery& q) {
  Statement s{"SELECT proto FROM files WHERE true"};
  if (q.tenant.has_value()) absl::StrAppend(&s.sql, " AND tenant = ", s.Param(*q.tenant));
  s.KeysetPage(q.before, /*ascending=*/false, q.limit);
  LORA_ASSIGN_OR_RETURN(PgResult r, Query(s.sql, s.params, "list files"));
  return ParseRows<File>(r, "file");
}

absl::StatusOr<std::vector<TenantBlob>> PgJobStore::DeleteFile(const std::string& id) {
  std::vector<TenantBlob> released;
  LORA_RETURN_IF_ERROR(Write([&](PgConnection& txn) -> absl::Status {
    LORA_RETURN_IF_ERROR(txn.Exec(kFileRecordsLock, {}, "lock the file records").status());
    LORA_ASSIGN_OR_RETURN(PgResult r, txn.Exec("DELETE FROM files WHERE id = $1 RETURNING proto",
                                               {id}, "delete a file"));
    if (r.empty()) return absl::NotFoundError(absl::StrCat("files/", id, " not found"));
    LORA_ASSIGN_OR_RETURN(File file, ParseBytea<File>(r.at(0, 0), "file"));
    LORA_RETURN_IF_ERROR(txn.Exec("DELETE FROM file_blobs WHERE file_id = $1", {id},
                                  "delete a file's blob references")
                             .status());
    std::vector<std::string> blobs;
    for (const auto& entry : file.entries()) blobs.push_back(entry.sha256());
    LORA_ASSIGN_OR_RETURN(
        PgResult dropped,
        txn.Exec("DELETE FROM tenant_blobs tb WHERE tb.tenant = $1 AND tb.sha256 = ANY($2::text[]) "
                 "AND NOT EXISTS (SELECT 1 FROM file_blobs fb WHERE fb.tenant = tb.tenant AND "
                 "fb.sha256 = tb.sha256) RETURNING tb.sha256",
                 {file.tenant(), ArrayLiteral(blobs)}, "release a file's blobs"));
    std::set<std::string> gone;
    for (const auto& row : dropped.rows) gone.insert(row[0].value_or(""));
    // In the file's entry order with the entries' sizes, as SQLite answers.
    for (const auto& entry : file.entries()) {
      if (gone.erase(entry.sha256()) > 0) {
        released.push_back({file.tenant(), entry.sha256(), entry.size()});
      }
    }
    return absl::OkStatus();
  }));
  return released;
}

absl::Status PgJobStore::PutTenantBlob(const TenantBlob& blob, int64_t now_us) {
  return Write([&](PgConnection& txn) -> absl::Status {
    return txn
        .Exec(
            "INSERT INTO tenant_blobs (tenant, sha256, size, create_time_us) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, sha256) DO NOTHING",
            {blob.tenant, blob.sha256, Int(blob.size), Int(now_us)}, "insert a tenant blob")
        .status();
  });
}

absl::StatusOr<std::optional<int64_t>> PgJobStore::FindTenantBlob(const std::string& tenant,
                                                                  const std::string& sha256) {
  LORA_ASSIGN_OR_RETURN(PgResult r,
                        Query("SELECT size FROM tenant_blobs WHERE tenant = $1 AND sha256 = $2",
                              {tenant, sha256}, "find a tenant blob"));
  if (r.empty()) return std::optional<int64_t>();
  LORA_ASSIGN_OR_RETURN(int64_t size, IntAt(r, 0, 0));
  return std::optional<int64_t>(size);
}

absl::StatusOr<int64_t> PgJobStore::TenantBlobBytes(const std::string& tenant) {
  LORA_ASSIGN_OR_RETURN(
      PgResult r, Query("SELECT COALESCE(SUM(size), 0)::bigint FROM tenant_blobs WHERE tenant = $1",
                        {tenant}, "sum tenant blobs"));
  return IntAt(r, 0, 0);
}

absl::StatusOr<bool> PgJobStore::BlobHeld(const std::string& sha256) {
  LORA_ASSIGN_OR_RETURN(
      PgResult r, Query("SELECT EXISTS (SELECT 1 FROM tenant_blobs WHERE sha256 = $1)", {sha256},
                        "find a blob holder"));
  return !r.empty() && r.at(0, 0).value_or("f") == "t";
}

absl::StatusOr<std::vector<TenantBlob>> PgJobStore::RemoveUnnamedTenantBlobs(int64_t before_us) {
  std::vector<TenantBlob> out;
  LORA_RETURN_IF_ERROR(Write([&](PgConnection& txn) -> absl::Status {
    LORA_RETURN_IF_ERROR(txn.Exec(kFileRecordsLock, {}, "lock the file records").status());
    LORA_ASSIGN_OR_RETURN(
        PgResult r, txn.Exec("DELETE FROM tenant_blobs tb WHERE create_time_us < $1 AND NOT EXISTS "
                             "(SELECT 1 FROM file_blobs fb WHERE fb.tenant = tb.tenant AND "
                             "fb.sha256 = tb.sha256) RETURNING tenant, sha256, size",
                             {Int(before_us)}, "remove unnamed tenant blobs"));
    for (size_t i = 0; i < r.rows.size(); ++i) {
      LORA_ASSIGN_OR_RETURN(int64_t size, IntAt(r, i, 2));
      out.push_back({r.at(i, 0).value_or(""), r.at(i, 1).value_or(""), size});
    }
    return absl::OkStatus();
  }));
  // SQLite's order (its primary key's).
  std::sort(out.begin(), out.end(), [](const TenantBlob& a, const TenantBlob& b) {
    return std::tie(a.tenant, a.sha256) < std::tie(b.tenant, b.sha256);
  });
  return out;
}

void PgJobStore::FailWritesForTesting(absl::Status status) {
  absl::MutexLock lock(&mu_);
  write_fault_ = std::move(status);
}

}  // namespace lora::server::pg
