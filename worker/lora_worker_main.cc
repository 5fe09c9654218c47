// lora-worker: the per-GPU (or per-CPU-slot) agent; see worker/agent/worker_agent.h.
#include <signal.h>
#include <unistd.h>

#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "worker/agent/engine_probe.h"
#include "worker/agent/worker_agent.h"

namespace {

lora::WorkerAgent* g_agent = nullptr;

void OnSignal(int) {
  if (g_agent != nullptr) g_agent->Stop();
}

std::string DefaultLoraTrain() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return (self.parent_path() / "lora-train").string();
}

}  // namespace

int main(int argc, char** argv) {
  lora::WorkerAgentOptions o;
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  o.worker_id = absl::StrCat(host, "-", ::getpid());
  o.lora_train = DefaultLoraTrain();
  CLI::App app{"lora-worker: runs lora-train ranks for a lorad controller"};
  app.add_option("--controller", o.controller, "lorad worker endpoint host:port")
      ->capture_default_str();
  app.add_option("--worker-id", o.worker_id, "Stable id of this worker (default host-pid)");
  app.add_option("--work-dir", o.work_dir, "Directory for job runs and checkpoints")
      ->capture_default_str();
  app.add_option("--lora-train", o.lora_train, "Path of the lora-train binary")
      ->capture_default_str();
  app.add_option("--address", o.address, "Address other ranks use to reach this worker")
      ->capture_default_str();
  app.add_option("--device", o.device, "cpu | cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--slots", o.slots, "Ranks this worker runs at once")->capture_default_str();
  app.add_option("--threads-per-rank", o.threads_per_rank,
                 "Intra-op threads per rank (0 = all cores)")
      ->capture_default_str();
  std::string token_env = "LORA_WORKER_TOKEN";
  if (const char* t = std::getenv(token_env.c_str())) o.token = t;
  app.add_option("--token", o.token, "Worker bearer token (env LORA_WORKER_TOKEN)");
  CLI11_PARSE(app, argc, argv);
  // Advertise only what the engine can run: a CPU-only lora-train must not take CUDA jobs.
  if (absl::Status s = lora::CheckEngineSupportsDevice(o.lora_train, o.device); !s.ok()) {
    std::cerr << "lora-worker: " << s.message() << std::endl;
    return 1;
  }
  if (absl::Status s = lora::MakeDirectories(o.work_dir); !s.ok()) {
    std::cerr << "lora-worker: " << s.message() << std::endl;
    return 1;
  }
  lora::WorkerAgent agent(o);
  g_agent = &agent;
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  agent.Run();
  return 0;
}
