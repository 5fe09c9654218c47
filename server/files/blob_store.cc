#include "server/files/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace lora::server {
namespace {

namespace fs = std::filesystem;

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

}  // namespace

absl::Status ValidateSha256(const std::string& sha256, const std::string& field) {
  bool ok = sha256.size() == 64;
  for (char c : sha256) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (!ok) return absl::InvalidArgumentError(field + ": must be 64 lowercase hex digits");
  return absl::OkStatus();
}

BlobWriter::~BlobWriter() {
  if (fd_ >= 0) close(fd_);
}

absl::Status BlobWriter::Write(const void* data, size_t size) {
  if (static_cast<int64_t>(size) > size_ - offset_) {
    return absl::InvalidArgumentError(absl::StrCat("data: ", offset_ + static_cast<int64_t>(size),
                                                   " bytes would pass the declared size of ",
                                                   size_));
  }
  const char* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    const ssize_t n = write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("write upload");
    p += n;
    left -= static_cast<size_t>(n);
  }
  hash_.Update(data, size);
  offset_ += static_cast<int64_t>(size);
  return absl::OkStatus();
}

absl::StatusOr<bool> BlobWriter::Close() {
  if (offset_ < size_) {
    // Not durable yet: the next StartUpload reports the size the file has then.
    close(fd_);
    fd_ = -1;
    return false;
  }
  if (fsync(fd_) != 0) return Errno("fsync upload");
  close(fd_);
  fd_ = -1;
  if (hash_.HexDigest() != sha256_) {
    unlink(partial_path_.c_str());
    return absl::DataLossError(
        "the uploaded bytes do not match their sha256; the partial upload was discarded, "
        "upload again from offset 0");
  }
  return true;
}

absl::Status BlobStore::Publish(const std::string& tenant, const std::string& sha256,
                                int64_t size) {
  const std::string partial = PartialPath(tenant, sha256, size), blob = PathOf(sha256);
  struct stat st;
  if (stat(blob.c_str(), &st) == 0) {  // already stored (another tenant's upload)
    unlink(partial.c_str());
    return absl::OkStatus();
  }
  const std::string dir = ParentDirectory(blob);
  LORA_RETURN_IF_ERROR(MakeDirectories(dir));
  chmod(partial.c_str(), 0444);
  if (rename(partial.c_str(), blob.c_str()) != 0) return Errno("publish blob");
  LORA_RETURN_IF_ERROR(SyncDirectory(dir));
  return SyncDirectory(ParentDirectory(partial));
}

BlobStore::BlobStore(std::string root) : root_(std::move(root)) {}

std::string BlobStore::TenantKey(const std::string& tenant) {
  Sha256 h;
  h.Update("lorad-tenant\0", 13);
  h.Update(tenant);
  return h.HexDigest().substr(0, 16);
}

bool BlobStore::Has(const std::string& sha256) const {
  struct stat st;
  return stat(PathOf(sha256).c_str(), &st) == 0;
}

std::string BlobStore::PathOf(const std::string& sha256) const {
  return absl::StrCat(root_, "/sha256/", sha256.substr(0, 2), "/", sha256);
}

std::string BlobStore::PartialPath(const std::string& tenant, const std::string& sha256,
                                   int64_t size) const {
  return absl::StrCat(root_, "/partial/", TenantKey(tenant), "-", sha256, "-", size);
}

std::optional<int64_t> BlobStore::PartialSize(const std::string& tenant, const std::string& sha256,
                                              int64_t size) const {
  struct stat st;
  if (stat(PartialPath(tenant, sha256, size).c_str(), &st) != 0) return std::nullopt;
  return st.st_size;
}

absl::StatusOr<std::unique_ptr<BlobWriter>> BlobStore::OpenPartial(const std::string& tenant,
                                                                   const std::string& sha256,
                                                                   int64_t size, int64_t offset) {
  LORA_RETURN_IF_ERROR(MakeDirectories(root_ + "/partial"));
  std::unique_ptr<BlobWriter> w(new BlobWriter());
  w->partial_path_ = PartialPath(tenant, sha256, size);
  w->blob_path_ = PathOf(sha256);
  w->sha256_ = sha256;
  w->size_ = size;
  w->fd_ = open(w->partial_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (w->fd_ < 0) return Errno("open upload");
  struct stat st;
  if (fstat(w->fd_, &st) != 0) return Errno("stat upload");
  if (st.st_size > size) {  // cannot be a prefix of this blob
    if (ftruncate(w->fd_, 0) != 0) return Errno("truncate upload");
    st.st_size = 0;
  }
  if (offset != st.st_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("header.offset: ", offset, " but the server holds ", st.st_size,
                     " bytes of this upload; continue from there (StartUpload reports it)"));
  }
  // Hash what is already there: the final check covers every byte, not only this stream's.
  std::string buffer(1 << 20, '\0');
  int64_t done = 0;
  while (done < offset) {
    const ssize_t n =
        pread(w->fd_, buffer.data(),
              static_cast<size_t>(std::min<int64_t>(offset - done, buffer.size())), done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Errno("read upload");
    w->hash_.Update(buffer.data(), static_cast<size_t>(n));
    done += n;
  }
  if (lseek(w->fd_, offset, SEEK_SET) < 0) return Errno("seek upload");
  w->offset_ = offset;
  return w;
}

void BlobStore::RemovePartial(const std::string& tenant, const std::string& sha256, int64_t size) {
  unlink(PartialPath(tenant, sha256, size).c_str());
}

void BlobStore::RemoveBlob(const std::string& sha256) {
  const std::string path = PathOf(sha256);
  unlink(path.c_str());
  rmdir(ParentDirectory(path).c_str());  // only when empty
}

std::vector<PartialUpload> BlobStore::ListPartials() const {
  std::vector<PartialUpload> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root_ + "/partial", ec)) {
    const std::string name = entry.path().filename().string();
    const std::vector<std::string> parts = absl::StrSplit(name, '-');
    int64_t declared = 0;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[2], &declared)) continue;
    struct stat st;
    if (stat(entry.path().c_str(), &st) != 0) continue;
    PartialUpload p;
    p.tenant_key = parts[0];
    p.sha256 = parts[1];
    p.declared_size = declared;
    p.size = st.st_size;
    p.mtime_us = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000 + st.st_mtim.tv_nsec / 1000;
    p.path = entry.path().string();
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace lora::server
