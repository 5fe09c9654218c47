// JobStore in PostgreSQL: the store lorad replicas share (one leads and writes, the others
// serve reads; server/store/postgres/leader_lease.h elects the leader).
//
//   LORA_ASSIGN_OR_RETURN(auto store, PgJobStore::Open({.conninfo = conninfo,
//                                                       .fence_lease = "lorad"}));
//   store->SetFenceEpoch(epoch);  // when this replica is elected; writes are refused before
//   LORA_RETURN_IF_ERROR(store->InsertJob(job, first_event, &existing));
//
// Invariants (besides JobStore's):
//   - Durable on OK: a commit PostgreSQL acknowledged (synchronous_commit on, the server's
//     default; the store refuses a session where it is off).
//   - Fenced writes (fence_lease set): every write transaction first runs CheckLeaderFence with
//     the epoch of SetFenceEpoch, so a deposed leader's write is refused and never made
//     (FAILED_PRECONDITION), and a replica that has not been elected (epoch 0) refuses writes
//     with NOT_LEADER (common/not_leader.h) naming itself a follower. Reads are never fenced.
//   - A pool of `connections` sessions; a call borrows one for its whole transaction, waiting at
//     most statement_timeout for a free one (then UNAVAILABLE). A session that was lost is reopened
//     before its next use, never in the middle of a transaction, and a write whose COMMIT answer
//     was lost fails UNAVAILABLE (it may or may not have happened; the caller's retry is idempotent
//     or checks).
//   - Same schema shape as SqliteJobStore (jobs, events, checkpoints, artifacts, files,
//     file_blobs, tenant_blobs), created on Open under an advisory lock so replicas that start
//     together do not race; protos are stored as bytea.
//   - Errors never carry the password or row contents (PgConnection's rule).
#ifndef LORA_SERVER_STORE_POSTGRES_PG_JOB_STORE_H_
#define LORA_SERVER_STORE_POSTGRES_PG_JOB_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/job_store.h"
#include "server/store/postgres/pg_connection.h"

namespace lora::server::pg {

class PgJobStore final : public JobStore {
 public:
  struct Options {
    std::string conninfo;  // libpq conninfo or URI
    int connections = 4;   // sessions in the pool (1..64)
    absl::Duration connect_timeout = absl::Seconds(5);
    absl::Duration statement_timeout = absl::Seconds(30);
    // The leader lease whose epoch fences writes (replicas); unset: one lorad, no fencing.
    std::optional<std::string> fence_lease;
    // Names this replica in a follower's refusal ("lorad-1 does not lead").
    std::string replica_name = "this lorad replica";
  };
  // Connects every session (the database must be reachable now) and creates the schema.
  static absl::StatusOr<std::unique_ptr<PgJobStore>> Open(const Options& options);
  ~PgJobStore() override;
  PgJobStore(const PgJobStore&) = delete;
  PgJobStore& operator=(const PgJobStore&) = delete;

  // The epoch this replica leads under (0: it does not lead; writes are refused). Only with
  // fence_lease.
  void SetFenceEpoch(int64_t epoch) { fence_epoch_.store(epoch); }

  // JobStore
  absl::Status InsertJob(const lora::v1::Job& job, const lora::v1::JobEvent& first_event,
                         lora::v1::Job* existing) override;
  absl::Status UpdateJob(const lora::v1::Job& job,
                         const std::vector<lora::v1::JobEvent>& events) override;
  absl::StatusOr<lora::v1::Job> GetJob(const std::string& id) override;
  absl::StatusOr<lora::v1::Job> FindJobByRequestId(const std::string& tenant,
                                                   const std::string& request_id) override;
  absl::StatusOr<std::vector<lora::v1::Job>> ListJobs(const ListJobsQuery& query) override;
  absl::StatusOr<std::vector<lora::v1::Job>> ListActiveJobs() override;
  absl::StatusOr<std::vector<lora::v1::JobEvent>> ReadEvents(const std::string& job_id,
                                                             int64_t after_sequence,
                                                             int limit) override;
  absl::Status PutCheckpoint(const std::string& job_id,
                             const lora::v1::Checkpoint& checkpoint) override;
  absl::StatusOr<std::vector<lora::v1::Checkpoint>> ListCheckpoints(
      const std::string& job_id) override;
  absl::Status PutArtifact(const std::string& job_id, const lora::v1::ArtifactFile& file,
                           int64_t step, int32_t attempt) override;
  absl::StatusOr<lora::v1::ArtifactFile> GetArtifact(const std::string& job_id,
                                                     const std::string& path) override;
  absl::StatusOr<int64_t> CountJobs() override;
  absl::Status DeleteJob(const std::string& id) override;
  absl::StatusOr<std::vector<std::string>> JobsEndedBefore(int64_t before_us, int limit) override;
  absl::StatusOr<std::vector<std::string>> DeleteCheckpointsBefore(
      const std::string& job_id, int64_t first_kept_step) override;
  absl::Status InsertFile(const lora::v1::File& file) override;
  absl::StatusOr<lora::v1::File> GetFile(const std::string& id) override;
  absl::StatusOr<std::vector<lora::v1::File>> ListFiles(const ListFilesQuery& query) override;
  absl::StatusOr<std::vector<TenantBlob>> DeleteFile(const std::string& id) override;
  absl::Status PutTenantBlob(const TenantBlob& blob, int64_t now_us) override;
  absl::StatusOr<std::optional<int64_t>> FindTenantBlob(const std::string& tenant,
                                                        const std::string& sha256) override;
  absl::StatusOr<int64_t> TenantBlobBytes(const std::string& tenant) override;
  absl::StatusOr<bool> BlobHeld(const std::string& sha256) override;
  absl::StatusOr<std::vector<TenantBlob>> RemoveUnnamedTenantBlobs(int64_t before_us) override;
  void FailWritesForTesting(absl::Status status) override;

 private:
  struct Session {
    std::unique_ptr<PgConnection> conn;
    bool prepared = false;  // its current connection passed PrepareSession (the .cc)
  };

  explicit PgJobStore(Options options) : options_(std::move(options)) {}
  // Borrows a session (reopened first if it was lost), runs `fn` on it and returns it.
  absl::Status Borrow(absl::FunctionRef<absl::Status(Session&)> fn);
  // Reconnects `session` if it was lost (UNAVAILABLE when that fails) and prepares it.
  absl::Status Ready(Session& session);
  // Borrows a session and runs `fn` on it outside a transaction.
  absl::Status Read(absl::FunctionRef<absl::Status(PgConnection&)> fn);
  // One statement through Read.
  absl::StatusOr<PgResult> Query(absl::string_view sql, const PgParams& params,
                                 absl::string_view purpose);
  // Borrows a session and runs `fn` in one transaction after the fence check.
  absl::Status Write(absl::FunctionRef<absl::Status(PgConnection&)> fn);

  const Options options_;
  std::atomic<int64_t> fence_epoch_{0};
  absl::Mutex mu_;
  absl::CondVar returned_;  // a session went back to idle_
  std::vector<Session> idle_ ABSL_GUARDED_BY(mu_);
  absl::Status write_fault_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lora::server::pg

#endif  // LORA_SERVER_STORE_POSTGRES_PG_JOB_STORE_H_
