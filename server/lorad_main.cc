// lorad: the controller. Accepts jobs over gRPC (lora.v1.JobService), keeps them in SQLite
// under --data-dir (or in PostgreSQL with --store-url-file, shared by replicas that elect a
// leader), schedules them onto lora-worker agents (lora.worker.v1.WorkerService on the same
// port) and serves Prometheus metrics. See docs/OPERATIONS.md.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <random>
#include <thread>
#include <tuple>
#include <utility>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/grpc_log.h"
#include "common/log.h"
#include "server/core/artifact_store.h"
#include "server/core/executor.h"
#include "server/core/job_manager.h"
#include "server/core/local_workers.h"
#include "server/grpc/credentials.h"
#include "server/grpc/file_service.h"
#include "server/grpc/job_service.h"
#include "server/grpc/registered_methods.h"
#include "server/grpc/tls.h"
#include "server/grpc/worker_service.h"
#include "server/metrics/job_metrics.h"
#include "server/metrics/metrics.h"
#include "server/metrics/metrics_http.h"
#include "server/metrics/process_metrics.h"
#include "server/metrics/rpc_metrics.h"
#include "server/store/data_dir_lock.h"
#include "server/store/postgres/leader_lease.h"
#include "server/store/postgres/pg_job_store.h"
#include "server/store/sqlite_job_store.h"

