// Files uploaded by workers (checkpoints, final adapters), under <data_dir>/artifacts/<job>/.
// Paths are validated (relative, no "..") so a worker cannot write outside its job.
//
//   LORA_ASSIGN_OR_RETURN(auto upload, artifacts.BeginUpload(job_id, path, size, sha256));
//   LORA_RETURN_IF_ERROR(upload->Write(data, n));
//   LORA_RETURN_IF_ERROR(upload->Finish());   // checks size + sha256, then renames into place
#ifndef LORA_SERVER_CORE_ARTIFACT_STORE_H_
#define LORA_SERVER_CORE_ARTIFACT_STORE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/file_util.h"
#include "common/sha256.h"

namespace lora::server {

// Checks a job-relative artifact path: non-empty, relative, no "." / ".." segments.
absl::Status ValidateArtifactPath(const std::string& path);

class ArtifactUpload {
 public:
  absl::Status Write(const void* data, size_t size);
  absl::Status Finish();  // verifies and publishes the file
  int64_t bytes() const { return bytes_; }

 private:
  friend class ArtifactStore;
  std::unique_ptr<AtomicFile> file_;
  Sha256 hash_;
  int64_t bytes_ = 0;
  int64_t expected_size_ = 0;
  std::string expected_sha256_;
  std::string path_;
};

class ArtifactStore {
 public:
  explicit ArtifactStore(std::string root) : root_(std::move(root)) {}
  absl::StatusOr<std::unique_ptr<ArtifactUpload>> BeginUpload(const std::string& job_id,
                                                              const std::string& path, int64_t size,
                                                              const std::string& sha256);
  // Absolute path of a stored artifact (validated).
  absl::StatusOr<std::string> PathOf(const std::string& job_id, const std::string& path) const;
  const std::string& root() const { return root_; }
  // Removes what uploads cut short by a crash left behind (AtomicFile temp files, staging
  // directories). Only at startup, under the data-directory lock: no upload is in flight then.
  // Returns how many entries were removed.
  int RemoveLeftovers();

 private:
  std::string root_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_ARTIFACT_STORE_H_
