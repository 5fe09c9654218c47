// Durable state of lorad in one SQLite file: jobs, their events, checkpoints and artifacts.
//
// WAL journal with synchronous=FULL: a call that returned OK survived a crash (an acknowledged
// CreateJob is never lost). Jobs are stored as lora.v1.Job protos plus indexed columns for the
// queries the service makes. Thread-safe (one connection behind a mutex; SQLite serializes
// writers anyway).
//
// Group commit: InsertJob and UpdateJob calls that arrive while another batch is being written
// and fsynced queue up, and the first of them then writes them all in one transaction, each in
// its own savepoint (one call's failure undoes only its own changes). Every caller is answered
// after the fsync of its batch, so nothing is acknowledged before it is durable, and N
// concurrent writers cost one fsync, not N.
//
//   LORA_ASSIGN_OR_RETURN(auto store, JobStore::Open({.path = dir + "/lorad.db"}));
//   LORA_RETURN_IF_ERROR(store->InsertJob(job, first_event, &existing));
#ifndef LORA_SERVER_STORE_JOB_STORE_H_
#define LORA_SERVER_STORE_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lora/v1/file.pb.h"
#include "lora/v1/job.pb.h"

struct sqlite3;

namespace lora::server {
namespace store_internal {
class StatementCache;
}  // namespace store_internal

struct ListJobsQuery {
  std::vector<lora::v1::JobState> states;  // any of (empty = all)
  std::vector<lora::v1::JobKind> kinds;
  std::optional<std::string> tenant;  // only this tenant's jobs (unset = all)
  // Keyset cursor: jobs strictly older than (create_time_us, id) in newest-first order
  // (strictly newer with `ascending`).
  std::optional<std::pair<int64_t, std::string>> before;
  bool ascending = false;  // oldest first
  int limit = 50;
};

struct ListFilesQuery {
  std::optional<std::string> tenant;                      // unset = all tenants
  std::optional<std::pair<int64_t, std::string>> before;  // keyset cursor, newest first
  int limit = 50;
};

// One blob a tenant has uploaded completely (the bytes it may name in its files).
struct TenantBlob {
  std::string tenant;
  std::string sha256;
  int64_t size = 0;
};

class JobStore {
 public:
  struct Options {
    std::string path;
  };
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const Options& options);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Inserts `job` (its last_sequence must equal first_event.sequence) with its first event in
  // one transaction. A job with the same non-empty request_id already there: ALREADY_EXISTS
  // and `*existing` holds it.
  absl::Status InsertJob(const lora::v1::Job& job, const lora::v1::JobEvent& first_event,
                         lora::v1::Job* existing);

  // Replaces the job row and appends `events` (consecutive sequences ending at
  // job.last_sequence) in one transaction.
  absl::Status UpdateJob(const lora::v1::Job& job, const std::vector<lora::v1::JobEvent>& events);

  absl::StatusOr<lora::v1::Job> GetJob(const std::string& id);
  // The job a tenant's request id created (NOT_FOUND if none).
  absl::StatusOr<lora::v1::Job> FindJobByRequestId(const std::string& tenant,
                                                   const std::string& request_id);
  absl::StatusOr<std::vector<lora::v1::Job>> ListJobs(const ListJobsQuery& query);
  // Jobs not in a terminal state, oldest first (recovery after a restart).
  absl::StatusOr<std::vector<lora::v1::Job>> ListActiveJobs();
  absl::StatusOr<std::vector<lora::v1::JobEvent>> ReadEvents(const std::string& job_id,
                                                             int64_t after_sequence, int limit);

  absl::Status PutCheckpoint(const std::string& job_id, const lora::v1::Checkpoint& checkpoint);
  absl::StatusOr<std::vector<lora::v1::Checkpoint>> ListCheckpoints(const std::string& job_id);

  absl::Status PutArtifact(const std::string& job_id, const lora::v1::ArtifactFile& file,
                           int64_t step, int32_t attempt);
  absl::StatusOr<lora::v1::ArtifactFile> GetArtifact(const std::string& job_id,
                                                     const std::string& path);
  absl::StatusOr<int64_t> CountJobs();
  // Removes a job that has ended with its events, checkpoints and artifact records in one
  // transaction (the caller removes the artifact files). FAILED_PRECONDITION for one that has
  // not ended, NOT_FOUND for none.
  absl::Status DeleteJob(const std::string& id);
  // Ids of up to `limit` jobs that ended before `before_us`, the longest-ended first.
  absl::StatusOr<std::vector<std::string>> JobsEndedBefore(int64_t before_us, int limit);

