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

std::string BinaryPath(const std::string& relative);  // under the build directory
std::string SourcePath(const std::string& relative);  // under the source directory

}  // namespace lora::testing

#endif  // LORA_TESTS_INTEGRATION_SUBPROCESS_H_
