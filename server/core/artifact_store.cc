#include "server/core/artifact_store.h"

#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace lora::server {

absl::Status ValidateArtifactPath(const std::string& path) {
  if (path.empty() || path.size() > 1024)
    return absl::InvalidArgumentError("path: must be 1 to 1024 characters");
  if (path.front() == '/')
    return absl::InvalidArgumentError(absl::StrCat("path: '", path, "' must be relative"));
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("path: '", path, "' has an empty, '.' or '..' segment"));
    }
  }
  if (path.find('\0') != std::string::npos) return absl::InvalidArgumentError("path: contains NUL");
  return absl::OkStatus();
}

absl::Status ArtifactUpload::Write(const void* data, size_t size) {
  if (bytes_ + static_cast<int64_t>(size) > expected_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": more data than the declared ", expected_size_, " bytes"));
  }
  hash_.Update(data, size);
  bytes_ += static_cast<int64_t>(size);
  return file_->Write(data, size);
}

absl::Status ArtifactUpload::Finish() {
  if (bytes_ != expected_size_) {
    return absl::DataLossError(
        absl::StrCat(path_, ": received ", bytes_, " of ", expected_size_, " bytes"));
  }
  const std::string digest = hash_.HexDigest();
  if (digest != expected_sha256_) {
    return absl::DataLossError(absl::StrCat(path_, ": sha256 mismatch (got ", digest, ", declared ",
                                            expected_sha256_, ")"));
  }
  return file_->Commit();
}

absl::StatusOr<std::string> ArtifactStore::PathOf(const std::string& job_id,
                                                  const std::string& path) const {
  LORA_RETURN_IF_ERROR(ValidateArtifactPath(path));
  LORA_RETURN_IF_ERROR(ValidateArtifactPath(job_id));
  return JoinPath(JoinPath(root_, job_id), path);
}

absl::StatusOr<std::unique_ptr<ArtifactUpload>> ArtifactStore::BeginUpload(
    const std::string& job_id, const std::string& path, int64_t size, const std::string& sha256) {
  if (size < 0) return absl::InvalidArgumentError("size: must be >= 0");
  if (sha256.size() != 64) return absl::InvalidArgumentError("sha256: must be 64 hex characters");
  LORA_ASSIGN_OR_RETURN(std::string full, PathOf(job_id, path));
  LORA_RETURN_IF_ERROR(MakeDirectories(ParentDirectory(full)));
  auto upload = std::unique_ptr<ArtifactUpload>(new ArtifactUpload());
  LORA_ASSIGN_OR_RETURN(upload->file_, AtomicFile::Create(full));
  upload->expected_size_ = size;
  upload->expected_sha256_ = sha256;
  upload->path_ = path;
  return upload;
}

}  // namespace lora::server

namespace lora::server {

int ArtifactStore::RemoveLeftovers() {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> doomed;
  for (auto it = fs::recursive_directory_iterator(root_, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (IsAtomicWriteLeftover(name)) {
      doomed.push_back(it->path());
      if (it->is_directory(ec)) it.disable_recursion_pending();
    }
  }
  int removed = 0;
  for (const fs::path& p : doomed) removed += fs::remove_all(p, ec) > 0 ? 1 : 0;
  return removed;
}

}  // namespace lora::server
