// The durable state of lorad: jobs, their events, checkpoints, artifact records and uploaded
// files. Two implementations:
//   SqliteJobStore    (sqlite_job_store.h)       one file on the controller's disk (default)
//   PgJobStore        (postgres/pg_job_store.h)  PostgreSQL, shared by lorad replicas
//
//   LORA_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store,
//                         SqliteJobStore::Open({.path = dir + "/lorad.db"}));
//   LORA_RETURN_IF_ERROR(store->InsertJob(job, first_event, &existing));
//
// Invariants every implementation keeps (tests/integration/job_store_conformance_test.cc runs
// the same cases against both):
//   - A call that returned OK is durable: an acknowledged CreateJob survives a crash.
//   - Each write is one transaction: a failed one changes nothing.
//   - Jobs are stored as lora.v1.Job protos plus the indexed columns the queries need; listing
//     is newest first by (create_time, id) with keyset cursors.
//   - Thread-safe.
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

namespace lora::server {

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
  virtual ~JobStore() = default;

  // Inserts `job` (its last_sequence must equal first_event.sequence) with its first event in
  // one transaction. A job with the same non-empty request_id already there: ALREADY_EXISTS
  // and `*existing` holds it.
  virtual absl::Status InsertJob(const lora::v1::Job& job, const lora::v1::JobEvent& first_event,
                                 lora::v1::Job* existing) = 0;

  // Replaces the job row and appends `events` (consecutive sequences ending at
  // job.last_sequence) in one transaction.
  virtual absl::Status UpdateJob(const lora::v1::Job& job,
                                 const std::vector<lora::v1::JobEvent>& events) = 0;

  virtual absl::StatusOr<lora::v1::Job> GetJob(const std::string& id) = 0;
  // The job a tenant's request id created (NOT_FOUND if none).
  virtual absl::StatusOr<lora::v1::Job> FindJobByRequestId(const std::string& tenant,
                                                           const std::string& request_id) = 0;
  virtual absl::StatusOr<std::vector<lora::v1::Job>> ListJobs(const ListJobsQuery& query) = 0;
  // Jobs not in a terminal state, oldest first (recovery after a restart).
  virtual absl::StatusOr<std::vector<lora::v1::Job>> ListActiveJobs() = 0;
  virtual absl::StatusOr<std::vector<lora::v1::JobEvent>> ReadEvents(const std::string& job_id,
                                                                     int64_t after_sequence,
                                                                     int limit) = 0;

  virtual absl::Status PutCheckpoint(const std::string& job_id,
                                     const lora::v1::Checkpoint& checkpoint) = 0;
  virtual absl::StatusOr<std::vector<lora::v1::Checkpoint>> ListCheckpoints(
      const std::string& job_id) = 0;

  virtual absl::Status PutArtifact(const std::string& job_id, const lora::v1::ArtifactFile& file,
                                   int64_t step, int32_t attempt) = 0;
  virtual absl::StatusOr<lora::v1::ArtifactFile> GetArtifact(const std::string& job_id,
                                                             const std::string& path) = 0;
  virtual absl::StatusOr<int64_t> CountJobs() = 0;
  // Removes a job that has ended with its events, checkpoints and artifact records in one
  // transaction (the caller removes the artifact files). FAILED_PRECONDITION for one that has
  // not ended, NOT_FOUND for none.
  virtual absl::Status DeleteJob(const std::string& id) = 0;
  // Ids of up to `limit` jobs that ended before `before_us`, the longest-ended first.
  virtual absl::StatusOr<std::vector<std::string>> JobsEndedBefore(int64_t before_us,
                                                                   int limit) = 0;

  // Deletes, in one transaction, the checkpoints before `first_kept_step` and the artifact
  // records of every checkpoint file before it, recorded or not: the files of a checkpoint
  // that never became whole (an upload cut short) belong to no record but take disk all the
  // same. Final outputs (step 0) stay. Returns the deleted files' job paths (the caller
  // removes the files).
  virtual absl::StatusOr<std::vector<std::string>> DeleteCheckpointsBefore(
      const std::string& job_id, int64_t first_kept_step) = 0;

  // Uploaded files (server/files/file_manager.h) and the blobs each tenant holds. A tenant's
  // blob row lives while the tenant uploaded it recently or names it in a file.
  //
  // Inserts `file` and its entries' blob references; OK without change when a file with that
  // id exists (ids are content-derived, so it is the same file).
  virtual absl::Status InsertFile(const lora::v1::File& file) = 0;
  virtual absl::StatusOr<lora::v1::File> GetFile(const std::string& id) = 0;
  virtual absl::StatusOr<std::vector<lora::v1::File>> ListFiles(const ListFilesQuery& query) = 0;
  // Deletes the file and its references in one transaction, with the tenant's blob rows no
  // other file of the tenant names; returns those blobs (the caller removes the bytes no
  // tenant holds any more).
  virtual absl::StatusOr<std::vector<TenantBlob>> DeleteFile(const std::string& id) = 0;
  // Records that `tenant` uploaded the blob (idempotent).
  virtual absl::Status PutTenantBlob(const TenantBlob& blob, int64_t now_us) = 0;
  // The blob's size if `tenant` holds it.
  virtual absl::StatusOr<std::optional<int64_t>> FindTenantBlob(const std::string& tenant,
                                                                const std::string& sha256) = 0;
  // Bytes of the blobs `tenant` holds (what its storage quota counts, besides partial uploads).
  virtual absl::StatusOr<int64_t> TenantBlobBytes(const std::string& tenant) = 0;
  // Whether any tenant holds the blob.
  virtual absl::StatusOr<bool> BlobHeld(const std::string& sha256) = 0;
  // Removes the blob rows recorded before `before_us` that no file names (uploads whose
  // CreateFile never came); returns them.
  virtual absl::StatusOr<std::vector<TenantBlob>> RemoveUnnamedTenantBlobs(int64_t before_us) = 0;

  // Every write fails with `status` before it reaches the database until called with
  // OkStatus() (tests of what a failed write does).
  virtual void FailWritesForTesting(absl::Status status) = 0;
};

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsTerminal(lora::v1::JobState state);

int64_t ToMicros(const google::protobuf::Timestamp& t);
google::protobuf::Timestamp FromMicros(int64_t us);
int64_t NowMicros();

}  // namespace lora::server

#endif  // LORA_SERVER_STORE_JOB_STORE_H_
