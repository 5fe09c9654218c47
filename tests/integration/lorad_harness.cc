#include "tests/integration/lorad_harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/subprocess.h"

namespace lora::testing {

Lorad::Lorad(Options options) : options_(std::move(options)) {
  port_ = options_.port != 0 ? options_.port : FreePort();
  log_path_ = options_.data_dir + "." + options_.instance + ".log";
  port_file_ = options_.data_dir + "." + options_.instance + ".port";
}

Lorad::~Lorad() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    if (WaitExit(20) < 0) {
      ::kill(pid_, SIGKILL);
      WaitExit(5);
    }
  }
}

bool Lorad::Start() {
  std::vector<std::string> argv = {BinaryPath("server/lorad"),
                                   "--data-dir",
                                   options_.data_dir,
                                   "--listen",
                                   "127.0.0.1:" + std::to_string(port_),
                                   "--metrics-listen",
                                   "127.0.0.1:0",
                                   "--local-workers",
                                   std::to_string(options_.local_workers),
                                   "--port-file",
                                   port_file_,
                                   "--threads-per-rank",
                                   "1"};
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  ::unlink(port_file_.c_str());
  pid_ = ::fork();
  if (pid_ == 0) {
    int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  for (int i = 0; i < 300; ++i) {
    if (::access(port_file_.c_str(), F_OK) == 0) return true;
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void Lorad::Kill(int signo) {
  if (pid_ > 0) ::kill(pid_, signo);
}

int Lorad::WaitExit(double timeout_s) {
  if (pid_ <= 0) return 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

std::unique_ptr<LoraClient> Lorad::Client(const std::string& token) {
  ClientOptions o;
  o.address = address();
  o.token = token;
  return std::move(*LoraClient::Create(o));
}

std::string Lorad::log() const { return ReadFile(log_path_); }

std::vector<pid_t> FindProcesses(const std::string& needle) {
  std::vector<pid_t> out;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  while (dirent* e = ::readdir(proc)) {
    pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::string cmdline = ReadFile("/proc/" + std::string(e->d_name) + "/cmdline");
    for (char& c : cmdline) {
      if (c == '\0') c = ' ';
    }
    if (cmdline.find(needle) != std::string::npos) out.push_back(pid);
  }
  ::closedir(proc);
  return out;
}

std::string ProcessEnv(pid_t pid, const std::string& name) {
  const std::string env = ReadFile("/proc/" + std::to_string(pid) + "/environ");
  const std::string key = name + "=";
  for (size_t at = 0; at < env.size();) {
    const size_t end = std::min(env.find('\0', at), env.size());
    if (env.compare(at, key.size(), key) == 0)
      return env.substr(at + key.size(), end - at - key.size());
    at = end + 1;
  }
  return "";
}

std::vector<pid_t> FindRankProcesses(const std::string& job_id, int rank) {
  std::vector<pid_t> out;
  for (pid_t pid : FindProcesses("lora-train run")) {
    if (ProcessEnv(pid, "LORA_JOB_ID") == job_id && ProcessEnv(pid, "RANK") == std::to_string(rank))
      out.push_back(pid);
  }
  return out;
}

lora::v1::JobSpec TinyTrainSpec(int steps, int checkpoint_interval, int seq_len) {
  lora::v1::JobSpec spec;
  spec.mutable_job()->set_name("tiny-test");
  spec.mutable_model()->set_flavor("tiny");
  spec.mutable_lora()->add_target_modules("q_proj");
  spec.mutable_lora()->add_target_modules("v_proj");
  spec.mutable_lora()->add_target_modules("lm_head");
  spec.mutable_training()->set_steps(steps);
  spec.mutable_training()->set_seq_len(seq_len);
  spec.mutable_training()->set_local_batch_size(4);
  spec.mutable_dataset()->set_name("synthetic-arith");
  spec.mutable_dataset()->set_num_examples(1000);
  spec.mutable_dataset()->set_validation_interval(std::max(1, steps / 2));
  spec.mutable_checkpoint()->set_interval(checkpoint_interval);
  return spec;
}

std::string StateChanges(const std::vector<lora::v1::JobEvent>& events) {
  std::string out;
  for (const auto& e : events) {
    if (e.has_state_change()) {
      out += "\n  " + lora::v1::JobState_Name(e.state_change().to()) + ": " +
             e.state_change().reason();
    }
  }
  return out;
}

bool JobEnded(const lora::v1::Job& job) {
  return job.state() == lora::v1::SUCCEEDED || job.state() == lora::v1::FAILED ||
         job.state() == lora::v1::CANCELLED;
}

lora::v1::Job WaitForJob(LoraClient& client, const std::string& name,
                         const std::function<bool(const lora::v1::Job&)>& pred, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  lora::v1::Job last;
  while (std::chrono::steady_clock::now() < deadline) {
    auto job = client.GetJob(name);
    if (job.ok()) {
      last = *job;
      if (pred(last)) return last;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return last;
}

}  // namespace lora::testing

namespace lora::testing {

int Lorad::metrics_port() const {
  const std::string text = log();
  const size_t at = text.find("metrics on port ");
  return at == std::string::npos ? 0 : std::atoi(text.c_str() + at + 16);
}

std::string HttpGet(int port, const std::string& path) { return RawHttpRequest(port, "GET", path); }

}  // namespace lora::testing
