#include "worker/agent/file_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/data_roots.h"
#include "common/file_util.h"
#include "common/sha256.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

bool IsSha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// lorad validated the entries already; a worker still never writes outside the rank's files
// directory whatever a controller sends.
absl::Status CheckEntryPath(const std::string& path) {
  if (path.empty() || path.front() == '/') return absl::InvalidArgumentError("bad entry path");
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..")
      return absl::InvalidArgumentError(absl::StrCat("entry path \"", path, "\" is not relative"));
  }
  return absl::OkStatus();
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  if (ec) return absl::InternalError(absl::StrCat("copy to ", to, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

std::string FileCache::BlobPath(const std::string& sha256) const {
  return JoinPath(JoinPath(options_.dir, "blobs"), sha256);
}

absl::Status FileCache::Open() {
  const std::string dir = JoinPath(options_.dir, "blobs");
  if (absl::Status s = MakeDirectories(dir); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!IsSha256(name) || !entry.is_regular_file()) {
      fs::remove_all(entry.path(), ec);  // AtomicFile leftovers of a fetch cut short
      continue;
    }
    Blob& b = blobs_[name];
    b.size = static_cast<int64_t>(entry.file_size(ec));
    stats_.bytes += b.size;
  }
  EvictLocked();
  return absl::OkStatus();
}

absl::Status FileCache::Acquire(const lora::v1::FileEntry& entry, const Fetch& fetch,
                                const std::string& pin) {
  const std::string& sha = entry.sha256();
  std::shared_ptr<InFlight> mine;
  {
    absl::MutexLock lock(&mu_);
    while (true) {
      auto cached = blobs_.find(sha);
      if (cached != blobs_.end()) {
        cached->second.pins.insert(pin);
        cached->second.last_use = ++clock_;
        ++stats_.hits;
        return absl::OkStatus();
      }
      auto flight = in_flight_.find(sha);
      if (flight == in_flight_.end()) break;
      std::shared_ptr<InFlight> theirs = flight->second;
      while (!theirs->done) fetched_.Wait(&mu_);
      if (!theirs->status.ok()) return theirs->status;
      // Fetched: loop to pin it (unless evicted meanwhile, then fetch again).
    }
    mine = std::make_shared<InFlight>();
    in_flight_[sha] = mine;
    ++stats_.misses;
  }
  absl::Status s = fetch(sha, BlobPath(sha));
  if (s.ok()) {
    struct stat st;
    if (::stat(BlobPath(sha).c_str(), &st) != 0 || st.st_size != entry.size()) {
      s = absl::DataLossError(absl::StrCat("fetched blob ", sha, " has the wrong size"));
    } else {
      ::chmod(BlobPath(sha).c_str(), 0444);
    }
  }
  absl::MutexLock lock(&mu_);
  if (s.ok()) {
    Blob& b = blobs_[sha];
    b.size = entry.size();
    b.last_use = ++clock_;
    b.pins.insert(pin);
    stats_.bytes += b.size;
    EvictLocked();
  }
  mine->done = true;
  mine->status = s;
  in_flight_.erase(sha);
  fetched_.SignalAll();
  return s;
}

absl::StatusOr<std::string> FileCache::Materialize(const lora::v1::File& file,
                                                   const std::string& dest_root, const Fetch& fetch,
                                                   const std::string& pin) {
  if (!IsFileRef(file.name()) || file.name() != kFileRefPrefix + file.id())
    return absl::InvalidArgumentError("assignment names a file with a malformed name");
  if (file.entries_size() == 0 || (!file.directory() && file.entries_size() != 1))
    return absl::InvalidArgumentError(absl::StrCat(file.name(), ": malformed entry list"));
  const std::string root = JoinPath(dest_root, file.id());
  for (const lora::v1::FileEntry& e : file.entries()) {
    if (absl::Status s = CheckEntryPath(e.path()); !s.ok()) return s;
    if (!IsSha256(e.sha256())) return absl::InvalidArgumentError("entry with a malformed sha256");
    if (absl::Status s = Acquire(e, fetch, pin); !s.ok()) return s;
    const std::string dest = JoinPath(root, e.path());
    if (absl::Status s = MakeDirectories(ParentDirectory(dest)); !s.ok()) return s;
    ::unlink(dest.c_str());  // a rank restarted in the same directory
    if (::link(BlobPath(e.sha256()).c_str(), dest.c_str()) != 0) {
      if (absl::Status s = CopyFile(BlobPath(e.sha256()), dest); !s.ok()) return s;
    }
  }
  return file.directory() ? root : JoinPath(root, file.entries(0).path());
}

void FileCache::Unpin(const std::string& pin) {
  absl::MutexLock lock(&mu_);
  for (auto& [sha, b] : blobs_) b.pins.erase(pin);
  EvictLocked();
}

void FileCache::EvictLocked() {
  while (stats_.bytes > options_.max_bytes) {
    auto victim = blobs_.end();
    for (auto it = blobs_.begin(); it != blobs_.end(); ++it) {
      if (!it->second.pins.empty()) continue;
      if (victim == blobs_.end() || it->second.last_use < victim->second.last_use) victim = it;
    }
    if (victim == blobs_.end()) return;  // everything left is in use
    ::unlink(BlobPath(victim->first).c_str());
    stats_.bytes -= victim->second.size;
    ++stats_.evicted;
    blobs_.erase(victim);
  }
}

FileCache::Stats FileCache::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace lora
