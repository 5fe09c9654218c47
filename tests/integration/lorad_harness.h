// Starts a real lorad (and optionally local workers) for integration tests, on 127.0.0.1 with
// a free port, in a scratch data directory; stops it (and its children) on destruction.
#ifndef LORA_TESTS_INTEGRATION_LORAD_HARNESS_H_
#define LORA_TESTS_INTEGRATION_LORAD_HARNESS_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "client/lora_client.h"
#include "gtest/gtest.h"
#include "lora/v1/job_spec.pb.h"
#include "tests/integration/subprocess.h"  // FreePort
#include "tests/test_util.h"

namespace lora::testing {

class Lorad {
 public:
  struct Options {
    std::string data_dir;
    int local_workers = 1;
    int port = 0;  // 0 = pick a free one
    std::vector<std::string> extra_args;
    // Names its log and port files next to data_dir, so that replicas can share data_dir.
    std::string instance = "lorad";
  };
  explicit Lorad(Options options);
  ~Lorad();  // SIGKILL what is left

  // Starts and waits until it serves (false on timeout).
  bool Start();
  void Kill(int signo = 9);
  int WaitExit(double timeout_s);  // exit code, -1 on timeout
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::unique_ptr<LoraClient> Client(const std::string& token = "");
  std::string log() const;
  // The port of its /metrics endpoint, from its startup line (0 if not found).
  int metrics_port() const;

 private:
  Options options_;
  int port_ = 0;
  pid_t pid_ = -1;
  std::string log_path_;
  std::string port_file_;
};

// The whole HTTP/1.0 response (status line, headers, body) of GET `path` on 127.0.0.1:`port`;
// "" if nothing answers.
std::string HttpGet(int port, const std::string& path);

// Pids of processes whose command line contains `needle`.
std::vector<pid_t> FindProcesses(const std::string& needle);

// The value of `name` in the environment of process `pid` ("" if unset or the process is gone).
std::string ProcessEnv(pid_t pid, const std::string& name);

// Pids of the lora-train process running `rank` of job `job_id` (from its environment).
std::vector<pid_t> FindRankProcesses(const std::string& job_id, int rank);

lora::v1::JobSpec TinyTrainSpec(int steps, int checkpoint_interval = 5, int seq_len = 64);

// A job's state changes with their reasons, one per line (for failure messages).
std::string StateChanges(const std::vector<lora::v1::JobEvent>& events);

// Whether a job has ended: SUCCEEDED, FAILED or CANCELLED.
bool JobEnded(const lora::v1::Job& job);

// A fixture with a scratch directory; StartLorad runs lorad in <dir>/data.
class LoradTest : public ::testing::Test {
 protected:
  std::unique_ptr<Lorad> StartLorad(int local_workers, std::vector<std::string> extra = {},
                                    int port = 0) {
    auto l = std::make_unique<Lorad>(
        Lorad::Options{dir_.Join("data"), local_workers, port, std::move(extra)});
    EXPECT_TRUE(l->Start()) << l->log();
    return l;
  }
  TempDir dir_;
};

// Polls GetJob until `pred` holds or the timeout passes; returns the last job seen.
lora::v1::Job WaitForJob(LoraClient& client, const std::string& name,
                         const std::function<bool(const lora::v1::Job&)>& pred,
                         double timeout_s = 120);

}  // namespace lora::testing

#endif  // LORA_TESTS_INTEGRATION_LORAD_HARNESS_H_
