// `lorad --local-workers N`: N lora-worker children on loopback, restarted when they crash
// (with backoff), stopped with lorad. They die with lorad (PR_SET_PDEATHSIG), and so do their
// ranks, so a restarted lorad never meets orphans under the same worker ids.
#ifndef LORA_SERVER_CORE_LOCAL_WORKERS_H_
#define LORA_SERVER_CORE_LOCAL_WORKERS_H_

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace lora::server {

struct LocalWorkersOptions {
  int count = 0;
  std::string lora_worker;  // binary
  std::string controller;   // "127.0.0.1:<port>"
  std::string work_dir;     // <data_dir>/workers
  std::string token;        // worker token, passed through the environment
  int threads_per_rank = 0;
  int drain_grace_s = 30;  // lorad's --drain-grace: Stop(drain_grace_s) kills after it
  std::string log_format;  // lorad's --log-format, passed on ("" = the worker's default)
};

class LocalWorkers {
 public:
  explicit LocalWorkers(LocalWorkersOptions options);
  ~LocalWorkers();  // Stop()
  void Start();
  // SIGTERM to every worker (they stop their ranks), SIGKILL after `grace_seconds`.
  void Stop(int grace_seconds = 20);
  std::vector<pid_t> pids();

 private:
  void Supervise();
  pid_t Launch(int index);

  LocalWorkersOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<pid_t> pids_;
  std::vector<int> restarts_;
  std::atomic<bool> stopping_{false};
  std::thread supervisor_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_LOCAL_WORKERS_H_