namespace {

std::atomic<bool> g_stop{false};
// Exit status of a replica that lost its leader lease: the process ends (a deposed leader must
// not act on what it remembers) and its supervisor starts it again as a follower.
constexpr int kExitLostLeadership = 3;
void OnSignal(int) { g_stop = true; }
// SIGHUP: re-read the tokens file now (RequestReload only sets an atomic flag).
lora::server::CredentialStore* g_credentials = nullptr;
void OnHangup(int) {
  if (g_credentials != nullptr) g_credentials->RequestReload();
}

// The local workers' per-process secret: 32 random bytes, hex.
std::string NewLocalSecret() {
  std::random_device rd;  // /dev/urandom
  std::string hex;
  for (int i = 0; i < 8; ++i) absl::StrAppend(&hex, absl::Hex(rd(), absl::kZeroPad8));
  return hex;
}

struct Flags {
  std::string data_dir;
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9464";
  std::string port_file;
  int local_workers = 0;
  std::string lora_worker;
  int threads_per_rank = 0;
  int max_attempts = 3;
  double heartbeat_timeout_s = 15;
  double cancel_grace_s = 10;
  double reattach_grace_s = 30;
  int drain_grace_s = 30;
  int pool_threads = 8;
  std::string auth_token;
  std::string worker_token;
  std::string auth_tokens_file;
  int tenant_max_queued_jobs = 0;
  int tenant_max_running_ranks = 0;
  std::vector<std::string> data_roots;
  int64_t tenant_storage_bytes = 0;
  double upload_stall_timeout_s = 3600;
  int64_t watch_max_pending_events =
      static_cast<int64_t>(lora::server::JobServiceImpl::kDefaultWatchMaxPendingEvents);
  double retain_finished_s = 0;
  lora::server::TlsServerOptions tls;
  std::string log_format = "text";
  // Replicas (PostgreSQL).
  std::string store_url;  // from --store-url-file or LORAD_STORE_URL, never the command line
  std::string advertise;
  double leader_lease_ttl_s = 10;
};

int Fail(const std::string& message) {
  lora::LogError(message);
  return 1;
}

// 127.0.0.0/8, ::1, localhost, or a Unix socket: reachable only from this machine.
bool IsLoopbackListen(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:")) return true;
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

std::string SiblingBinary(const std::string& name) {
  std::error_code ec;
  return (std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() / ".." / "worker" /
          name)
      .lexically_normal()
      .string();
}

// JOB_KIND_TRAIN -> "train", as job specs spell it.
std::string KindLabel(lora::v1::JobKind kind) {
  return absl::AsciiStrToLower(absl::StripPrefix(lora::v1::JobKind_Name(kind), "JOB_KIND_"));
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  f.lora_worker = SiblingBinary("lora-worker");
  if (const char* t = std::getenv("LORAD_AUTH_TOKEN")) f.auth_token = t;
  if (const char* t = std::getenv("LORAD_WORKER_TOKEN")) f.worker_token = t;
  if (const char* u = std::getenv("LORAD_STORE_URL")) f.store_url = u;
  CLI::App app{
      "lorad: LoRA fine-tuning controller (gRPC JobService + WorkerService, SQLite, metrics)"};
  app.add_option("--data-dir", f.data_dir, "Directory for lorad.db, artifacts and local workers")
      ->required();
  app.add_option("--listen", f.listen, "gRPC address (host:port; port 0 picks a free one)")
      ->capture_default_str();
  app.add_option("--metrics-listen", f.metrics_listen,
                 "Prometheus /metrics address; empty disables")
      ->capture_default_str();
  app.add_option("--port-file", f.port_file, "Write the bound gRPC port here once serving");
  app.add_option("--local-workers", f.local_workers,
                 "lora-worker children to start on loopback (0 = remote only)")
      ->capture_default_str();
  app.add_option("--lora-worker", f.lora_worker, "lora-worker binary for --local-workers")
      ->capture_default_str();
  app.add_option("--threads-per-rank", f.threads_per_rank,
                 "Intra-op threads per local rank (0 = all cores)")
      ->capture_default_str();
  app.add_option("--max-attempts", f.max_attempts, "Runs of a job before a lost worker fails it")
      ->capture_default_str();
  app.add_option("--heartbeat-timeout", f.heartbeat_timeout_s,
                 "Seconds without news before a worker is lost")
      ->capture_default_str();
  app.add_option("--cancel-grace", f.cancel_grace_s,
                 "Seconds a cancelled rank gets between SIGTERM and SIGKILL")
      ->capture_default_str();
  app.add_option("--drain-grace", f.drain_grace_s,
                 "On SIGTERM, seconds local workers get to checkpoint, upload and stop their "
                 "ranks before they are killed")
      ->capture_default_str();
  app.add_option("--reattach-grace", f.reattach_grace_s,
                 "After a restart, seconds running jobs wait for their workers to reconnect")
      ->capture_default_str();
  app.add_option("--pool-threads", f.pool_threads, "Threads for store and file work")
      ->capture_default_str();
  // Secrets from files or the environment only: a command line is visible to every user (ps).
  std::string auth_token_file, worker_token_file;
  app.add_option("--auth-token-file", auth_token_file,
                 "File whose first line is the bearer token clients must send (or env "
                 "LORAD_AUTH_TOKEN); none = no check");
  app.add_option("--worker-token-file", worker_token_file,
                 "File whose first line is the bearer token workers must send (or env "
                 "LORAD_WORKER_TOKEN)");
  app.add_option("--auth-tokens-file", f.auth_tokens_file,
                 "Credentials, one 'token,tenant,role' line each (role user, admin or worker); "
                 "re-read when it changes and on SIGHUP");
  app.add_option("--tenant-max-queued-jobs", f.tenant_max_queued_jobs,
                 "Queued jobs a tenant may have (0 = no limit)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--tenant-max-running-ranks", f.tenant_max_running_ranks,
                 "Ranks a tenant may run at once (0 = no limit)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--tenant-storage-bytes", f.tenant_storage_bytes,
                 "Bytes of uploaded files a tenant may store, partial uploads included (0 = no "
                 "limit)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--retain-finished", f.retain_finished_s,
                 "Seconds a job that ended is kept (its events, checkpoints and artifacts), then "
                 "deleted; 0 = forever")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--watch-max-pending-events", f.watch_max_pending_events,
                 "Events a WatchJob stream may fall behind its job before it is ended "
                 "UNAVAILABLE with the after_sequence to resume from (bounds a slow watcher's "
                 "memory)")
      ->check(CLI::Range(int64_t{1}, int64_t{10000000}));
  app.add_option("--upload-stall-timeout", f.upload_stall_timeout_s,
                 "Seconds after which an upload that received nothing is removed, and so are "
                 "uploaded bytes no file names")
      ->check(CLI::PositiveNumber);
  app.add_option("--data-root", f.data_roots,
                 "Directory the workers' data lives under (repeatable, absolute): jobs naming "
                 "paths elsewhere are refused at submission (workers check again with theirs)");
  app.add_option("--tls-cert", f.tls.cert_file,
                 "Server certificate chain (PEM) to serve TLS with; re-read when it changes");
  app.add_option("--tls-key", f.tls.key_file, "Private key (PEM) of --tls-cert");
  app.add_option("--tls-client-ca", f.tls.client_ca_file,
                 "CA (PEM) for client certificates: asked of every peer, verified when "
                 "presented, not required (workers may authenticate with one)");
  std::string store_url_file;
  app.add_option("--store-url-file", store_url_file,
                 "File whose first line is a PostgreSQL URI or conninfo (or env LORAD_STORE_URL; "
                 "libpq's PG* variables and ~/.pgpass apply too): keep jobs there instead of "
                 "SQLite, so that several lorad replicas share them; one leads, the others serve "
                 "reads and take over when it dies");
  app.add_option("--advertise", f.advertise,
                 "With --store-url-file: host:port where clients and workers reach this replica "
                 "(followers name the leader by it; default: the --listen address)");
  app.add_option("--leader-lease-ttl", f.leader_lease_ttl_s,
                 "With --store-url-file: seconds a leader's lease lasts without renewal; a "
                 "follower takes over about this long after the leader dies")
      ->check(CLI::Range(0.5, 300.0))
      ->capture_default_str();
  app.add_option("--log-format", f.log_format,
                 "Log lines on stderr: text (\"lorad: ...\") or json (one object per line: ts, "
                 "level, component, msg, and job, attempt, rank, worker where they apply)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  {
    lora::LogOptions log;
    log.component = "lorad";
    log.format = *lora::ParseLogFormat(f.log_format);  // checked by CLI11
    const bool json = log.format == lora::LogFormat::kJson;
    lora::InitLogging(std::move(log));
    if (json) lora::RouteGrpcLogs();  // every line JSON, gRPC's own too
  }
  // Checked before anything else is opened: a bad certificate setup is a configuration error.
  auto credentials = lora::server::MakeServerCredentials(f.tls);
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  const bool tls = !f.tls.cert_file.empty();
  for (const auto& [file, out, name] :
       {std::tuple{&auth_token_file, &f.auth_token, "--auth-token-file"},
        std::tuple{&worker_token_file, &f.worker_token, "--worker-token-file"},
        std::tuple{&store_url_file, &f.store_url, "--store-url-file"}}) {
    if (file->empty()) continue;
    auto secret = lora::ReadSecretFile(*file);
    if (!secret.ok()) return Fail(absl::StrCat(name, ": ", secret.status().message()));
    *out = *secret;
  }
  const bool replicated = !f.store_url.empty();
  if (replicated && f.local_workers > 0) {
    return Fail(
        "--local-workers with a PostgreSQL store: a replica's local workers would die with it; "
        "replicas need remote lora-worker agents (--controller naming every replica)");
  }
  lora::server::CredentialStore::Options co;
  co.tokens_file = f.auth_tokens_file;
  co.user_token = f.auth_token;
  co.worker_token = f.worker_token;
  co.client_certificates_are_workers = !f.tls.client_ca_file.empty();
  if (f.local_workers > 0) co.local_worker_token = NewLocalSecret();
  auto creds = lora::server::CredentialStore::Create(co);
  if (!creds.ok()) return Fail(std::string(creds.status().message()));
  // Any process that reaches the port can register as a worker and receive jobs and their
  // data paths: beyond loopback, the worker plane needs a credential (a token, or a client
  // certificate verified against --tls-client-ca).
  if (!IsLoopbackListen(f.listen) && !(*creds)->has_worker_credentials()) {
    return Fail(absl::StrCat(
        "--listen ", f.listen,
        " accepts workers from the network, and no worker credential is set: set a worker "
        "token (--worker-token-file, LORAD_WORKER_TOKEN or a worker line in "
        "--auth-tokens-file) or worker certificates (--tls-cert, --tls-key and "
        "--tls-client-ca), or listen on loopback"));
  }

  if (absl::Status s = lora::MakeDirectories(lora::JoinPath(f.data_dir, "artifacts")); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  std::unique_ptr<lora::server::DataDirLock> dir_lock;
  std::unique_ptr<lora::server::JobStore> store;
  lora::server::pg::PgJobStore* pg_store = nullptr;
  if (!replicated) {
    // Before anything reads the store: two lorads on one directory would run the same jobs.
    auto lock = lora::server::DataDirLock::Acquire(f.data_dir);
    if (!lock.ok()) return Fail(std::string(lock.status().message()));
    dir_lock = std::move(*lock);
    auto sqlite = lora::server::SqliteJobStore::Open({lora::JoinPath(f.data_dir, "lorad.db")});
    if (!sqlite.ok()) return Fail(std::string(sqlite.status().message()));
    store = std::move(*sqlite);
  } else {
    // Replicas share --data-dir (artifacts and uploads, a ReadWriteMany volume): the leader
    // lease, not a file lock, keeps a second writer out, and fences its store writes.
    if (f.advertise.empty()) f.advertise = f.listen;
    lora::server::pg::PgJobStore::Options po;
    po.conninfo = f.store_url;
    po.connections = std::max(2, std::min(f.pool_threads, 16));
    po.fence_lease = "lorad";
    po.replica_name = absl::StrCat("lorad replica ", f.advertise);
    auto pg = lora::server::pg::PgJobStore::Open(po);
    if (!pg.ok()) return Fail(absl::StrCat("--store-url-file: ", pg.status().message()));
    pg_store = pg->get();
    store = std::move(*pg);
  }
  lora::server::ArtifactStore artifacts(lora::JoinPath(f.data_dir, "artifacts"));
  // A replica's directory is shared: what looks like a leftover may be the leader's upload in
  // flight. The elected leader clears them instead.
  if (!replicated) {
    if (int removed = artifacts.RemoveLeftovers(); removed > 0)
      lora::LogInfo(absl::StrCat("removed ", removed, " partial uploads left by a crash"));
  }
  // Metrics, before the manager: it reports finished jobs, retries and lost workers.
  lora::MetricsRegistry registry;
  auto job_metrics = *lora::JobMetrics::Create(&registry);
  lora::server::JobManager::Options mo;
  mo.observer.job_finished = [&job_metrics](const lora::v1::Job& job) {
    const std::string state = lora::v1::JobState_Name(job.state());
    job_metrics->JobFinished(KindLabel(job.kind()), state);
    lora::LogInfo(absl::StrCat("jobs/", job.id(), " ", state,
                               job.state() == lora::v1::FAILED
                                   ? absl::StrCat(": ", job.error().message())
                                   : ""))
        .Job(job.id())
        .Attempt(job.attempt())
        .Field("tenant", job.tenant())
        .Field("state", state);
  };
  mo.observer.job_retried = [&job_metrics](const lora::v1::Job& job, const char* reason,
                                           const std::string& why) {
    job_metrics->JobRetried(reason);
    lora::LogWarning(absl::StrCat("jobs/", job.id(), ": ", why))
        .Job(job.id())
        .Attempt(job.attempt())
        .Field("tenant", job.tenant())
        .Field("reason", reason);
  };
  mo.observer.worker_lost = [&job_metrics](const std::string& worker, const std::string& why) {
    std::string reason = why;
    std::replace(reason.begin(), reason.end(), ' ', '_');  // "missed heartbeats" -> label
    job_metrics->WorkerLost(reason);
    lora::LogWarning(absl::StrCat("worker ", worker, " lost (", why, ")")).Worker(worker);
  };
  mo.max_attempts = f.max_attempts;
  mo.heartbeat_timeout = absl::Seconds(f.heartbeat_timeout_s);
  mo.cancel_grace = absl::Seconds(f.cancel_grace_s);
  mo.reattach_grace = absl::Seconds(f.reattach_grace_s);
  mo.max_queued_jobs_per_tenant = f.tenant_max_queued_jobs;
  mo.max_running_ranks_per_tenant = f.tenant_max_running_ranks;
  for (const std::string& root : f.data_roots) {
    if (root.empty() || root.front() != '/') {
      return Fail(absl::StrCat("--data-root ", root, ": must be an absolute path"));
    }
  }
  mo.declared_data_roots = f.data_roots;
  mo.follower = replicated;
  lora::server::FileManager::Options fo;
  fo.store = store.get();
  fo.root = lora::JoinPath(f.data_dir, "blobs");
  fo.tenant_quota_bytes = f.tenant_storage_bytes;
  fo.stall_timeout = absl::Seconds(f.upload_stall_timeout_s);
  auto files = lora::server::FileManager::Create(fo);
  if (!files.ok()) return Fail(std::string(files.status().message()));
  mo.resolve_files = [files = files->get()](const std::string& tenant,
                                            const lora::v1::JobSpec& spec) {
    return files->ResolveSpec(tenant, spec);
  };
  mo.heartbeat_interval_ms = static_cast<int>(std::max(200.0, f.heartbeat_timeout_s * 1000 / 5));
  auto manager = lora::server::JobManager::Create(mo, store.get(), &artifacts);
  if (!manager.ok()) return Fail(std::string(manager.status().message()));
  (*files)->SetInUse([m = manager->get()](const std::string& name) { return m->NamesFile(name); });
  (*files)->SetWritable([m = manager->get()] { return m->CheckWritable(); });

  // Metrics.
  auto rpc_metrics = *lora::RpcMetrics::Create(&registry);  // per method; streams apart
  if (absl::Status s = lora::RegisterProcessMetrics(&registry); !s.ok())
    lora::LogWarning(absl::StrCat("no process_* metrics: ", s.message()));
  if (absl::Status s = lora::RegisterBuildInfo(&registry, "lorad_build_info",
                                               {{"grpc_version", grpc::Version()}});
      !s.ok())
    lora::LogWarning(absl::StrCat("no lorad_build_info metric: ", s.message()));
  auto active =
      *registry.AddGauge("lorad_active_jobs", "Jobs not yet finished, by state", {"state"});
  auto workers = *registry.AddGauge("lorad_workers_connected", "Connected lora-worker agents", {});
  auto slots = *registry.AddGauge("lorad_worker_slots", "Worker rank slots, by use", {"use"});
  auto watchers = *registry.AddGauge("lorad_watch_streams", "Open WatchJob streams", {});
  auto watch_delivery = *registry.AddHistogram(
      "lorad_watch_delivery_seconds",
      "From a live event's commit to its write to one WatchJob stream completing", {},
      {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5});
  auto unschedulable = *registry.AddGauge(
      "lorad_unschedulable_jobs",
      "Queued jobs the connected workers cannot run (no worker with the device, or too few "
      "slots in all), by device",
      {"device"});
  auto leader_gauge = *registry.AddGauge(
      "lorad_leader", "1 while this lorad leads (always, without replicas), 0 on a follower", {});
  auto undecided = *registry.AddGauge(
      "lorad_undecided_jobs",
      "Jobs whose outcome is decided but not yet stored (the store is failing writes)", {});
  auto store_failures = *registry.AddGauge("lorad_store_write_failures",
                                           "Store writes that failed since lorad started", {});
  auto sent = *registry.AddCounter("lorad_artifact_bytes_sent_total",
                                   "Artifact bytes streamed to clients", {});
  auto received = *registry.AddCounter("lorad_artifact_bytes_received_total",
                                       "Artifact bytes uploaded by workers", {});
  if (absl::Status s = registry.AddCallbackGauge("lorad_jobs", "Jobs in the store (all states)",
                                                 [db = store.get()] {
                                                   auto n = db->CountJobs();
                                                   return n.ok() ? static_cast<double>(*n) : 0.0;
                                                 });
      !s.ok())
    lora::LogWarning(absl::StrCat("no lorad_jobs metric: ", s.message()));
  lora::server::ServiceHooks hooks;
  hooks.on_rpc = [&](const std::string& method, grpc::StatusCode code, double seconds) {
    rpc_metrics->Record(method, static_cast<int>(code), seconds);
  };
  hooks.on_artifact_bytes_sent = [&](int64_t n) {
    sent->WithLabels({})->Increment(static_cast<double>(n));
  };
  hooks.on_artifact_bytes_received = [&](int64_t n) {
    received->WithLabels({})->Increment(static_cast<double>(n));
  };
  hooks.on_watch_streams = [&](int delta) { watchers->WithLabels({})->Increment(delta); };
  hooks.on_watch_delivery = [delivery = watch_delivery->WithLabels({})](double seconds) {
    delivery->Observe(seconds);
  };
  std::unique_ptr<lora::MetricsHttpServer> metrics_http;
  if (!f.metrics_listen.empty()) {
    // /leader: a Kubernetes readiness probe routes the Service to the leader by it.
    auto http = lora::MetricsHttpServer::Create(&registry, f.metrics_listen,
                                                [m = manager->get()] { return m->leading(); });
    if (!http.ok()) return Fail(absl::StrCat("--metrics-listen: ", http.status().message()));
    metrics_http = std::move(*http);
  }

  // gRPC.
  lora::server::ThreadPool pool(f.pool_threads);
  lora::server::JobServiceImpl job_service(manager->get(), &artifacts, &pool, &hooks, creds->get(),
                                           static_cast<size_t>(f.watch_max_pending_events));
  lora::server::WorkerServiceImpl worker_service(manager->get(), &artifacts, &pool, &hooks,
                                                 creds->get(), files->get());
  lora::server::FileServiceImpl file_service(files->get(), &pool, &hooks, creds->get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(f.listen, *credentials, &port);
  // Local workers would need a CA that signed the server certificate: with TLS they connect
  // over a Unix socket in the data directory instead (plaintext, reachable only by users who
  // can enter that directory).
  std::string local_socket;
  if (tls && f.local_workers > 0) {
    std::error_code ec;
    local_socket = absl::StrCat(
        "unix:", std::filesystem::absolute(lora::JoinPath(f.data_dir, "lorad.sock"), ec).string());
    if (local_socket.size() - 5 >= 108) {  // sockaddr_un.sun_path
      return Fail(absl::StrCat("--local-workers with TLS: the socket path ", local_socket,
                               " is too long for a Unix socket; use a shorter --data-dir"));
    }
    std::filesystem::remove(local_socket.substr(5), ec);
    builder.AddListeningPort(local_socket, grpc::InsecureServerCredentials());
  }
  builder.RegisterService(&job_service);
  builder.RegisterService(&worker_service);
  builder.RegisterService(&file_service);
  builder.SetMaxReceiveMessageSize(8 << 20);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  // Every method of every lora.* service registered above gets its series at zero, and
  // streaming ones are measured apart from unary latencies (lorad_rpc_stream_duration_seconds).
  builder.SetOption(lora::server::ListRegisteredMethods(
      "lora.", [&](std::vector<lora::server::RpcMethodInfo> methods) {
        for (const auto& m : methods) rpc_metrics->AddMethod(m.method, m.streaming);
      }));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return Fail(absl::StrCat("--listen: cannot listen on ", f.listen));
  server->GetHealthCheckService()->SetServingStatus(true);
  const std::string host = f.listen.substr(0, f.listen.rfind(':'));
  lora::LogInfo(
      absl::StrCat("serving on ", host, ":", port,
                   tls ? absl::StrCat(" with TLS (", f.tls.cert_file,
                                      f.tls.client_ca_file.empty()
                                          ? ""
                                          : absl::StrCat("; client certificates from ",
                                                         f.tls.client_ca_file),
                                      "; re-read every ", f.tls.refresh_interval_s, " s)")
                       : " (plaintext)",
                   metrics_http ? absl::StrCat(", metrics on port ", metrics_http->port()) : "",
                   ", data in ", f.data_dir))
      .Field("port", port)
      .Field("metrics_port", metrics_http ? metrics_http->port() : 0)
      .Field("version", lora::GetBuildInfo().version)
      .Field("revision", lora::GetBuildInfo().revision);
  if (!f.port_file.empty()) {
    // Whoever waits for the file would wait forever: say why here.
    if (absl::Status s = lora::WriteFileAtomically(f.port_file, absl::StrCat(port, "\n")); !s.ok())
      lora::LogError(absl::StrCat("--port-file: ", s.message()));
  }

  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  g_credentials = creds->get();
  struct sigaction hup = {};
  hup.sa_handler = OnHangup;
  ::sigaction(SIGHUP, &hup, nullptr);

  // Replicas: campaign for the lease. The callbacks only flip flags (they run on the elector's
  // thread and must return promptly); the main loop below acts on them.
  std::atomic<int64_t> elected_epoch{0};
  std::atomic<bool> lost_leadership{false};
  std::unique_ptr<lora::server::pg::LeaderElector> elector;
  if (replicated) {
    lora::server::pg::LeaderElector::Options eo;
    eo.conninfo = f.store_url;
    eo.holder = f.advertise;
    eo.ttl = absl::Seconds(f.leader_lease_ttl_s);
    eo.on_elected = [&, pg_store](int64_t epoch) {
      pg_store->SetFenceEpoch(epoch);
      elected_epoch = epoch;
    };
    eo.on_lost = [&, pg_store] {
      pg_store->SetFenceEpoch(0);  // refuse writes at once, before the process ends
      lost_leadership = true;
      g_stop = true;
    };
    auto e = lora::server::pg::LeaderElector::Create(eo);
    if (!e.ok()) return Fail(absl::StrCat("leader election: ", e.status().message()));
    elector = std::move(*e);
    lora::LogInfo(absl::StrCat("replica ", f.advertise, ": following until elected (lease ttl ",
                               f.leader_lease_ttl_s, " s)"));
  }
  server->GetHealthCheckService()->SetServingStatus("lorad.leader", !replicated);

  lora::server::LocalWorkersOptions lw;
  lw.count = f.local_workers;
  lw.lora_worker = f.lora_worker;
  lw.controller =
      !local_socket.empty()
          ? local_socket
          : absl::StrCat(host == "0.0.0.0" || host.empty() ? "127.0.0.1" : host, ":", port);
  lw.work_dir = lora::JoinPath(f.data_dir, "workers");
  lw.token = co.local_worker_token;
  lw.threads_per_rank = f.threads_per_rank;
  lw.drain_grace_s = f.drain_grace_s;
  lw.log_format = f.log_format;
  lora::server::LocalWorkers local(lw);
  if (f.local_workers > 0) local.Start();

  auto next_reap = absl::Now();
  while (!g_stop) {
    bool leading = (*manager)->leading();
    if (!leading && elected_epoch.load() != 0) {
      const auto t0 = std::chrono::steady_clock::now();
      if (absl::Status s = (*manager)->Lead(); s.ok()) {
        leading = true;
        server->GetHealthCheckService()->SetServingStatus("lorad.leader", true);
        if (int removed = artifacts.RemoveLeftovers(); removed > 0)
          lora::LogInfo(absl::StrCat("removed ", removed, " partial uploads of the last leader"));
        lora::LogInfo(absl::StrCat("leading at epoch ", elected_epoch.load(), " (took over in ",
                                   std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::steady_clock::now() - t0)
                                       .count(),
                                   " ms)"))
            .Field("epoch", elected_epoch.load());
      } else {
        lora::LogWarning(absl::StrCat("elected, but cannot take the jobs over yet: ", s.message()));
      }
    }
    if (!leading && elector) (*manager)->SetLeaderHint(elector->leader());
    leader_gauge->WithLabels({})->Set(leading ? 1 : 0);
    (*manager)->Tick();
    if (leading && absl::Now() >= next_reap) {
      if (int reaped = (*files)->Reap(absl::Now()); reaped > 0)
        lora::LogInfo(absl::StrCat("removed ", reaped, " stalled or unnamed uploads"));
      next_reap = absl::Now() + absl::Seconds(std::min(60.0, f.upload_stall_timeout_s / 4));
      if (f.retain_finished_s > 0) {
        const int deleted =
            (*manager)->DeleteFinishedBefore(absl::Now() - absl::Seconds(f.retain_finished_s));
        if (deleted > 0) lora::LogInfo(absl::StrCat("retention: deleted ", deleted, " ended jobs"));
      }
    }
    auto stats = (*manager)->Stats();
    for (int s = lora::v1::QUEUED; s <= lora::v1::PAUSED; ++s) {
      auto state = static_cast<lora::v1::JobState>(s);
      if (lora::server::IsTerminal(state)) continue;
      active->WithLabels({lora::v1::JobState_Name(state)})
          ->Set(static_cast<double>(stats.jobs_by_state[state]));
    }
    workers->WithLabels({})->Set(static_cast<double>(stats.workers_connected));
    slots->WithLabels({"busy"})->Set(static_cast<double>(stats.workers_busy_slots));
    undecided->WithLabels({})->Set(static_cast<double>(stats.undecided_jobs));
    store_failures->WithLabels({})->Set(static_cast<double>(stats.store_write_failures));
    slots->WithLabels({"total"})->Set(static_cast<double>(stats.workers_total_slots));
    for (const char* device : {"cpu", "cuda"}) {
      unschedulable->WithLabels({device})->Set(
          static_cast<double>(stats.unschedulable_by_device[device]));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (lost_leadership) {
    // Nothing more may be written or sent in this term: end at once, without a drain (the new
    // leader owns the jobs and the workers reconnect to it).
    lora::LogError("lost the leader lease; exiting so that this replica restarts as a follower");
    (*manager)->Shutdown();
    server->Shutdown(std::chrono::system_clock::now());
    server->Wait();
    elector->Stop();
    return kExitLostLeadership;
  }
  lora::LogInfo("shutting down");
  server->GetHealthCheckService()->SetServingStatus(false);
  // A planned stop: nothing new starts, and the local workers drain while the server still
  // serves them, so their ranks' drain checkpoints are uploaded and recorded and the jobs are
  // requeued without spending an attempt. Remote workers keep running and reattach later.
  (*manager)->StopScheduling();
  local.Stop(f.drain_grace_s);
  (*manager)->Shutdown();  // watchers get UNAVAILABLE and resume elsewhere by sequence
  g_credentials = nullptr;
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  if (elector) elector->Stop();  // a leader hands over at once
  lora::LogInfo("stopped");
  return 0;
}
