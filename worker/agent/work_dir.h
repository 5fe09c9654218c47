// lora-worker's work directory: one worker at a time (a lock), a run directory per rank that is
// removed once the rank's exit was reported, the engine.log tails of failed ranks, and the
// clean-up of what a crashed worker left behind.
//
//   LORA_ASSIGN_OR_RETURN(auto lock, WorkDirLock::Acquire(work_dir));   // before anything else
//   LORA_ASSIGN_OR_RETURN(Leftovers gone, RemoveCrashLeftovers(work_dir, /*owned=*/{}));
//   const std::string run = RunDirectory(work_dir, "j1", 2, 0);  //
//   <work_dir>/jobs/j1/attempt-2/rank-0
//   ... the rank runs, reports its exit; it failed:
//   KeepLogTail(work_dir, JoinPath(run, "engine.log"), "j1-attempt-2-rank-0", 64 << 10, 32);
//   RemoveRunDirectory(work_dir, run);
//
// Layout:
//   <work_dir>/lora-worker.lock                       flock(2)ed by the worker using the directory
//   <work_dir>/jobs/<job>/attempt-<n>/rank-<r>/       a rank's run directory (lora-train --out)
//   <work_dir>/logs/<job>-attempt-<n>-rank-<r>.engine.log   the last bytes of a failed rank's log
//
// Invariants: only the lock's holder writes under the directory, so at start-up every run
// directory is a leftover (no rank of this worker runs yet) and every temporary file of an
// atomic write (common/file_util.h: "<name>.tmp-<pid>-XXXXXX", "<dir>.staging-<pid>-XXXXXX",
// "<dir>.old-<pid>") belongs to a write that was cut short. Nothing else is ever removed:
// files that do not match those names stay.
#ifndef LORA_WORKER_AGENT_WORK_DIR_H_
#define LORA_WORKER_AGENT_WORK_DIR_H_

#include <cstddef>
#include <memory>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/file_util.h"  // IsAtomicWriteLeftover

namespace lora {

class WorkDirLock {
 public:
  // FAILED_PRECONDITION naming the holder's pid while another process holds it. flock: the
  // kernel drops the lock however its holder dies, so a kill -9 leaves nothing stale.
  static absl::StatusOr<std::unique_ptr<WorkDirLock>> Acquire(const std::string& work_dir);
  ~WorkDirLock();
  WorkDirLock(const WorkDirLock&) = delete;
  WorkDirLock& operator=(const WorkDirLock&) = delete;

 private:
  explicit WorkDirLock(int fd) : fd_(fd) {}
  int fd_;
};

std::string RunDirectory(const std::string& work_dir, const std::string& job_id, int attempt,
                         int rank);

// Removes a run directory, then its attempt and job directories when they are left empty.
absl::Status RemoveRunDirectory(const std::string& work_dir, const std::string& run_dir);

// Copies the last `max_bytes` of `log_path` to <work_dir>/logs/<name>.engine.log, then removes
// the oldest such files beyond `keep`. A missing log is not an error (nothing to keep).
absl::Status KeepLogTail(const std::string& work_dir, const std::string& log_path,
                         const std::string& name, size_t max_bytes, int keep);

struct Leftovers {
  int run_directories = 0;  // removed (their engine.log tail kept under logs/)
  int temporary_files = 0;  // removed files and directories of interrupted atomic writes
};

// Removes every run directory under <work_dir>/jobs that is not in `owned` (run directories of
// ranks that are running) and every atomic-write leftover outside them.
absl::StatusOr<Leftovers> RemoveCrashLeftovers(const std::string& work_dir,
                                               const std::set<std::string>& owned,
                                               size_t log_tail_bytes, int keep_logs);

}  // namespace lora

#endif  // LORA_WORKER_AGENT_WORK_DIR_H_
