#include "server/files/file_manager.h"

#include <unistd.h>

#include <algorithm>
#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/data_roots.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace lora::server {
namespace {

using lora::v1::File;
using lora::v1::FileEntry;
using lora::v1::UploadStatus;

constexpr size_t kMaxPathBytes = 1024;
constexpr size_t kMaxDisplayNameBytes = 255;

// A set entry's path: relative, "/"-separated, no empty, "." or ".." segment, printable.
absl::Status ValidateEntryPath(const std::string& path, const std::string& field) {
  if (path.empty() || path.size() > kMaxPathBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be 1 to ", kMaxPathBytes, " bytes"));
  }
  for (char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\') {
      return absl::InvalidArgumentError(field + ": control characters and '\\' are not allowed");
    }
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          field + ": must be a relative path without empty, \".\" or \"..\" segments");
    }
  }
  return absl::OkStatus();
}

std::string FileId(const std::string& tenant, bool directory,
                   const std::vector<FileEntry>& entries) {
  Sha256 h;
  h.Update(tenant);
  h.Update("\0", 1);
  h.Update(directory ? "d" : "f");
  for (const FileEntry& e : entries) {
    h.Update("\0", 1);
    h.Update(e.path());
    h.Update("\0", 1);
    h.Update(e.sha256());
    h.Update(absl::StrCat("\0", e.size()));
  }
  return "f-" + h.HexDigest().substr(0, 24);
}

absl::StatusOr<std::string> IdOf(const std::string& name) {
  if (!IsFileRef(name)) {
    return absl::InvalidArgumentError("name: must be \"files/{id}\"");
  }
  return name.substr(sizeof(kFileRefPrefix) - 1);
}

std::string PageToken(const File& f) {
  return absl::WebSafeBase64Escape(absl::StrCat(ToMicros(f.create_time()), "/", f.id()));
}

}  // namespace

FileUpload::FileUpload(FileManager* manager, std::string tenant, std::unique_ptr<BlobWriter> writer,
                       const lora::v1::UploadHeader& header)
    : manager_(manager), tenant_(std::move(tenant)), writer_(std::move(writer)), header_(header) {}

FileUpload::~FileUpload() {
  if (!closed_) {
    writer_.reset();
    manager_->Release(tenant_, header_.sha256());
  }
}

absl::Status FileUpload::Write(const std::string& data) {
  if (closed_) return absl::FailedPreconditionError("upload closed");
  return writer_->Write(data.data(), data.size());
}

absl::StatusOr<UploadStatus> FileUpload::Close() {
  if (closed_) return absl::FailedPreconditionError("upload closed");
  closed_ = true;
  const int64_t committed = writer_->committed();
  absl::StatusOr<bool> complete = writer_->Close();
  writer_.reset();
  absl::StatusOr<UploadStatus> out =
      complete.ok() ? manager_->Finished(tenant_, header_, *complete, committed)
                    : absl::StatusOr<UploadStatus>(complete.status());
  manager_->Release(tenant_, header_.sha256());
  return out;
}

absl::StatusOr<std::unique_ptr<FileManager>> FileManager::Create(Options options) {
  if (options.store == nullptr) return absl::InvalidArgumentError("FileManager: no store");
  if (options.root.empty()) return absl::InvalidArgumentError("FileManager: no root");
  return std::unique_ptr<FileManager>(new FileManager(std::move(options)));
}

absl::StatusOr<int64_t> FileManager::UsageLocked(const std::string& tenant) {
  LORA_ASSIGN_OR_RETURN(int64_t used, options_.store->TenantBlobBytes(tenant));
  const std::string key = BlobStore::TenantKey(tenant);
  for (const PartialUpload& p : blobs_.ListPartials()) {
    if (p.tenant_key == key) used += p.declared_size;  // reserved in full while it uploads
  }
  return used;
}

absl::StatusOr<int64_t> FileManager::TenantUsage(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  return UsageLocked(tenant);
}

