#include "client/file_upload.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/data_roots.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

// Stream breaks one upload survives (each retry continues from the offset lorad holds).
constexpr int kStreamAttempts = 5;

struct LocalEntry {
  std::string local;  // path on this machine
  std::string path;   // in the file set
  int64_t size = 0;
  std::string sha256;
};

absl::StatusOr<std::string> HashFile(const std::string& path, int64_t* size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  Sha256 h;
  std::string buffer(1 << 20, '\0');
  *size = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    h.Update(buffer.data(), static_cast<size_t>(n));
    *size += n;
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return h.HexDigest();
}

absl::StatusOr<std::vector<LocalEntry>> ListEntries(const std::string& local, bool* directory) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(local, ec);
  std::vector<LocalEntry> out;
  if (fs::is_regular_file(st)) {
    *directory = false;
    out.push_back({local, fs::path(local).filename().string()});
  } else if (fs::is_directory(st)) {
    *directory = true;
    for (fs::recursive_directory_iterator it(local, ec), end; !ec && it != end; it.increment(ec)) {
      const fs::file_status s = it->symlink_status(ec);
      if (fs::is_directory(s)) continue;
      const std::string rel = fs::relative(it->path(), local, ec).generic_string();
      if (!fs::is_regular_file(s)) {
        return absl::InvalidArgumentError(absl::StrCat(
            local, ": ", rel, " is not a regular file (links and special files are not uploaded)"));
      }
      out.push_back({it->path().string(), rel});
    }
    if (ec) return absl::InternalError(absl::StrCat(local, ": ", ec.message()));
    if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(local, ": empty directory"));
    std::sort(out.begin(), out.end(),
              [](const LocalEntry& a, const LocalEntry& b) { return a.path < b.path; });
  } else if (fs::exists(st)) {
    return absl::InvalidArgumentError(
        absl::StrCat(local, ": not a regular file or directory (links are not followed)"));
  } else {
    return absl::NotFoundError(absl::StrCat(local, ": no such file or directory"));
  }
  for (LocalEntry& e : out) {
    LORA_ASSIGN_OR_RETURN(e.sha256, HashFile(e.local, &e.size));
  }
  return out;
}

}  // namespace

FileUploader::FileUploader(LoraClient* client, int64_t chunk_bytes)
    : client_(client), chunk_bytes_(chunk_bytes) {}

absl::Status FileUploader::UploadBlob(const std::string& local, const std::string& sha256,
                                      int64_t size, const UploadProgressFn& progress) {
  absl::Status last;
  for (int attempt = 0; attempt < kStreamAttempts; ++attempt) {
    lora::v1::StartUploadRequest start;
    start.set_sha256(sha256);
    start.set_size(size);
    lora::v1::UploadStatus status;
    LORA_RETURN_IF_ERROR(client_->CallUnary(/*idempotent=*/true, [&](grpc::ClientContext* ctx) {
      return Stub()->StartUpload(ctx, start, &status);
    }));
    if (progress) progress({local, status.committed_size(), size});
    if (status.complete()) return absl::OkStatus();

    std::ifstream in(local, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat(local, ": cannot open"));
    in.seekg(status.committed_size());
    grpc::ClientContext ctx;
    client_->PrepareContext(&ctx, /*deadline=*/false);
    lora::v1::UploadStatus result;
    auto stub = Stub();  // outlives the stream
    auto writer = stub->WriteUpload(&ctx, &result);
    lora::v1::WriteUploadRequest message;
    auto* header = message.mutable_header();
    header->set_sha256(sha256);
    header->set_size(size);
    header->set_offset(status.committed_size());
    bool ok = writer->Write(message);
    int64_t sent = status.committed_size();
    std::string buffer(static_cast<size_t>(chunk_bytes_), '\0');
    while (ok && sent < size) {
      in.read(buffer.data(),
              static_cast<std::streamsize>(std::min<int64_t>(chunk_bytes_, size - sent)));
      const std::streamsize n = in.gcount();
      if (n <= 0) return absl::DataLossError(absl::StrCat(local, ": changed while uploading"));
      message.set_data(buffer.data(), static_cast<size_t>(n));
      ok = writer->Write(message);
      sent += n;
      if (ok && progress) progress({local, sent, size});
    }
    if (ok) writer->WritesDone();
    const absl::Status s = client_->ToStatus(writer->Finish());
    if (s.ok() && result.complete()) return absl::OkStatus();
    if (s.ok()) {
      last = absl::DataLossError(absl::StrCat(local, ": lorad holds only ", result.committed_size(),
                                              " of ", size, " bytes"));
      continue;
    }
    // The bytes did not match (the file changed under us, or a corrupt transfer): the server
    // discarded them; one more pass reads the file again from the start.
    if (absl::IsDataLoss(s) || absl::IsUnavailable(s) || absl::IsAborted(s) ||
        absl::IsFailedPrecondition(s)) {
      last = s;
      continue;
    }
    return s;
  }
  return absl::Status(last.code(), absl::StrCat("uploading ", local, " failed ", kStreamAttempts,
                                                " times; last: ", last.message()));
}

