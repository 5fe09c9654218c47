#include "worker/agent/engine_probe.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace lora {
namespace {

// Runs `binary version --json` and returns its stdout (stderr goes to ours).
absl::StatusOr<std::string> RunVersion(const std::string& binary) {
  int fds[2];
  if (::pipe(fds) != 0) return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    const char* argv[] = {binary.c_str(), "version", "--json", nullptr};
    ::execv(binary.c_str(), const_cast<char* const*>(argv));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        binary, " version --json failed (exit ",
        WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
        WIFEXITED(status) && WEXITSTATUS(status) == 127 ? ": not found or not executable" : "",
        ")"));
  }
  return out;
}

}  // namespace

absl::StatusOr<EngineProbe> ProbeEngine(const std::string& lora_train) {
  absl::StatusOr<std::string> out = RunVersion(lora_train);
  if (!out.ok()) return out.status();
  nlohmann::json j = nlohmann::json::parse(*out, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("cuda")) {
    return absl::FailedPreconditionError(
        absl::StrCat(lora_train, " version --json printed no capabilities: ", *out));
  }
  EngineProbe p;
  p.version = j.value("version", "");
  p.torch_version = j.value("torch_version", "");
  p.cuda = j.value("cuda", false);
  p.cuda_devices = j.value("cuda_devices", 0);
  return p;
}

absl::Status CheckEngineSupportsDevice(const std::string& lora_train, const std::string& device) {
  absl::StatusOr<EngineProbe> p = ProbeEngine(lora_train);
  if (!p.ok()) return p.status();
  if (device != "cuda") return absl::OkStatus();
  if (!p->cuda) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device cuda but ", lora_train, " (", p->version, ", LibTorch ", p->torch_version,
        ") was built without CUDA; build lora-train with -DLORA_WITH_CUDA=ON against a CUDA "
        "LibTorch, or run this worker with --device cpu"));
  }
  if (p->cuda_devices == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda but ", lora_train, " sees no CUDA device"));
  }
  return absl::OkStatus();
}

}  // namespace lora
