#include "common/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace lora {
namespace {

absl::Status ErrnoError(absl::string_view what, absl::string_view path) {
  int err = errno;
  std::string message = absl::StrCat(path, ": ", what, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  if (err == ENOSPC) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

}  // namespace

std::string ParentDirectory(const std::string& path) {
  std::filesystem::path p(path);
  std::string parent = p.parent_path().string();
  return parent.empty() ? "." : parent;
}

std::string JoinPath(absl::string_view a, absl::string_view b) {
  if (a.empty()) return std::string(b);
  if (!b.empty() && b.front() == '/') return std::string(b);
  if (a.back() == '/') return absl::StrCat(a, b);
  return absl::StrCat(a, "/", b);
}

absl::StatusOr<std::unique_ptr<AtomicFile>> AtomicFile::Create(const std::string& path) {
  std::string temp = absl::StrCat(path, ".tmp-", ::getpid(), "-XXXXXX");
  int fd = ::mkostemp(temp.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot create temporary file", temp);
  ::fchmod(fd, 0644);
  return std::unique_ptr<AtomicFile>(new AtomicFile(path, std::move(temp), fd));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

absl::Status AtomicFile::Write(const void* data, size_t size) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": already committed"));
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write failed", temp_path_);
    }
    p += n;
    size -= static_cast<size_t>(n);
    bytes_written_ += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFile::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": already committed"));
  if (::fsync(fd_) != 0) return ErrnoError("fsync failed", temp_path_);
  if (::close(fd_) != 0) {
    fd_ = -1;
    return ErrnoError("close failed", temp_path_);
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) return ErrnoError("rename failed", path_);
  committed_ = true;
  return SyncDirectory(ParentDirectory(path_));
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  auto file = AtomicFile::Create(path);
  if (!file.ok()) return file.status();
  absl::Status status = (*file)->Write(contents);
  if (!status.ok()) return status;
  return (*file)->Commit();
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string line;
  std::getline(in, line);
  line = std::string(absl::StripAsciiWhitespace(line));
  if (line.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty"));
  return line;
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!std::filesystem::exists(path))
      return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for reading"));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read failed"));
  return ss.str();
}

absl::Status SyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync directory failed", dir);
  return absl::OkStatus();
}

absl::Status ReplaceDirectory(const std::string& from, const std::string& to) {
  std::error_code ec;
  std::string aside;
  if (std::filesystem::exists(to, ec)) {
    aside = absl::StrCat(to, ".old-", ::getpid());
    std::filesystem::remove_all(aside, ec);
    if (::rename(to.c_str(), aside.c_str()) != 0) return ErrnoError("cannot move aside", to);
  }
  if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoError("cannot rename into place", to);
  absl::Status synced = SyncDirectory(ParentDirectory(to));
  if (!aside.empty()) std::filesystem::remove_all(aside, ec);
  return synced;
}

absl::StatusOr<std::unique_ptr<StagedDirectory>> StagedDirectory::Create(
    const std::string& final_dir, const std::vector<std::string>& marker_files) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string final_clean = fs::path(final_dir).lexically_normal().string();
  while (final_clean.size() > 1 && final_clean.back() == '/') final_clean.pop_back();
  if (fs::exists(final_clean, ec)) {
    if (!fs::is_directory(final_clean, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat(final_dir, ": exists and is not a directory"));
    }
    bool empty = fs::is_empty(final_clean, ec);
    bool ours = false;
    for (const std::string& marker : marker_files)
      ours = ours || fs::exists(JoinPath(final_clean, marker), ec);
    if (!empty && !ours) {
      return absl::FailedPreconditionError(absl::StrCat(
          final_dir,
          ": exists, is not empty and does not look like an output of ours; refusing to "
          "replace it (choose a new directory or empty it)"));
    }
  }
  absl::Status made = MakeDirectories(ParentDirectory(final_clean));
  if (!made.ok()) return made;
  std::string staging = absl::StrCat(final_clean, ".staging-", ::getpid(), "-XXXXXX");
  if (::mkdtemp(staging.data()) == nullptr)
    return ErrnoError("cannot create staging directory", staging);
  ::chmod(staging.c_str(), 0755);  // mkdtemp makes it 0700; outputs are meant to be shared
  return std::unique_ptr<StagedDirectory>(new StagedDirectory(final_clean, staging));
}

StagedDirectory::~StagedDirectory() {
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove_all(staging_, ec);
  }
}

absl::Status StagedDirectory::Commit() {
  absl::Status synced = SyncDirectory(staging_);
  if (!synced.ok()) return synced;
  absl::Status replaced = ReplaceDirectory(staging_, final_);
  if (replaced.ok()) committed_ = true;
  return replaced;
}

absl::Status MakeDirectories(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat(dir, ": cannot create directory: ", ec.message()));
  return absl::OkStatus();
}

absl::Status RemoveAll(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": cannot remove: ", ec.message()));
  return absl::OkStatus();
}

void RemoveEmptyDirectories(const std::string& dir, const std::string& stop) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(stop).lexically_normal();
  std::error_code ec;
  for (fs::path d = fs::path(dir).lexically_normal();
       d.has_relative_path() && d != root && d.string().size() > root.string().size();
       d = d.parent_path()) {
    // fs::remove only removes an empty directory, which is the point.
    if (!fs::remove(d, ec)) break;
  }
}

bool IsAtomicWriteLeftover(const std::string& file_name) {
  static const std::regex kLeftover(R"(.+\.(tmp|staging)-[0-9]+-[A-Za-z0-9]{6}|.+\.old-[0-9]+)");
  return std::regex_match(file_name, kLeftover);
}

}  // namespace lora