absl::StatusOr<lora::v1::File> FileUploader::Upload(const std::string& local,
                                                    const UploadProgressFn& progress) {
  bool directory = false;
  LORA_ASSIGN_OR_RETURN(std::vector<LocalEntry> entries, ListEntries(local, &directory));
  lora::v1::CreateFileRequest create;
  std::string base = fs::path(local).lexically_normal().filename().string();
  if (base.empty() || base == ".")
    base = fs::absolute(local).lexically_normal().filename().string();
  if (base.empty() || base == ".") base = "upload";
  create.set_display_name(base);
  create.set_directory(directory);
  for (const LocalEntry& e : entries) {
    LORA_RETURN_IF_ERROR(UploadBlob(e.local, e.sha256, e.size, progress));
    auto* entry = create.add_entries();
    entry->set_path(e.path);
    entry->set_size(e.size);
    entry->set_sha256(e.sha256);
  }
  lora::v1::File file;
  LORA_RETURN_IF_ERROR(client_->CallUnary(/*idempotent=*/true, [&](grpc::ClientContext* ctx) {
    return Stub()->CreateFile(ctx, create, &file);
  }));
  return file;
}

absl::StatusOr<lora::v1::File> FileUploader::GetFile(const std::string& name) {
  lora::v1::GetFileRequest request;
  request.set_name(name);
  lora::v1::File file;
  LORA_RETURN_IF_ERROR(client_->CallUnary(
      true, [&](grpc::ClientContext* ctx) { return Stub()->GetFile(ctx, request, &file); }));
  return file;
}

absl::StatusOr<lora::v1::ListFilesResponse> FileUploader::ListFiles(
    const lora::v1::ListFilesRequest& request) {
  lora::v1::ListFilesResponse response;
  LORA_RETURN_IF_ERROR(client_->CallUnary(
      true, [&](grpc::ClientContext* ctx) { return Stub()->ListFiles(ctx, request, &response); }));
  return response;
}

absl::Status FileUploader::DeleteFile(const std::string& name) {
  lora::v1::DeleteFileRequest request;
  request.set_name(name);
  lora::v1::DeleteFileResponse response;
  return client_->CallUnary(
      false, [&](grpc::ClientContext* ctx) { return Stub()->DeleteFile(ctx, request, &response); });
}

absl::Status UploadSpecFiles(lora::v1::JobSpec* spec, const std::string& base_dir,
                             FileUploader* uploader, const UploadProgressFn& progress,
                             std::vector<SpecRewrite>* rewrites) {
  std::map<std::string, std::string> uploaded;  // local (as resolved) -> files/{id}
  for (const SpecPath& p : SpecPaths(*spec)) {
    if (IsFileRef(p.path)) continue;
    std::string now;
    if (absl::StartsWith(p.path, kWorkerPathPrefix)) {
      now = p.path.substr(sizeof(kWorkerPathPrefix) - 1);
      if (now.empty() || now.front() != '/') {
        return absl::InvalidArgumentError(
            absl::StrCat(p.field, ": \"worker:\" must be followed by an absolute path"));
      }
    } else {
      const fs::path local =
          fs::path(p.path).is_absolute() ? fs::path(p.path) : fs::path(base_dir) / p.path;
      const std::string key = local.lexically_normal().string();
      auto done = uploaded.find(key);
      if (done != uploaded.end()) {
        now = done->second;
      } else {
        std::error_code ec;
        if (!fs::exists(fs::symlink_status(key, ec))) {
          return absl::NotFoundError(absl::StrCat(p.field, ": ", key,
                                                  " does not exist here; write \"worker:", p.path,
                                                  "\" for a path on the workers' disks"));
        }
        absl::StatusOr<lora::v1::File> file = uploader->Upload(key, progress);
        if (!file.ok()) {
          return absl::Status(file.status().code(),
                              absl::StrCat(p.field, ": ", file.status().message()));
        }
        now = file->name();
        uploaded[key] = now;
      }
    }
    if (rewrites) rewrites->push_back({p.field, p.path, now});
    SetSpecPath(spec, p.field, now);
  }
  return absl::OkStatus();
}

}  // namespace lora
