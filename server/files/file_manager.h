// Uploaded files: the core of lora.v1.FileService (server/grpc/file_service.h is its transport).
// Bytes go up as blobs (BlobStore: stored once, verified, resumable); CreateFile names a set of
// the tenant's blobs as a File, which job specs refer to as "files/{id}" and workers fetch.
//
//   LORA_ASSIGN_OR_RETURN(auto files, FileManager::Create({.store = store, .root = dir}));
//   LORA_ASSIGN_OR_RETURN(UploadStatus s, files->StartUpload("team-a", {sha256, size}));
//   LORA_ASSIGN_OR_RETURN(auto upload, files->OpenUpload("team-a", header));
//   LORA_RETURN_IF_ERROR(upload->Write(data));   ...   upload->Close();
//   LORA_ASSIGN_OR_RETURN(File f, files->CreateFile("team-a", request));
//
// Invariants:
// - Tenants are isolated: a tenant names only blobs it uploaded itself (never "someone already
//   has these bytes", which would confirm another tenant's file), sees only its own files, and
//   another tenant's file is NOT_FOUND, as a missing one. Admin callers pass tenant = nullopt.
// - Storage quota per tenant: its complete blobs (each counted once) plus its partial uploads.
// - One writer at a time per (tenant, blob): a second stream is ABORTED while one is open.
// - A file a job that has not ended names cannot be deleted (`in_use` says which do).
// - Reap() removes partial uploads untouched for `stall_timeout` and blobs uploaded that long
//   ago that no file names; bytes no tenant holds any more are removed at once.
#ifndef LORA_SERVER_FILES_FILE_MANAGER_H_
#define LORA_SERVER_FILES_FILE_MANAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lora/v1/file_service.pb.h"
#include "lora/v1/job_spec.pb.h"
#include "server/files/blob_store.h"
#include "server/store/job_store.h"

namespace lora::server {

class FileManager;

// One open WriteUpload stream. Close() (or destruction) releases the (tenant, blob) slot.
class FileUpload {
 public:
  ~FileUpload();
  absl::Status Write(const std::string& data);
  // The status after the last write: complete once every byte arrived and verified.
  absl::StatusOr<lora::v1::UploadStatus> Close();

 private:
  friend class FileManager;
  FileUpload(FileManager* manager, std::string tenant, std::unique_ptr<BlobWriter> writer,
             const lora::v1::UploadHeader& header);
  FileManager* manager_;
  std::string tenant_;
  std::unique_ptr<BlobWriter> writer_;
  lora::v1::UploadHeader header_;
  bool closed_ = false;
};

class FileManager {
 public:
  struct Options {
    JobStore* store = nullptr;
    std::string root;                // <data dir>/blobs
    int64_t tenant_quota_bytes = 0;  // 0 = no quota
    absl::Duration stall_timeout = absl::Hours(1);
    int max_entries = 10000;  // per file set
    int64_t max_blob_bytes = int64_t{1} << 40;
    // Whether a job that has not ended names the file ("files/{id}"); set by lorad once the job
    // manager exists. Unset: no file is in use.
    std::function<bool(const std::string& file_name)> in_use;
    // OK when this lorad may write (the leader, or the only one); else the status uploads,
    // CreateFile and DeleteFile fail with before any byte or record is written (a follower
    // replica). Unset: always writable.
    std::function<absl::Status()> writable;
  };
  static absl::StatusOr<std::unique_ptr<FileManager>> Create(Options options);
  // Sets Options::in_use once the job manager exists (before serving).
  void SetInUse(std::function<bool(const std::string& file_name)> in_use) {
    options_.in_use = std::move(in_use);
  }
  // Sets Options::writable once the job manager exists (before serving).
  void SetWritable(std::function<absl::Status()> writable) {
    options_.writable = std::move(writable);
  }

  absl::StatusOr<lora::v1::UploadStatus> StartUpload(const std::string& tenant,
                                                     const lora::v1::StartUploadRequest& request);
  absl::StatusOr<std::unique_ptr<FileUpload>> OpenUpload(const std::string& tenant,
                                                         const lora::v1::UploadHeader& header);
  absl::StatusOr<lora::v1::File> CreateFile(const std::string& tenant,
                                            const lora::v1::CreateFileRequest& request);
  // `tenant` nullopt: any tenant's (admins).
  absl::StatusOr<lora::v1::File> GetFile(const std::optional<std::string>& tenant,
                                         const std::string& name);
  absl::StatusOr<lora::v1::ListFilesResponse> ListFiles(const std::optional<std::string>& tenant,
                                                        const lora::v1::ListFilesRequest& request);
  absl::Status DeleteFile(const std::optional<std::string>& tenant, const std::string& name);

  // The files a spec's path fields name, in SpecPaths order (each once). NOT_FOUND naming the
  // field for one that is not the tenant's.
  absl::StatusOr<std::vector<lora::v1::File>> ResolveSpec(const std::string& tenant,
                                                          const lora::v1::JobSpec& spec);
  // Where the worker reads a blob from (FetchBlob); NOT_FOUND when it is not stored.
  absl::StatusOr<std::string> BlobPath(const std::string& sha256) const;

  // Bytes the tenant's quota counts now.
  absl::StatusOr<int64_t> TenantUsage(const std::string& tenant);
  // Removes stalled partial uploads and unnamed blobs (see above); returns how many.
  int Reap(absl::Time now);

 private:
  friend class FileUpload;
  explicit FileManager(Options options) : options_(std::move(options)), blobs_(options_.root) {}
  void Release(const std::string& tenant, const std::string& sha256);
  absl::Status CheckWritable() const {
    return options_.writable ? options_.writable() : absl::OkStatus();
  }
  absl::StatusOr<lora::v1::UploadStatus> Finished(const std::string& tenant,
                                                  const lora::v1::UploadHeader& header,
                                                  bool complete, int64_t committed);
  absl::StatusOr<int64_t> UsageLocked(const std::string& tenant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropBlobsNoOneHolds(const std::vector<TenantBlob>& released)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Options options_;
  BlobStore blobs_;
  // Serializes quota checks, blob publication and removal (uploads' data writes run outside).
  absl::Mutex mu_;
  std::set<std::pair<std::string, std::string>> writing_ ABSL_GUARDED_BY(mu_);  // tenant, sha
};

}  // namespace lora::server

#endif  // LORA_SERVER_FILES_FILE_MANAGER_H_
