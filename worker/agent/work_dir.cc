#include "worker/agent/work_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

constexpr char kLockFile[] = "lora-worker.lock";
constexpr char kLogSuffix[] = ".engine.log";

std::string Normal(const std::string& path) { return fs::path(path).lexically_normal().string(); }

// "attempt-3", "rank-0": what RunDirectory names; anything else there is not a run.
bool Numbered(const fs::path& path, absl::string_view prefix) {
  // filename() returns a temporary: keep it alive while `name` points into it.
  const std::string filename = path.filename().native();
  absl::string_view name = filename;
  int64_t n = 0;
  return absl::ConsumePrefix(&name, prefix) && absl::SimpleAtoi(name, &n) && n >= 0;
}

absl::Status ErrnoStatus(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkDirLock>> WorkDirLock::Acquire(const std::string& work_dir) {
  if (absl::Status s = MakeDirectories(work_dir); !s.ok()) return s;
  const std::string path = JoinPath(work_dir, kLockFile);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    ::close(fd);
    if (error != EWOULDBLOCK) {
      errno = error;
      return ErrnoStatus(absl::StrCat("cannot lock ", path));
    }
    int64_t holder = 0;
    const bool known = n > 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(buf), &holder);
    return absl::FailedPreconditionError(
        absl::StrCat(work_dir, " is in use by another lora-worker",
                     known ? absl::StrCat(" (pid ", holder, ")") : std::string()));
  }
  // The pid is for the message above only: the lock itself is the flock.
  const std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    ::close(fd);
    return ErrnoStatus(path);
  }
  return std::unique_ptr<WorkDirLock>(new WorkDirLock(fd));
}

WorkDirLock::~WorkDirLock() { ::close(fd_); }

std::string RunDirectory(const std::string& work_dir, const std::string& job_id, int attempt,
                         int rank) {
  return JoinPath(work_dir, absl::StrCat("jobs/", job_id, "/attempt-", attempt, "/rank-", rank));
}

absl::Status RemoveRunDirectory(const std::string& work_dir, const std::string& run_dir) {
  std::error_code ec;
  fs::remove_all(run_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot remove ", run_dir, ": ", ec.message()));
  // attempt-<n>, then <job>, when empty.
  RemoveEmptyDirectories(ParentDirectory(run_dir), JoinPath(work_dir, "jobs"));
  return absl::OkStatus();
}

absl::Status KeepLogTail(const std::string& work_dir, const std::string& log_path,
                         const std::string& name, size_t max_bytes, int keep) {
  std::ifstream in(log_path, std::ios::binary | std::ios::ate);
  if (!in) return absl::OkStatus();
  const std::streamoff size = in.tellg();
  const std::streamoff start =
      std::max<std::streamoff>(0, size - static_cast<std::streamoff>(max_bytes));
  std::string tail(static_cast<size_t>(size - start), '\0');
  in.seekg(start);
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  tail.resize(static_cast<size_t>(std::max<std::streamsize>(0, in.gcount())));
  const std::string logs = JoinPath(work_dir, "logs");
  if (absl::Status s = MakeDirectories(logs); !s.ok()) return s;
  if (absl::Status s = WriteFileAtomically(JoinPath(logs, name + kLogSuffix), tail); !s.ok())
    return s;
  // Newest first by modification time (then name, for ties within the clock's resolution).
  std::vector<std::pair<fs::file_time_type, std::string>> kept;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(logs, ec)) {
    const std::string file = entry.path().filename().string();
    if (!entry.is_regular_file(ec) || !absl::EndsWith(file, kLogSuffix)) continue;
    kept.emplace_back(entry.last_write_time(ec), entry.path().string());
  }
  std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return a > b; });
  for (size_t i = static_cast<size_t>(std::max(keep, 0)); i < kept.size(); ++i)
    fs::remove(kept[i].second, ec);
  return absl::OkStatus();
}

absl::StatusOr<Leftovers> RemoveCrashLeftovers(const std::string& work_dir,
                                               const std::set<std::string>& owned,
                                               size_t log_tail_bytes, int keep_logs) {
  std::set<std::string> mine;
  for (const std::string& dir : owned) mine.insert(Normal(dir));
  Leftovers gone;
  std::error_code ec;
  // jobs/<job>/attempt-<n>/rank-<r>
  const std::string jobs = JoinPath(work_dir, "jobs");
  std::vector<fs::path> runs;
  for (const auto& job : fs::directory_iterator(jobs, ec)) {
    if (!job.is_directory(ec)) continue;
    for (const auto& attempt : fs::directory_iterator(job.path(), ec)) {
      if (!attempt.is_directory(ec) || !Numbered(attempt.path(), "attempt-")) continue;
      for (const auto& rank : fs::directory_iterator(attempt.path(), ec)) {
        if (rank.is_directory(ec) && Numbered(rank.path(), "rank-") &&
            !mine.count(Normal(rank.path().string())))
          runs.push_back(rank.path());
      }
    }
  }
  for (const fs::path& run : runs) {
    const std::string name =
        absl::StrCat(run.parent_path().parent_path().filename().string(), "-",
                     run.parent_path().filename().string(), "-", run.filename().string());
    // Their fate is unknown (the controller has retried them elsewhere): the log may say why.
    (void)KeepLogTail(work_dir, (run / "engine.log").string(), name, log_tail_bytes, keep_logs);
    if (absl::Status s = RemoveRunDirectory(work_dir, run.string()); !s.ok()) return s;
    ++gone.run_directories;
  }
  // Collected first: removing while iterating invalidates the iterator.
  std::vector<fs::path> temporary;
  fs::recursive_directory_iterator it(work_dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const fs::path& path = it->path();
    if (mine.count(Normal(path.string()))) {
      it.disable_recursion_pending();  // a running rank's files are its own business
      continue;
    }
    if (IsAtomicWriteLeftover(path.filename().string())) {
      temporary.push_back(path);
      it.disable_recursion_pending();
    }
  }
  for (const fs::path& path : temporary) {
    fs::remove_all(path, ec);
    if (ec)
      return absl::InternalError(absl::StrCat("cannot remove ", path.string(), ": ", ec.message()));
    ++gone.temporary_files;
  }
  return gone;
}

}  // namespace lora
