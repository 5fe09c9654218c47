// lora-worker: the per-GPU (or per-CPU-slot) agent; see worker/agent/worker_agent.h.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/grpc_log.h"
#include "common/log.h"
#include "worker/agent/engine_probe.h"
#include "worker/agent/worker_agent.h"

namespace {

std::string DefaultLoraTrain() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return (self.parent_path() / "lora-train").string();
}

}  // namespace

int main(int argc, char** argv) {
  // SIGTERM/SIGINT are taken by one thread with sigwait, never by a handler: Stop() locks the
  // agent's mutex, and a handler running on a thread that already held it deadlocked the worker
  // (seen when a SIGTERM arrived while a cancel was being dispatched). Blocked before any other
  // thread exists (gRPC starts its own as soon as credentials are made), so every thread
  // inherits the mask; children unblock them before exec.
  sigset_t stop_signals;
  ::sigemptyset(&stop_signals);
  ::sigaddset(&stop_signals, SIGTERM);
  ::sigaddset(&stop_signals, SIGINT);
  ::pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  lora::WorkerAgentOptions o;
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  o.worker_id = absl::StrCat(host, "-", ::getpid());
  o.lora_train = DefaultLoraTrain();
  CLI::App app{"lora-worker: runs lora-train ranks for a lorad controller"};
  app.add_option(
         "--controller", o.controller,
         "lorad worker endpoint host:port; for lorad replicas, all of them separated by commas "
         "(the worker keeps a session with whichever leads)")
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
  CLI::Option* slots_flag =
      app.add_option("--slots", o.slots,
                     "Ranks this worker runs at once (cuda: default one per visible GPU)")
          ->capture_default_str();
  app.add_option("--threads-per-rank", o.threads_per_rank,
                 "Intra-op threads per rank (0 = all cores)")
      ->capture_default_str();
  std::vector<std::string> data_roots;
  app.add_option("--data-root", data_roots,
                 "Directory that jobs' model, tokenizer, adapter and dataset paths must lie under "
                 "(repeatable; symbolic links and .. count where they lead). Without any, jobs "
                 "may name every file this worker can read: set it in production");
  app.add_option(
      "--cache-dir", o.cache_dir,
      "Where uploaded files jobs name (files/...) are cached (default <work-dir>/cache)");
  app.add_option("--cache-size-bytes", o.cache_max_bytes,
                 "Bytes of cached uploads kept; least recently used ones beyond it go (files a "
                 "running rank reads are kept whatever the size)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  std::string token_env = "LORA_WORKER_TOKEN";
  if (const char* t = std::getenv(token_env.c_str())) o.token = t;
  // The secret comes from a file or the environment, never the command line (visible in ps).
  std::string token_file;
  app.add_option("--token-file", token_file,
                 "File whose first line is the worker bearer token (or env LORA_WORKER_TOKEN)");
  double drain_grace_s = 60;
  app.add_option("--drain-grace", drain_grace_s,
                 "On SIGTERM: seconds for running ranks to checkpoint, upload and report before "
                 "they are killed (a second SIGTERM ends it at once)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  std::string tls_ca, tls_cert, tls_key;
  app.add_option("--tls-ca", tls_ca, "CA certificate (PEM) of lorad's certificate: use TLS");
  app.add_option("--tls-cert", tls_cert,
                 "Client certificate (PEM) to present to lorad (mutual TLS; needs --tls-ca)");
  app.add_option("--tls-key", tls_key, "Private key (PEM) of --tls-cert");
  unsigned tls_refresh_s = 5;
  app.add_option("--tls-refresh-interval", tls_refresh_s,
                 "Seconds between re-reads of the --tls-* files: renewed certificates are used "
                 "from the next connection on, without a restart")
      ->check(CLI::Range(1u, 86400u));
  std::string log_format = "text";
  app.add_option("--log-format", log_format,
                 "Log lines on stderr: text (\"lora-worker: ...\") or json (one object per line: "
                 "ts, level, component, msg, worker, and job, attempt, rank where they apply)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  {
    lora::LogOptions log;
    log.component = "lora-worker";
    log.format = *lora::ParseLogFormat(log_format);  // checked by CLI11
    log.fields = {{"worker", o.worker_id}};
    const bool json = log.format == lora::LogFormat::kJson;
    lora::InitLogging(std::move(log));
    if (json) lora::RouteGrpcLogs();  // every line JSON, gRPC's own too
  }
  auto tls = lora::ReadWorkerTls(tls_ca, tls_cert, tls_key);
  if (!tls.ok()) {
    lora::LogError(std::string(tls.status().message()));
    return 1;
  }
  o.tls = *std::move(tls);
  o.tls.refresh_interval_s = tls_refresh_s;
  if (!token_file.empty()) {
    auto token = lora::ReadSecretFile(token_file);
    if (!token.ok()) {
      lora::LogError(absl::StrCat("--token-file: ", token.status().message()));
      return 1;
    }
    o.token = *token;
  }
  auto roots = lora::DataRoots::Create(data_roots);
  if (!roots.ok()) {
    lora::LogError(absl::StrCat("--data-root: ", roots.status().message()));
    return 1;
  }
  o.data_roots = *std::move(roots);
  // Advertise only what the engine can run: no cuda slots without GPUs the engine sees.
  absl::StatusOr<lora::EngineProbe> probe = lora::CheckEngineSupportsDevice(o.lora_train, o.device);
  if (!probe.ok()) {
    lora::LogError(std::string(probe.status().message()));
    return 1;
  }
  if (o.device == "cuda") {
    // One rank per GPU: NCCL refuses two ranks of one communicator on a device.
    const int gpus = static_cast<int>(probe->gpus.size());
    if (slots_flag->count() == 0) o.slots = gpus;
    if (o.slots > gpus) {
      lora::LogError(absl::StrCat("--slots ", o.slots, " but lora-train sees ", gpus,
                                  " GPU(s): one rank per GPU"));
      return 1;
    }
    o.gpus = probe->gpus;
    for (const auto& g : o.gpus) {
      lora::LogInfo(absl::StrCat("cuda:", g.index(), " ", g.name(), " (",
                                 g.memory_bytes() / (1 << 20), " MiB)"))
          .Field("gpu", g.index());
    }
  }
  o.drain_grace = std::chrono::milliseconds(static_cast<int64_t>(drain_grace_s * 1000));
  // Another lora-worker on this directory (an old one still draining, say) must finish first:
  // wait for it, still answering SIGTERM.
  absl::StatusOr<std::unique_ptr<lora::WorkerAgent>> agent;
  bool said_waiting = false;
  while (!(agent = lora::WorkerAgent::Create(o)).ok() &&
         agent.status().code() == absl::StatusCode::kFailedPrecondition) {
    if (!said_waiting) {
      lora::LogInfo(absl::StrCat(agent.status().message(), "; waiting for it to exit"));
      said_waiting = true;
    }
    const timespec poll = {0, 500 * 1000 * 1000};
    if (::sigtimedwait(&stop_signals, nullptr, &poll) > 0) return 0;
  }
  if (!agent.ok()) {
    lora::LogError(std::string(agent.status().message()));
    return 1;
  }
  std::atomic<bool> done{false};
  std::thread signals([&] {
    const timespec poll = {0, 200 * 1000 * 1000};
    while (!done) {
      if (::sigtimedwait(&stop_signals, nullptr, &poll) > 0) (*agent)->Stop();
    }
  });
  (*agent)->Run();
  done = true;
  signals.join();
  return 0;
}