  // Deletes, in one transaction, the checkpoints before `first_kept_step` and the artifact
  // records of every checkpoint file before it, recorded or not: the files of a checkpoint
  // that never became whole (an upload cut short) belong to no record but take disk all the
  // same. Final outputs (step 0) stay. Returns the deleted files' job paths (the caller
  // removes the files).
  absl::StatusOr<std::vector<std::string>> DeleteCheckpointsBefore(const std::string& job_id,
                                                                   int64_t first_kept_step);

  // Uploaded files (server/files/file_manager.h) and the blobs each tenant holds. A tenant's
  // blob row lives while the tenant uploaded it recently or names it in a file.
  //
  // Inserts `file` and its entries' blob references; OK without change when a file with that
  // id exists (ids are content-derived, so it is the same file).
  absl::Status InsertFile(const lora::v1::File& file);
  absl::StatusOr<lora::v1::File> GetFile(const std::string& id);
  absl::StatusOr<std::vector<lora::v1::File>> ListFiles(const ListFilesQuery& query);
  // Deletes the file and its references in one transaction, with the tenant's blob rows no
  // other file of the tenant names; returns those blobs (the caller removes the bytes no
  // tenant holds any more).
  absl::StatusOr<std::vector<TenantBlob>> DeleteFile(const std::string& id);
  // Records that `tenant` uploaded the blob (idempotent).
  absl::Status PutTenantBlob(const TenantBlob& blob, int64_t now_us);
  // The blob's size if `tenant` holds it.
  absl::StatusOr<std::optional<int64_t>> FindTenantBlob(const std::string& tenant,
                                                        const std::string& sha256);
  // Bytes of the blobs `tenant` holds (what its storage quota counts, besides partial uploads).
  absl::StatusOr<int64_t> TenantBlobBytes(const std::string& tenant);
  // Whether any tenant holds the blob.
  absl::StatusOr<bool> BlobHeld(const std::string& sha256);
  // Removes the blob rows recorded before `before_us` that no file names (uploads whose
  // CreateFile never came); returns them.
  absl::StatusOr<std::vector<TenantBlob>> RemoveUnnamedTenantBlobs(int64_t before_us);

  // Caps the database at `pages` pages, so writes that grow it fail with SQLITE_FULL as on a
  // full disk (tests of what a failed write does; the default is SQLite's, no cap).
  absl::Status LimitPagesForTesting(int64_t pages);
  // Group commits wait until `writes` writes are queued before they start (1: no waiting), so
  // tests can make a batch of a known size.
  void GatherBatchesForTesting(int writes);
  // Every write fails with `status` before it reaches SQLite until called with OkStatus().
  void FailWritesForTesting(absl::Status status);

 private:
  struct PendingWrite;
  explicit JobStore(sqlite3* db);
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `body` (statements on db_, no transaction of its own) in the next group commit;
  // its status, or the commit's error if the batch could not be made durable.
  absl::Status GroupWrite(const std::function<absl::Status()>& body)
      ABSL_LOCKS_EXCLUDED(mu_, queue_mu_);
  // Writes `batch` in one transaction; sets each write's result.
  void CommitBatch(const std::vector<PendingWrite*>& batch) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<store_internal::StatementCache> statements_ ABSL_GUARDED_BY(mu_);
  absl::Status write_fault_ ABSL_GUARDED_BY(mu_);

  absl::Mutex queue_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::vector<PendingWrite*> queue_ ABSL_GUARDED_BY(queue_mu_);  // waiting for the next batch
  bool committing_ ABSL_GUARDED_BY(queue_mu_) = false;           // a batch is being written
  absl::CondVar batch_done_;
  int gather_ ABSL_GUARDED_BY(queue_mu_) = 1;
  absl::CondVar gathered_;  // the queue grew while gather_ > 1, or gather_ changed
  int64_t batches_ ABSL_GUARDED_BY(queue_mu_) = 0;
  int64_t grouped_writes_ ABSL_GUARDED_BY(queue_mu_) = 0;

 public:
  // Batches written and the writes they held since Open (their ratio is the grouping).
  std::pair<int64_t, int64_t> GroupCommitStats() ABSL_LOCKS_EXCLUDED(queue_mu_);
};

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsTerminal(lora::v1::JobState state);

int64_t ToMicros(const google::protobuf::Timestamp& t);
google::protobuf::Timestamp FromMicros(int64_t us);
int64_t NowMicros();

}  // namespace lora::server

#endif  // LORA_SERVER_STORE_JOB_STORE_H_
