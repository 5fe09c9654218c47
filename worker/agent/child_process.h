// A lora-train child: torchrun-style environment, JSON events on a pipe (fd 3 in the child),
// stdout/stderr to a log file, and death with its parent (PR_SET_PDEATHSIG) so a killed worker
// never leaves an orphaned rank training on.
//
//   LORA_ASSIGN_OR_RETURN(auto child, ChildProcess::Spawn(argv, env, "/runs/x/engine.log"));
//   while (auto line = child->ReadEventLine()) Handle(*line);
//   ChildExit e = child->Wait();
#ifndef LORA_WORKER_AGENT_CHILD_PROCESS_H_
#define LORA_WORKER_AGENT_CHILD_PROCESS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/exit_codes.h"  // kEngineEventsFd: the child's events descriptor

namespace lora {

struct ChildExit {
  int exit_code = 0;  // valid when signal == 0
  int signal = 0;
};

class ChildProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(
      const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
      const std::string& log_path);
  ~ChildProcess();  // kills (SIGKILL) and reaps a child still running

  // The next event line, or nullopt at end of stream (the child closed the pipe or exited).
  // One reader thread.
  std::optional<std::string> ReadEventLine();
  // Blocks until the child exits, then reaps it. Any thread, alongside Signal().
  ChildExit Wait();
  // Any thread: a no-op once the child is reaped, so the signal never reaches a process that
  // reused its pid (the child is only reaped under the same lock).
  void Signal(int signo);
  pid_t pid() const { return pid_; }

 private:
  ChildProcess(pid_t pid, int events_fd) : pid_(pid), events_fd_(events_fd) {}
  const pid_t pid_;
  int events_fd_;
  std::string buffer_;
  std::mutex mu_;
  bool reaped_ ABSL_GUARDED_BY(mu_) = false;
  ChildExit exit_ ABSL_GUARDED_BY(mu_);
};

// Last non-empty line of a text file (the engine's error, for a failure reason).
std::string LastLineOf(const std::string& path);

}  // namespace lora

#endif  // LORA_WORKER_AGENT_CHILD_PROCESS_H_
