// The files a rank exchanges with lorad: its checkpoints and outputs uploaded, the checkpoint it
// resumes from fetched. Each call is retried under its RetryPolicy and can be cut short: a
// draining worker aborts fetches (its ranks will not start), the end of the drain aborts
// everything.
//
//   ArtifactTransfer transfer([&] { return stub.get(); }, add_metadata, RetryPolicy::Upload(),
//   RetryPolicy::Fetch()); LORA_ASSIGN_OR_RETURN(FileDigest up, transfer.Upload(ref,
//   "/runs/r0/checkpoints/step-10/a.bin",
//                                                        "checkpoints/step-10/a.bin", 10));
//   LORA_ASSIGN_OR_RETURN(int64_t step, transfer.FetchCheckpoint(assignment, run_dir, warn));
//   transfer.AbortAll();  // from any thread: calls in flight end CANCELLED
//
// Invariants: a fetched file appears under its final name only once its sha256 matched
// (AtomicFile); an aborted transfer never retries; the lock here is a leaf (nothing is called
// with it held but gRPC's TryCancel).
#ifndef LORA_WORKER_AGENT_ARTIFACT_TRANSFER_H_
#define LORA_WORKER_AGENT_ARTIFACT_TRANSFER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lora/engine/v1/events.pb.h"
#include "lora/worker/v1/worker_service.grpc.pb.h"
#include "worker/agent/retry_policy.h"

namespace lora {

class ArtifactTransfer {
 public:
  // `stub` returns the controller to call now (each try asks again, so a retry follows a
  // failover to another lorad replica); `add_metadata` adds the worker's credentials to each
  // call's context.
  ArtifactTransfer(std::function<lora::worker::v1::WorkerService::StubInterface*()> stub,
                   std::function<void(grpc::ClientContext*)> add_metadata, RetryPolicy upload,
                   RetryPolicy fetch);

  // Uploads one file as an artifact of the rank's job; its path, size and sha256.
  absl::StatusOr<lora::engine::v1::FileDigest> Upload(const lora::worker::v1::RankRef& ref,
                                                      const std::string& local,
                                                      const std::string& job_path, int64_t step);
  // Fetches one artifact file to `local`; DATA_LOSS when it does not match `sha256`.
  absl::Status Fetch(const std::string& job_id, const std::string& job_path,
                     const std::string& local, const std::string& sha256);
  // Fetches one blob of an uploaded file the rank's assignment names (Assignment.files) to
  // `local`; DATA_LOSS when it does not match `sha256`.
  absl::Status FetchBlob(const lora::worker::v1::RankRef& ref, const std::string& sha256,
                         const std::string& local);
  // Fetches the checkpoint an assignment resumes from into `run_dir`: `resume`, or when it
  // fails verification (DATA_LOSS), the first of `fallback_resume` that passes; `warn` is told
  // of each one skipped. The step fetched; 0 when there is none or none verified (a fresh
  // start). Other errors (lorad unreachable for the whole policy, a path that is not relative)
  // are returned.
  absl::StatusOr<int64_t> FetchCheckpoint(const lora::worker::v1::Assignment& assignment,
                                          const std::string& run_dir,
                                          const std::function<void(const std::string&)>& warn);

  void AbortFetches() ABSL_LOCKS_EXCLUDED(mu_);
  void AbortAll() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  enum class Kind { kUpload, kFetch };
  using OpenStream =
      std::function<std::unique_ptr<grpc::ClientReaderInterface<lora::v1::ArtifactChunk>>(
          grpc::ClientContext* ctx, int64_t offset)>;
  // One download with retries, resumed at the offset reached; verified, then committed.
  absl::Status FetchStream(const std::string& what, const OpenStream& open,
                           const std::string& local, const std::string& sha256);
  // One RPC with retries: each try gets a fresh, cancellable context. `try_once` sets *local
  // for a failure on this side (a file it cannot read or write), which is never retried.
  absl::Status Call(
      Kind kind, const std::string& what,
      const std::function<grpc::Status(grpc::ClientContext*, absl::Status* local)>& try_once)
      ABSL_LOCKS_EXCLUDED(mu_);
  bool AbortedLocked(Kind kind) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::function<lora::worker::v1::WorkerService::StubInterface*()> stub_;
  const std::function<void(grpc::ClientContext*)> add_metadata_;
  const RetryPolicy upload_policy_, fetch_policy_;
  absl::Mutex mu_;
  absl::CondVar cv_;  // an abort, for a backoff in progress
  std::map<grpc::ClientContext*, Kind> calls_ ABSL_GUARDED_BY(mu_);
  bool fetches_aborted_ ABSL_GUARDED_BY(mu_) = false;
  bool all_aborted_ ABSL_GUARDED_BY(mu_) = false;
};

// A path from the controller joined under a run directory: relative, no "." or ".." parts.
bool IsSafeRelativePath(const std::string& path);

}  // namespace lora

#endif  // LORA_WORKER_AGENT_ARTIFACT_TRANSFER_H_