absl::StatusOr<UploadStatus> FileManager::StartUpload(const std::string& tenant,
                                                      const lora::v1::StartUploadRequest& request) {
  LORA_RETURN_IF_ERROR(CheckWritable());
  LORA_RETURN_IF_ERROR(ValidateSha256(request.sha256(), "sha256"));
  if (request.size() < 0 || request.size() > options_.max_blob_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("size: must be in [0, ", options_.max_blob_bytes, "]"));
  }
  UploadStatus status;
  status.set_sha256(request.sha256());
  status.set_size(request.size());
  absl::MutexLock lock(&mu_);
  LORA_ASSIGN_OR_RETURN(std::optional<int64_t> held,
                        options_.store->FindTenantBlob(tenant, request.sha256()));
  if (held) {
    if (*held != request.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "size: ", request.size(), " but this sha256 was uploaded with ", *held, " bytes"));
    }
    status.set_committed_size(request.size());
    status.set_complete(true);
    return status;
  }
  std::optional<int64_t> partial = blobs_.PartialSize(tenant, request.sha256(), request.size());
  if (!partial) {
    LORA_ASSIGN_OR_RETURN(int64_t used, UsageLocked(tenant));
    if (options_.tenant_quota_bytes > 0 && used + request.size() > options_.tenant_quota_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "storage quota of tenant \"", tenant, "\": ", used, " of ", options_.tenant_quota_bytes,
          " bytes used, this upload needs ", request.size(),
          "; delete files (loractl files "
          "delete) or ask for a larger quota"));
    }
    // Creating the (empty) partial reserves the bytes against the quota.
    LORA_ASSIGN_OR_RETURN(auto w, blobs_.OpenPartial(tenant, request.sha256(), request.size(), 0));
    partial = 0;
    if (request.size() == 0) {  // nothing will be written: complete it now
      LORA_ASSIGN_OR_RETURN(bool complete, w->Close());
      if (complete) {
        LORA_RETURN_IF_ERROR(blobs_.Publish(tenant, request.sha256(), 0));
        LORA_RETURN_IF_ERROR(
            options_.store->PutTenantBlob({tenant, request.sha256(), 0}, NowMicros()));
        status.set_complete(true);
      }
    }
  }
  status.set_committed_size(*partial);
  return status;
}

absl::StatusOr<std::unique_ptr<FileUpload>> FileManager::OpenUpload(
    const std::string& tenant, const lora::v1::UploadHeader& header) {
  LORA_RETURN_IF_ERROR(CheckWritable());
  LORA_RETURN_IF_ERROR(ValidateSha256(header.sha256(), "header.sha256"));
  if (header.offset() < 0 || header.offset() > header.size()) {
    return absl::InvalidArgumentError("header.offset: must be in [0, header.size]");
  }
  {
    absl::MutexLock lock(&mu_);
    if (!blobs_.PartialSize(tenant, header.sha256(), header.size())) {
      return absl::FailedPreconditionError(
          "no upload of this sha256 and size is open: call StartUpload first");
    }
    if (!writing_.emplace(tenant, header.sha256()).second) {
      return absl::AbortedError(
          "another stream is uploading this blob; retry after it ends (StartUpload says where "
          "to continue)");
    }
  }
  auto writer = blobs_.OpenPartial(tenant, header.sha256(), header.size(), header.offset());
  if (!writer.ok()) {
    Release(tenant, header.sha256());
    return writer.status();
  }
  return std::unique_ptr<FileUpload>(new FileUpload(this, tenant, *std::move(writer), header));
}

void FileManager::Release(const std::string& tenant, const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  writing_.erase({tenant, sha256});
}

absl::StatusOr<UploadStatus> FileManager::Finished(const std::string& tenant,
                                                   const lora::v1::UploadHeader& header,
                                                   bool complete, int64_t committed) {
  UploadStatus status;
  status.set_sha256(header.sha256());
  status.set_size(header.size());
  status.set_committed_size(committed);
  if (complete) {
    // Under the lock with the record: a delete that drops the last holder's bytes sees either
    // neither or both.
    absl::MutexLock lock(&mu_);
    LORA_RETURN_IF_ERROR(blobs_.Publish(tenant, header.sha256(), header.size()));
    LORA_RETURN_IF_ERROR(
        options_.store->PutTenantBlob({tenant, header.sha256(), header.size()}, NowMicros()));
    status.set_complete(true);
  }
  return status;
}

