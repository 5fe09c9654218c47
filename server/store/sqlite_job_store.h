// JobStore in one SQLite file on the controller's disk: the embedded default.
//
// WAL journal with synchronous=FULL: a call that returned OK survived a crash. One connection
// behind a mutex (SQLite serializes writers anyway).
//
// Group commit: InsertJob and UpdateJob calls that arrive while another batch is being written
// and fsynced queue up, and the first of them then writes them all in one transaction, each in
// its own savepoint (one call's failure undoes only its own changes). Every caller is answered
// after the fsync of its batch, so nothing is acknowledged before it is durable, and N
// concurrent writers cost one fsync, not N.
//
//   LORA_ASSIGN_OR_RETURN(auto store, SqliteJobStore::Open({.path = dir + "/lorad.db"}));
#ifndef LORA_SERVER_STORE_SQLITE_JOB_STORE_H_
#define LORA_SERVER_STORE_SQLITE_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/store/job_store.h"

struct sqlite3;

namespace lora::server {
namespace store_internal {
class StatementCache;
}  // namespace store_internal

class SqliteJobStore final : public JobStore {
 public:
  struct Options {
    std::string path;
  };
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const Options& options);
  ~SqliteJobStore() override;
  SqliteJobStore(const SqliteJobStore&) = delete;
  SqliteJobStore& operator=(const SqliteJobStore&) = delete;

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

  // Caps the database at `pages` pages, so writes that grow it fail with SQLITE_FULL as on a
  // full disk (tests of what a failed write does; the default is SQLite's, no cap).
  absl::Status LimitPagesForTesting(int64_t pages);
  // Group commits wait until `writes` writes are queued before they start (1: no waiting), so
  // tests can make a batch of a known size.
  void GatherBatchesForTesting(int writes);
  void FailWritesForTesting(absl::Status status) override;

 private:
  struct PendingWrite;
  explicit SqliteJobStore(sqlite3* db);
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

}  // namespace lora::server

#endif  // LORA_SERVER_STORE_SQLITE_JOB_STORE_H_
