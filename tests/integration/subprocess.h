// Runs a child process for integration tests and captures what it prints.
#ifndef LORA_TESTS_INTEGRATION_SUBPROCESS_H_
#define LORA_TESTS_INTEGRATION_SUBPROCESS_H_

#include <string>
#include <vector>

namespace lora::testing {

struct ProcessResult {
  int exit_code = -1;  // 128 + signal when killed by a signal
  std::string out;
  std::string err;
};

// Runs argv[0] with `argv`, waiting at most `timeout_s` seconds (then SIGKILL).
ProcessResult RunProcess(const std::vector<std::string>& argv, double timeout_s = 120,
                         const std::vector<std::string>& extra_env = {});

// A child left running: output goes to files; Wait() reaps it.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const std::string& stdout_path,
               const std::string& stderr_path);
  ~ChildProcess();  // SIGKILLs and reaps a child still running
  int pid() const { return pid_; }
  void Signal(int signo);
  // Exit code (128 + signal when killed), or -1 after `timeout_s` (child left running).
  int Wait(double timeout_s);

 private:
  int pid_ = -1;
  bool reaped_ = false;
  int exit_code_ = -1;
};

std::string ReadFile(const std::string& path);

std::string BinaryPath(const std::string& relative);  // under the build directory
// A loopback port that was free a moment ago (bind to 0, read, release).
int FreePort();
std::string SourcePath(const std::string& relative);  // under the source directory

}  // namespace lora::testing

#endif  // LORA_TESTS_INTEGRATION_SUBPROCESS_H_