absl::StatusOr<File> FileManager::CreateFile(const std::string& tenant,
                                             const lora::v1::CreateFileRequest& request) {
  LORA_RETURN_IF_ERROR(CheckWritable());
  if (request.display_name().empty() || request.display_name().size() > kMaxDisplayNameBytes ||
      absl::StrContains(request.display_name(), '/')) {
    return absl::InvalidArgumentError(
        absl::StrCat("display_name: must be a base name of 1 to ", kMaxDisplayNameBytes, " bytes"));
  }
  const int n = request.entries_size();
  if (n == 0 || n > options_.max_entries) {
    return absl::InvalidArgumentError(
        absl::StrCat("entries: must hold 1 to ", options_.max_entries, " files, got ", n));
  }
  if (!request.directory() && n != 1) {
    return absl::InvalidArgumentError("entries: a file that is not a directory has one entry");
  }
  std::vector<FileEntry> entries(request.entries().begin(), request.entries().end());
  for (int i = 0; i < n; ++i) {
    const std::string field = absl::StrCat("entries[", i, "]");
    const FileEntry& e = entries[static_cast<size_t>(i)];
    LORA_RETURN_IF_ERROR(ValidateEntryPath(e.path(), field + ".path"));
    if (!request.directory() && absl::StrContains(e.path(), '/')) {
      return absl::InvalidArgumentError(field + ".path: a single file's path is its base name");
    }
    LORA_RETURN_IF_ERROR(ValidateSha256(e.sha256(), field + ".sha256"));
    if (e.size() < 0) return absl::InvalidArgumentError(field + ".size: must be >= 0");
  }
  std::sort(entries.begin(), entries.end(),
            [](const FileEntry& a, const FileEntry& b) { return a.path() < b.path(); });
  int64_t total = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i > 0 && entries[i].path() == entries[i - 1].path()) {
      return absl::InvalidArgumentError(
          absl::StrCat("entries: \"", entries[i].path(), "\" appears twice"));
    }
    // A path that is also a directory of another entry ("a" and "a/b") cannot be laid out.
    if (i > 0 && absl::StartsWith(entries[i].path(), entries[i - 1].path() + "/")) {
      return absl::InvalidArgumentError(
          absl::StrCat("entries: \"", entries[i - 1].path(), "\" is both a file and a directory"));
    }
    total += entries[i].size();
  }
  const std::string id = FileId(tenant, request.directory(), entries);
  if (auto existing = options_.store->GetFile(id); existing.ok()) return *existing;
  for (const FileEntry& e : entries) {
    LORA_ASSIGN_OR_RETURN(std::optional<int64_t> held,
                          options_.store->FindTenantBlob(tenant, e.sha256()));
    if (!held || *held != e.size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "entries: \"", e.path(), "\" (sha256 ", e.sha256(), ", ", e.size(),
          " bytes) has not been uploaded completely: upload it first (StartUpload, WriteUpload)"));
    }
  }
  File file;
  file.set_id(id);
  file.set_name(kFileRefPrefix + id);
  file.set_display_name(request.display_name());
  file.set_directory(request.directory());
  for (FileEntry& e : entries) *file.add_entries() = std::move(e);
  file.set_size_bytes(total);
  *file.mutable_create_time() = FromMicros(NowMicros());
  file.set_tenant(tenant);
  LORA_RETURN_IF_ERROR(options_.store->InsertFile(file));
  return options_.store->GetFile(id);  // the stored one, should a concurrent create have won
}

absl::StatusOr<File> FileManager::GetFile(const std::optional<std::string>& tenant,
                                          const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, IdOf(name));
  absl::StatusOr<File> file = options_.store->GetFile(id);
  if (file.ok() && tenant && file->tenant() != *tenant) {
    return absl::NotFoundError(absl::StrCat(name, " not found"));  // as for a missing file
  }
  return file;
}

