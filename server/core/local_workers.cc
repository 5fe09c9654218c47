#include "server/core/local_workers.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/log.h"

extern char** environ;

namespace lora::server {

LocalWorkers::LocalWorkers(LocalWorkersOptions options) : options_(std::move(options)) {}

LocalWorkers::~LocalWorkers() { Stop(); }

pid_t LocalWorkers::Launch(int index) {
  const std::string id = absl::StrCat("local-", index);
  const std::string dir = JoinPath(options_.work_dir, id);
  if (absl::Status s = MakeDirectories(dir); !s.ok()) {
    // lora-worker reports the same when it starts, and the supervisor backs off.
    LogWarning(absl::StrCat("local worker ", id, ": ", s.ToString())).Worker(id);
  }
  std::vector<std::string> argv = {
      options_.lora_worker, "--controller", options_.controller, "--worker-id", id, "--work-dir",
      dir, "--threads-per-rank", std::to_string(options_.threads_per_rank),
      // Inside lorad's own grace, so the worker reports its
      // drained ranks before lorad gives up on it.
      "--drain-grace", std::to_string(std::max(1, options_.drain_grace_s - 3))};
  if (!options_.log_format.empty()) {
    argv.push_back("--log-format");
    argv.push_back(options_.log_format);
  }
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const std::string log = JoinPath(dir, "worker.log");
  // The environment is built before fork: between fork and exec a child of a threaded process
  // may only make async-signal-safe calls (setenv allocates, and could deadlock on a malloc
  // lock another thread held at the fork).
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "LORA_WORKER_TOKEN=", 18) != 0) env_strings.push_back(*e);
  }
  if (!options_.token.empty()) env_strings.push_back("LORA_WORKER_TOKEN=" + options_.token);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

void LocalWorkers::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < options_.count; ++i) {
    pids_.push_back(Launch(i));
    restarts_.push_back(0);
  }
  supervisor_ = std::thread([this] { Supervise(); });
}

void LocalWorkers::Supervise() {
  while (!stopping_) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(200), [this] { return stopping_.load(); });
    if (stopping_) break;
    for (size_t i = 0; i < pids_.size(); ++i) {
      if (pids_[i] <= 0) continue;
      int status = 0;
      if (::waitpid(pids_[i], &status, WNOHANG) != pids_[i]) continue;
      const int n = ++restarts_[i];
      LogWarning(absl::StrCat("local worker local-", i, " (pid ", pids_[i], ") exited",
                              WIFSIGNALED(status)
                                  ? absl::StrCat(" by signal ", WTERMSIG(status))
                                  : absl::StrCat(" with code ", WEXITSTATUS(status)),
                              "; restarting"))
          .Worker(absl::StrCat("local-", i));
      // Back off a little on repeated crashes, never beyond a few seconds.
      const auto delay = std::chrono::milliseconds(std::min(100 * (1 << std::min(n - 1, 5)), 3200));
      cv_.wait_for(lock, delay, [this] { return stopping_.load(); });
      if (stopping_) break;
      pids_[i] = Launch(static_cast<int>(i));
    }
  }
}

void LocalWorkers::Stop(int grace_seconds) {
  if (stopping_.exchange(true)) return;
  cv_.notify_all();
  if (supervisor_.joinable()) supervisor_.join();
  std::lock_guard<std::mutex> lock(mu_);
  for (pid_t pid : pids_) {
    if (pid > 0) ::kill(pid, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace_seconds);
  for (pid_t& pid : pids_) {
    while (pid > 0) {
      int status;
      pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid || r < 0) {
        pid = 0;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        pid = 0;
        break;
      }
      ::usleep(50000);
    }
  }
}

std::vector<pid_t> LocalWorkers::pids() {
  std::lock_guard<std::mutex> lock(mu_);
  return pids_;
}

}  // namespace lora::server
