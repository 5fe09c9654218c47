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
  // Every field is required: an engine that omits one is older or broken, and a default would
  // advertise a device it may not have.
  auto bad = [&](const char* field) {
    return absl::FailedPreconditionError(absl::StrCat(lora_train, " version --json: field '", field,
                                                      "' missing or of the wrong type"));
  };
  if (!j.is_object()) return bad("(the whole object)");
  EngineProbe p;
  for (auto [key, dst] : {std::pair{"version", &p.version},
                          {"torch_version", &p.torch_version},
                          {"cuda_version", &p.cuda_version},
                          {"nccl_version", &p.nccl_version}}) {
    if (!j.contains(key) || !j[key].is_string()) return bad(key);
    *dst = j[key].get<std::string>();
  }
  if (!j.contains("cuda_compiled") || !j["cuda_compiled"].is_boolean()) return bad("cuda_compiled");
  p.cuda_compiled = j["cuda_compiled"].get<bool>();
  if (!j.contains("cuda_devices") || !j["cuda_devices"].is_array()) return bad("cuda_devices");
  for (const auto& d : j["cuda_devices"]) {
    if (!d.is_object() || !d.contains("index") || !d["index"].is_number_integer() ||
        !d.contains("name") || !d["name"].is_string() || !d.contains("total_memory_bytes") ||
        !d["total_memory_bytes"].is_number_integer()) {
      return bad("cuda_devices[]");
    }
    lora::worker::v1::GpuInfo& gpu = p.gpus.emplace_back();
    gpu.set_index(d["index"].get<int>());
    gpu.set_name(d["name"].get<std::string>());
    gpu.set_memory_bytes(d["total_memory_bytes"].get<int64_t>());
  }
  return p;
}

absl::StatusOr<EngineProbe> CheckEngineSupportsDevice(const std::string& lora_train,
                                                      const std::string& device) {
  absl::StatusOr<EngineProbe> p = ProbeEngine(lora_train);
  if (!p.ok()) return p.status();
  if (device != "cuda") return p;
  if (!p->cuda_compiled) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device cuda but ", lora_train, " (", p->version, ", LibTorch ", p->torch_version,
        ") was built without CUDA; run this worker with --device cpu"));
  }
  if (p->gpus.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda but ", lora_train, " (LibTorch ", p->torch_version, ", CUDA ",
                     p->cuda_version,
                     ") sees no CUDA device: check the driver, CUDA_VISIBLE_DEVICES and "
                     "the pod's nvidia.com/gpu limit, or run this worker with --device cpu"));
  }
  return p;
}

}  // namespace lora