absl::StatusOr<lora::v1::ListFilesResponse> FileManager::ListFiles(
    const std::optional<std::string>& tenant, const lora::v1::ListFilesRequest& request) {
  if (request.page_size() < 0) return absl::InvalidArgumentError("page_size: must be >= 0");
  ListFilesQuery q;
  q.tenant = tenant;
  q.limit = request.page_size() == 0 ? 50 : std::min(request.page_size(), 1000);
  if (!request.page_token().empty()) {
    std::string raw;
    if (!absl::WebSafeBase64Unescape(request.page_token(), &raw)) raw.clear();
    std::pair<std::string, std::string> parts = absl::StrSplit(raw, absl::MaxSplits('/', 1));
    int64_t us = 0;
    if (!absl::SimpleAtoi(parts.first, &us) || parts.second.empty()) {
      return absl::InvalidArgumentError("page_token: not a token this server issued");
    }
    q.before = std::make_pair(us, parts.second);
  }
  LORA_ASSIGN_OR_RETURN(std::vector<File> files, options_.store->ListFiles(q));
  lora::v1::ListFilesResponse out;
  if (static_cast<int>(files.size()) == q.limit) out.set_next_page_token(PageToken(files.back()));
  for (File& f : files) *out.add_files() = std::move(f);
  return out;
}

absl::Status FileManager::DeleteFile(const std::optional<std::string>& tenant,
                                     const std::string& name) {
  LORA_RETURN_IF_ERROR(CheckWritable());
  LORA_ASSIGN_OR_RETURN(File file, GetFile(tenant, name));
  if (options_.in_use && options_.in_use(file.name())) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is named by a job that has not ended; delete it once the job ends"));
  }
  absl::MutexLock lock(&mu_);
  LORA_ASSIGN_OR_RETURN(std::vector<TenantBlob> released, options_.store->DeleteFile(file.id()));
  DropBlobsNoOneHolds(released);
  return absl::OkStatus();
}

void FileManager::DropBlobsNoOneHolds(const std::vector<TenantBlob>& released) {
  for (const TenantBlob& b : released) {
    absl::StatusOr<bool> held = options_.store->BlobHeld(b.sha256);
    if (held.ok() && !*held) blobs_.RemoveBlob(b.sha256);
  }
}

absl::StatusOr<std::vector<File>> FileManager::ResolveSpec(const std::string& tenant,
                                                           const lora::v1::JobSpec& spec) {
  std::vector<File> out;
  for (const SpecPath& p : SpecPaths(spec)) {
    if (!IsFileRef(p.path)) continue;
    if (std::any_of(out.begin(), out.end(), [&](const File& f) { return f.name() == p.path; }))
      continue;
    absl::StatusOr<File> file = GetFile(tenant, p.path);
    if (absl::IsNotFound(file.status())) {
      return absl::NotFoundError(
          absl::StrCat(p.field, ": ", p.path, " not found (upload it with loractl files upload)"));
    }
    if (!file.ok()) return file.status();
    out.push_back(*std::move(file));
  }
  return out;
}

absl::StatusOr<std::string> FileManager::BlobPath(const std::string& sha256) const {
  LORA_RETURN_IF_ERROR(ValidateSha256(sha256, "sha256"));
  if (!blobs_.Has(sha256)) return absl::NotFoundError("blob not stored");
  return blobs_.PathOf(sha256);
}

int FileManager::Reap(absl::Time now) {
  const int64_t before_us = absl::ToUnixMicros(now - options_.stall_timeout);
  int removed = 0;
  absl::MutexLock lock(&mu_);
  std::set<std::string> busy;
  for (const auto& [tenant, sha] : writing_) busy.insert(BlobStore::TenantKey(tenant) + sha);
  for (const PartialUpload& p : blobs_.ListPartials()) {
    if (p.mtime_us >= before_us || busy.count(p.tenant_key + p.sha256)) continue;
    if (::unlink(p.path.c_str()) == 0) ++removed;
  }
  absl::StatusOr<std::vector<TenantBlob>> unnamed =
      options_.store->RemoveUnnamedTenantBlobs(before_us);
  if (unnamed.ok()) {
    DropBlobsNoOneHolds(*unnamed);
    removed += static_cast<int>(unnamed->size());
  }
  return removed;
}

}  // namespace lora::server
