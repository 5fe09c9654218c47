// Uploaded files on a worker: the blobs an assignment's files need, fetched from lorad once per
// sha256 and shared by every rank on the worker, verified before use, kept under a size cap.
//
//   FileCache cache({.dir = work_dir + "/cache", .max_bytes = 20LL << 30});
//   LORA_RETURN_IF_ERROR(cache.Open());
//   // per rank; `fetch` downloads one blob to a path (verified by sha256 before it appears)
//   LORA_ASSIGN_OR_RETURN(std::string local,
//                         cache.Materialize(file, run_dir + "/files", fetch, /*pin=*/rank_key));
//   ...the rank reads `local`...
//   cache.Unpin(rank_key);
//
// Invariants:
// - A blob is fetched by one caller while the others wanting it wait for that fetch (and share
//   its error); a blob in the cache is exactly the bytes its name says (AtomicFile + sha256).
// - A rank sees its files as hard links to the cached blobs under its own directory (a copy
//   where the link fails): one copy on disk however many ranks read it, read-only.
// - Blobs a rank has pinned are never evicted; the others go least recently used first once
//   the cache holds more than max_bytes (a pinned set larger than the cap is allowed: running
//   ranks need it).
// - Open() keeps what a previous run of the worker fetched (a restart refetches nothing) and
//   removes half-written leftovers.
#ifndef LORA_WORKER_AGENT_FILE_CACHE_H_
#define LORA_WORKER_AGENT_FILE_CACHE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lora/v1/file.pb.h"

namespace lora {

class FileCache {
 public:
  struct Options {
    std::string dir;
    int64_t max_bytes = int64_t{20} << 30;
  };
  struct Stats {
    int64_t hits = 0;    // blobs a rank needed that were cached (or being fetched already)
    int64_t misses = 0;  // blobs fetched
    int64_t evicted = 0;
    int64_t bytes = 0;  // cached now
  };
  // Downloads the blob to `path`; the file must appear there only once its sha256 matched.
  using Fetch = std::function<absl::Status(const std::string& sha256, const std::string& path)>;

  explicit FileCache(Options options) : options_(std::move(options)) {}
  absl::Status Open();

  // Lays `file` out under `dest_root`/<file id>/ and returns the path a spec should name: the
  // directory for a directory, the single entry's path otherwise. Pins its blobs for `pin`.
  absl::StatusOr<std::string> Materialize(const lora::v1::File& file, const std::string& dest_root,
                                          const Fetch& fetch, const std::string& pin);
  void Unpin(const std::string& pin);
  Stats stats() const;

 private:
  struct Blob {
    int64_t size = 0;
    int64_t last_use = 0;  // a counter, not a clock: LRU order only
    std::set<std::string> pins;
  };
  struct InFlight {
    bool done = false;
    absl::Status status;
  };
  std::string BlobPath(const std::string& sha256) const;
  // Makes the blob present and pinned; fetches it unless cached or in flight.
  absl::Status Acquire(const lora::v1::FileEntry& entry, const Fetch& fetch, const std::string& pin)
      ABSL_LOCKS_EXCLUDED(mu_);
  void EvictLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  absl::CondVar fetched_;
  std::map<std::string, Blob> blobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<InFlight>> in_flight_ ABSL_GUARDED_BY(mu_);
  int64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lora

#endif  // LORA_WORKER_AGENT_FILE_CACHE_H_
