#include "worker/agent/worker_agent.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/address_list.h"
#include "common/engine_events.h"
#include "common/exit_codes.h"
#include "common/file_util.h"
#include "common/log.h"
#include "google/protobuf/util/json_util.h"

namespace lora {
namespace {

namespace wv1 = lora::worker::v1;
namespace ev1 = lora::engine::v1;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// A session that stayed up this long was healthy: the next reconnect starts the backoff over.
constexpr auto kHealthySession = std::chrono::seconds(10);
// After the grace ran out and the rest were killed: how long their exits get to go out.
constexpr auto kKilledReportTime = std::chrono::seconds(5);
// How long a Write in flight may take to fail once its session has ended.
constexpr auto kWriteGrace = std::chrono::seconds(2);
// A half-closed session that lorad has not ended by then is cancelled.
constexpr auto kCloseTime = std::chrono::seconds(5);
// A rank's record outlives its exit this long, so a re-sent assignment is recognized.
constexpr auto kForgetAfter = std::chrono::seconds(60);
// How often the housekeeping thread looks at a drain in progress.
constexpr auto kDrainPoll = std::chrono::milliseconds(200);

// A line about one rank: the text is the message, JSON lines also carry the rank's ids.
void LogRank(LogLevel level, const std::tuple<std::string, int, int>& key,
             const std::string& message) {
  LogLine(level, message).Job(std::get<0>(key)).Attempt(std::get<1>(key)).Rank(std::get<2>(key));
}

wv1::RankRef RefOf(const std::tuple<std::string, int, int>& key) {
  wv1::RankRef ref;
  ref.set_job_id(std::get<0>(key));
  ref.set_attempt(std::get<1>(key));
  ref.set_rank(std::get<2>(key));
  return ref;
}

std::string Describe(const std::tuple<std::string, int, int>& key) {
  return absl::StrCat("jobs/", std::get<0>(key), " attempt ", std::get<1>(key), " rank ",
                      std::get<2>(key));
}

// A free TCP port for the rank-0 rendezvous (bound then released; the window for a clash is tiny).
int ReservePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  int port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

// Waits on `cv` until `done()` or `deadline`; whether `done()` held.
template <typename Done>
bool WaitUntil(absl::CondVar& cv, absl::Mutex& mu, Clock::time_point deadline, Done done)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
  while (!done()) {
    const auto now = Clock::now();
    if (now >= deadline) return false;
    cv.WaitWithTimeout(&mu, absl::FromChrono(deadline - now));
  }
  return true;
}

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

absl::StatusOr<WorkerAgentOptions::Tls> ReadWorkerTls(const std::string& ca_file,
                                                      const std::string& cert_file,
                                                      const std::string& key_file) {
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (ca_file.empty()) {
    if (!cert_file.empty()) {
      return absl::InvalidArgumentError(
          "--tls-cert/--tls-key need --tls-ca (the CA that signed lorad's certificate)");
    }
    return WorkerAgentOptions::Tls{};
  }
  WorkerAgentOptions::Tls tls;
  for (const auto& [flag, path, out] : {std::tuple{"--tls-ca", &ca_file, &tls.ca_pem},
                                        std::tuple{"--tls-cert", &cert_file, &tls.cert_pem},
                                        std::tuple{"--tls-key", &key_file, &tls.key_pem}}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> pem = ReadFileToString(*path);
    if (!pem.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": cannot read ", pem.status().message()));
    }
    *out = std::move(*pem);
  }
  tls.ca_file = ca_file;
  tls.cert_file = cert_file;
  tls.key_file = key_file;
  return tls;
}

int LowestFreeSlot(const std::vector<int>& held, int slots) {
  for (int i = 0; i < slots; ++i) {
    if (std::find(held.begin(), held.end(), i) == held.end()) return i;
  }
  return -1;
}

absl::StatusOr<std::unique_ptr<WorkerAgent>> WorkerAgent::Create(WorkerAgentOptions options) {
  if (options.slots < 1) return absl::InvalidArgumentError("slots: must be >= 1");
  for (const std::string& target : SplitAddressList(options.controller)) {
    if (target.empty()) {
      return absl::InvalidArgumentError(
          "controller: an empty address (host:port, or several separated by commas)");
    }
  }
  if (options.drain_grace.count() < 0)
    return absl::InvalidArgumentError("drain_grace: must be >= 0");
  for (const auto& [name, policy] : {std::pair{"connect_retry", &options.connect_retry},
                                     std::pair{"upload_retry", &options.upload_retry},
                                     std::pair{"fetch_retry", &options.fetch_retry}}) {
    if (absl::Status s = policy->Validate(); !s.ok())
      return absl::InvalidArgumentError(absl::StrCat(name, ".", s.message()));
  }
  absl::StatusOr<std::unique_ptr<WorkDirLock>> lock = WorkDirLock::Acquire(options.work_dir);
  if (!lock.ok()) return lock.status();
  // Holding the lock, no rank of ours runs yet: every run directory is a crash's leftover.
  absl::StatusOr<Leftovers> gone = RemoveCrashLeftovers(
      options.work_dir, /*owned=*/{}, options.failed_log_bytes, options.failed_logs_kept);
  if (!gone.ok()) return gone.status();
  if (gone->run_directories + gone->temporary_files > 0) {
    LogInfo(absl::StrCat("removed what an earlier run left in ", options.work_dir, ": ",
                         gone->run_directories, " run directories, ", gone->temporary_files,
                         " temporary files"));
  }
  std::unique_ptr<WorkerAgent> agent(new WorkerAgent(std::move(options), *std::move(lock)));
  if (absl::Status s = agent->file_cache_->Open(); !s.ok()) return s;
  return agent;
}

WorkerAgent::WorkerAgent(WorkerAgentOptions options, std::unique_ptr<WorkDirLock> lock)
    : options_(std::move(options)), work_dir_lock_(std::move(lock)) {
  // Create refused a list with an empty entry, so there is at least one address.
  controllers_ = SplitAddressList(options_.controller);
  for (const std::string& target : controllers_) {
    stubs_.push_back(wv1::WorkerService::NewStub(MakeChannel(target)));
  }
  transfer_ = std::make_unique<ArtifactTransfer>(
      [this] { return stub(); }, [this](grpc::ClientContext* ctx) { AddMetadata(ctx); },
      options_.upload_retry, options_.fetch_retry);
  file_cache_ = std::make_unique<FileCache>(FileCache::Options{
      options_.cache_dir.empty() ? JoinPath(options_.work_dir, "cache") : options_.cache_dir,
      options_.cache_max_bytes});
}

// Run() joins every thread it starts, and without Run() none was started.
WorkerAgent::~WorkerAgent() = default;

std::shared_ptr<grpc::Channel> WorkerAgent::MakeChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // After a failed connection gRPC re-resolves the address before it tries again, and by
  // default at most every 30 s: a controller back from a restart, or a handshake that a renewed
  // certificate would now pass, waited that long.
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000);
  if (options_.tls.ca_pem.empty()) {
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  }
  if (!options_.tls.ca_file.empty()) {
    const auto& t = options_.tls;
    auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        t.key_file, t.cert_file, t.ca_file, std::max(1u, t.refresh_interval_s));
    grpc::experimental::TlsChannelCredentialsOptions tls;
    tls.set_certificate_provider(provider);
    tls.watch_root_certs();
    if (!t.cert_file.empty()) tls.watch_identity_key_cert_pairs();
    // What SslCredentials checks too: the chain to the CA and lorad's name.
    tls.set_verify_server_certs(true);
    tls.set_certificate_verifier(
        std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
    if (auto credentials = grpc::experimental::TlsCredentials(tls)) {
      return grpc::CreateCustomChannel(target, credentials, args);
    }
    LogWarning("gRPC refused the file-watching TLS options; certificates are read once");
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = options_.tls.ca_pem;
  ssl.pem_cert_chain = options_.tls.cert_pem;
  ssl.pem_private_key = options_.tls.key_pem;
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args);
}

void WorkerAgent::AddMetadata(grpc::ClientContext* ctx) const {
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  ctx->AddMetadata("lora-worker-id", options_.worker_id);
}

// ---------------------------------------------------------------- lifecycle

void WorkerAgent::Run() {
  std::thread housekeeping([this] { Housekeeping(); });
  Backoff backoff(options_.connect_retry, Clock::now());
  size_t failed_in_round = 0;  // addresses that failed since the last round began
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) break;
    }
    const auto started = Clock::now();
    const grpc::Status status = Session();
    absl::MutexLock lock(&mu_);
    if (finished_) break;
    const auto now = Clock::now();
    if (now - started > kHealthySession) {
      backoff.Reset(now);
      failed_in_round = 0;
    }
    // Outside a drain every failure is retried (a worker outlives a controller's bad day); in
    // one, a refusal (a revoked token, lorad replaced by one that does not know us) means no
    // exit can be reported: waiting out the grace would only delay the shutdown.
    if (draining_ && !status.ok() && !options_.connect_retry.IsTransient(status.error_code()) &&
        !unreachable_) {
      LogWarning(absl::StrCat("lorad refuses this worker (", status.error_message(),
                              "): not waiting to report the ranks' exits"));
      unreachable_ = true;
      cv_.SignalAll();
    }
    // Replicas: only the leader keeps a session, so a failed one tries the next address at
    // once, and the backoff applies to whole rounds (every address failed).
    auto delay = Clock::duration::zero();
    if (!status.ok() && controllers_.size() > 1) {
      current_ = (current_.load() + 1) % controllers_.size();
      if (++failed_in_round >= controllers_.size()) failed_in_round = 0;
    }
    if (status.ok() || failed_in_round == 0) {
      delay = backoff.NextDelay(now).value_or(options_.connect_retry.max_delay);
    }
    WaitUntil(cv_, mu_, now + delay,
              [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_; });
  }
  // Drained (or out of time): nothing may outlive Run, so make sure every rank is over.
  std::vector<std::thread> runners;
  {
    absl::MutexLock lock(&mu_);
    KillRanksLocked(SIGKILL);
    transfer_->AbortAll();
    for (auto& [key, r] : ranks_) {
      if (r->runner.joinable()) runners.push_back(std::move(r->runner));
    }
  }
  for (std::thread& t : runners) t.join();
  {
    absl::MutexLock lock(&mu_);
    housekeeping_stop_ = true;
    cv_.SignalAll();
  }
  housekeeping.join();
  CleanUpFinishedRanks();
}

void WorkerAgent::Stop() {
  absl::MutexLock lock(&mu_);
  const auto now = Clock::now();
  if (draining_) {
    // A second SIGTERM: the operator will not wait for the grace.
    drain_deadline_ = std::min(drain_deadline_, now);
    cv_.SignalAll();
    return;
  }
  draining_ = true;
  drain_deadline_ = now + options_.drain_grace;
  int running = 0;
  for (auto& [key, r] : ranks_) {
    if (r->child && !r->exited) {
      r->child->Signal(SIGTERM);  // lora-train writes a drain checkpoint and exits 75
      ++running;
    }
  }
  transfer_->AbortFetches();  // ranks that have not started never will
  if (connected_ && writer_ != nullptr) {
    // Before any rank's exit: lorad must not hand a requeued job straight back to us.
    wv1::WorkerMessage m;
    m.mutable_heartbeat()->set_draining(true);
    for (const auto& [key, r] : ranks_) {
      if (!r->exited) *m.mutable_heartbeat()->add_running() = RefOf(key);
    }
    writer_->Enqueue(std::move(m));
  }
  LogInfo(
      absl::StrCat("draining: ", running, " running rank(s) asked to checkpoint and stop, ",
                   std::chrono::duration_cast<std::chrono::seconds>(options_.drain_grace).count(),
                   " s at most"));
  cv_.SignalAll();
}

void WorkerAgent::KillRanksLocked(int signo) {
  for (auto& [key, r] : ranks_) {
    if (r->child && !r->exited) r->child->Signal(signo);
  }
}

void WorkerAgent::DrainStepLocked(Clock::time_point now) {
  if (!draining_ || finished_) {
    if (closing_ && now >= close_deadline_ && context_ != nullptr) context_->TryCancel();
    return;
  }
  bool all_reported = true;
  for (const auto& [key, r] : ranks_) {
    if (!r->exit_sent) all_reported = false;
  }
  if (all_reported) return FinishLocked(now, "drained");
  if (unreachable_ || (!killed_ && now >= drain_deadline_)) {
    if (!killed_) {
      int killed = 0;
      for (auto& [key, r] : ranks_) killed += r->child && !r->exited;
      if (!unreachable_)
        LogWarning(absl::StrCat("drain grace over: killing ", killed, " rank(s) still running"));
      KillRanksLocked(SIGKILL);
      killed_ = true;
      report_deadline_ = now + kKilledReportTime;
      transfer_->AbortAll();
    }
    if (unreachable_) return FinishLocked(now, "lorad refuses this worker");
  }
  if (killed_ && now >= report_deadline_) FinishLocked(now, "drain grace over");
}

void WorkerAgent::FinishLocked(Clock::time_point now, const std::string& why) {
  finished_ = true;
  transfer_->AbortAll();
  LogInfo(absl::StrCat("stopping: ", why));
  if (writer_ != nullptr && connected_) {
    // lorad ends the stream once it has handled everything before the half-close.
    writer_->FinishWrites();
    closing_ = true;
    close_deadline_ = now + kCloseTime;
  } else if (context_ != nullptr) {
    context_->TryCancel();
  }
  cv_.SignalAll();
}

// ---------------------------------------------------------------- the session

grpc::Status WorkerAgent::Session() {
  auto context = std::make_unique<grpc::ClientContext>();
  AddMetadata(context.get());
  std::unique_ptr<grpc::ClientReaderWriter<wv1::WorkerMessage, wv1::ControllerMessage>> stream =
      stub()->Connect(context.get());
  wv1::WorkerMessage reg;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) {
      context->TryCancel();
      return stream->Finish();
    }
    wv1::Register* r = reg.mutable_register_();
    r->set_worker_id(options_.worker_id);
    r->set_address(options_.address);
    r->set_version("lora-worker 0.1.0");
    r->set_draining(draining_);
    wv1::Capabilities* caps = r->mutable_capabilities();
    caps->set_device(options_.device);
    caps->set_slots(options_.slots);
    for (const auto& gpu : options_.gpus) *caps->add_gpus() = gpu;
    caps->set_cpus(static_cast<int>(std::thread::hardware_concurrency()));
    caps->set_memory_bytes(static_cast<int64_t>(::sysconf(_SC_PHYS_PAGES)) *
                           ::sysconf(_SC_PAGESIZE));
    for (auto& [key, rank] : ranks_) {
      if (rank->exit_sent) continue;
      wv1::RunningRank* rr = r->add_running();
      *rr->mutable_ref() = RefOf(key);
      rr->set_last_event_seq(static_cast<int64_t>(rank->events.size()));
      // Re-sent on this session: the controller may not have processed them.
      rank->accepted_queued = false;
      rank->exit_ticket = 0;
    }
    context_ = context.get();
    connected_ = false;
    closing_ = false;
  }
  if (!stream->Write(reg)) {
    {
      absl::MutexLock lock(&mu_);
      context_ = nullptr;
    }
    // Said every attempt: a TLS or credential problem never heals by itself, and the
    // operator needs gRPC's reason (e.g. a handshake failure) to see which it is.
    const grpc::Status status = stream->Finish();
    LogWarning(absl::StrCat("cannot reach ", controller(), ": ", status.error_message(), " (code ",
                            static_cast<int>(status.error_code()), "); retrying"));
    return status;
  }
  SessionWriter writer(stream.get(), [this] {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();
  });
  {
    absl::MutexLock lock(&mu_);
    writer_ = &writer;
  }
  wv1::ControllerMessage message;
  while (stream->Read(&message)) Dispatch(message);
  bool graceful;
  {
    absl::MutexLock lock(&mu_);
    graceful = closing_;
  }
  // The call is over, so a Write in flight fails soon; one that does not (a stuck connection) is
  // cancelled, which would otherwise replace lorad's status (UNAUTHENTICATED, say) with CANCELLED.
  // Without mu_: the writer's progress callback takes it.
  writer.Close(kWriteGrace, [&] { context->TryCancel(); });
  {
    absl::MutexLock lock(&mu_);
    NoteWrittenExitsLocked();  // the last word on what this session delivered
    writer_ = nullptr;
    context_ = nullptr;
    connected_ = false;
    closing_ = false;
  }
  const grpc::Status status = stream->Finish();
  if (!graceful) {
    LogWarning(absl::StrCat("disconnected from ", controller(), ": ", status.error_message(),
                            " (code ", static_cast<int>(status.error_code()), "); reconnecting"));
  }
  return status;
}

void WorkerAgent::Dispatch(const wv1::ControllerMessage& message) {
  if (message.has_ack()) {
    absl::MutexLock lock(&mu_);
    heartbeat_ms_ =
        message.ack().heartbeat_interval_ms() > 0 ? message.ack().heartbeat_interval_ms() : 2000;
    for (const auto& rr : message.ack().resume_from()) {
      auto it = ranks_.find({rr.ref().job_id(), rr.ref().attempt(), rr.ref().rank()});
      if (it != ranks_.end()) {
        it->second->sent_seq =
            std::clamp<int64_t>(rr.last_event_seq(), 0, it->second->events.size());
      }
    }
    for (const auto& ref : message.ack().stop()) {
      auto it = ranks_.find({ref.job_id(), ref.attempt(), ref.rank()});
      if (it == ranks_.end()) continue;
      it->second->exit_sent = true;  // nobody wants its results any more
      it->second->cancel_requested = true;
      it->second->done_at = Clock::now();
      if (it->second->child && !it->second->exited) it->second->child->Signal(SIGKILL);
    }
    connected_ = true;
    LogInfo(absl::StrCat("registered with ", controller(), " as ", options_.worker_id));
    FlushLocked();
    cv_.SignalAll();
  } else if (message.has_assignment()) {
    StartRank(message.assignment());
  } else if (message.has_cancel()) {
    const auto& ref = message.cancel().ref();
    CancelRank({ref.job_id(), ref.attempt(), ref.rank()}, message.cancel().grace_ms());
  }
}

void WorkerAgent::FlushLocked() {
  if (!connected_ || writer_ == nullptr) return;
  for (auto& [key, r] : ranks_) {
    if (r->exit_sent || r->exit_ticket > 0) continue;
    if (r->accepted && !r->accepted_queued) {
      wv1::WorkerMessage m;
      *m.mutable_accepted() = *r->accepted;
      if (writer_->Enqueue(std::move(m)) == 0) return;  // the session is over
      r->accepted_queued = true;
    }
    while (r->sent_seq < static_cast<int64_t>(r->events.size())) {
      wv1::WorkerMessage m;
      *m.mutable_event() = r->events[static_cast<size_t>(r->sent_seq)];
      if (writer_->Enqueue(std::move(m)) == 0) return;
      ++r->sent_seq;
    }
    if (r->exited) {
      wv1::WorkerMessage m;
      *m.mutable_exited() = *r->exited;
      r->exit_ticket = writer_->Enqueue(std::move(m));
      if (r->exit_ticket == 0) return;
    }
  }
}

void WorkerAgent::NoteWrittenExitsLocked() {
  if (writer_ == nullptr) return;
  const int64_t written = writer_->written();
  for (auto& [key, r] : ranks_) {
    if (!r->exit_sent && r->exit_ticket > 0 && r->exit_ticket <= written) {
      r->exit_sent = true;
      r->done_at = Clock::now();
    }
  }
}

void WorkerAgent::Housekeeping() {
  auto next_heartbeat = Clock::now();
  while (true) {
    std::vector<std::unique_ptr<Rank>> forgotten;
    bool clean_up = false;
    {
      absl::MutexLock lock(&mu_);
      if (housekeeping_stop_) break;
      auto now = Clock::now();
      if (connected_ && writer_ != nullptr && now >= next_heartbeat) {
        wv1::WorkerMessage m;
        wv1::Heartbeat* hb = m.mutable_heartbeat();
        hb->set_draining(draining_);
        for (const auto& [key, r] : ranks_) {
          if (!r->exited) *hb->add_running() = RefOf(key);
        }
        writer_->Enqueue(std::move(m));
        next_heartbeat = now + std::chrono::milliseconds(heartbeat_ms_);
      }
      FlushLocked();
      NoteWrittenExitsLocked();
      auto wake = connected_ ? next_heartbeat : now + std::chrono::milliseconds(heartbeat_ms_);
      for (auto& [key, r] : ranks_) {
        if (r->kill_at && *r->kill_at <= now) {
          if (r->child && !r->exited) r->child->Signal(SIGKILL);  // the cancel's grace is over
          r->kill_at.reset();
        }
        if (r->kill_at) wake = std::min(wake, *r->kill_at);
        if (r->exit_sent && r->runner_done && !r->cleaned) clean_up = true;
      }
      DrainStepLocked(now);
      if (draining_ || closing_) wake = std::min(wake, now + kDrainPoll);
      for (auto it = ranks_.begin(); it != ranks_.end();) {
        if (it->second->cleaned && now - it->second->done_at > kForgetAfter) {
          forgotten.push_back(std::move(it->second));
          it = ranks_.erase(it);
        } else {
          ++it;
        }
      }
      if (!clean_up && forgotten.empty()) {
        cv_.WaitWithTimeout(&mu_, absl::FromChrono(std::max<Clock::duration>(
                                      wake - now, std::chrono::milliseconds(10))));
        continue;
      }
    }
    for (auto& r : forgotten) {
      if (r->runner.joinable()) r->runner.join();
    }
    if (clean_up) CleanUpFinishedRanks();
  }
}

void WorkerAgent::CleanUpFinishedRanks() {
  struct Done {
    std::string run_dir, log_name;
    bool failed;
  };
  std::vector<Done> done;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [key, r] : ranks_) {
      if (!r->exit_sent || !r->runner_done || r->cleaned) continue;
      r->cleaned = true;
      if (r->run_dir.empty()) continue;
      const int code = r->exited ? r->exited->exit_code() : 0;
      done.push_back({r->run_dir,
                      absl::StrCat(std::get<0>(key), "-attempt-", std::get<1>(key), "-rank-",
                                   std::get<2>(key)),
                      code != kExitOk && code != kExitInterrupted && !r->cancel_requested});
    }
  }
  for (const Done& d : done) {
    if (d.failed) {
      absl::Status kept =
          KeepLogTail(options_.work_dir, JoinPath(d.run_dir, "engine.log"), d.log_name,
                      options_.failed_log_bytes, options_.failed_logs_kept);
      if (!kept.ok())
        LogWarning(absl::StrCat("keeping the log of ", d.log_name, ": ", kept.message()));
    }
    absl::Status removed;
    {
      absl::MutexLock dirs(&run_dirs_mu_);
      removed = RemoveRunDirectory(options_.work_dir, d.run_dir);
    }
    if (!removed.ok()) LogWarning(std::string(removed.message()));
  }
}

// ---------------------------------------------------------------- ranks

void WorkerAgent::StartRank(const wv1::Assignment& assignment) {
  const auto& ref = assignment.ref();
  Key key{ref.job_id(), ref.attempt(), ref.rank()};
  absl::MutexLock lock(&mu_);
  if (ranks_.count(key)) return;  // duplicate (re-sent after a reconnect)
  auto rank = std::make_unique<Rank>();
  rank->assignment = assignment;
  Rank* r = rank.get();
  ranks_[key] = std::move(rank);
  if (draining_) {
    // Not started: the controller requeues it (a planned stop, like a drained rank).
    wv1::RankExited e;
    *e.mutable_ref() = ref;
    e.set_exit_code(kExitInterrupted);
    e.set_reason("lora-worker is shutting down");
    r->exited = e;
    r->runner_done = true;
    FlushLocked();
    cv_.SignalAll();
    return;
  }
  r->runner = std::thread([this, key] { RunRank(key); });
  LogRank(LogLevel::kInfo, key,
          absl::StrCat("assigned ", Describe(key), "/", assignment.world_size()));
}

void WorkerAgent::CancelRank(const Key& key, int grace_ms) {
  absl::MutexLock lock(&mu_);
  auto it = ranks_.find(key);
  if (it == ranks_.end()) return;
  Rank* r = it->second.get();
  r->cancel_requested = true;
  if (r->child && !r->exited) r->child->Signal(SIGTERM);
  r->kill_at = Clock::now() + std::chrono::milliseconds(std::max(grace_ms, 0));
  cv_.SignalAll();
}

void WorkerAgent::AddEvent(const Key& key, ev1::EngineEvent event) {
  absl::MutexLock lock(&mu_);
  auto it = ranks_.find(key);
  if (it == ranks_.end()) return;
  Rank* r = it->second.get();
  if (event.time() == 0) event.set_time(UnixSeconds());
  event.set_rank(std::get<2>(key));
  wv1::RankEvent ev;
  *ev.mutable_ref() = RefOf(key);
  ev.set_worker_seq(static_cast<int64_t>(r->events.size()) + 1);
  *ev.mutable_event() = std::move(event);
  r->events.push_back(std::move(ev));
  FlushLocked();
}

std::optional<ev1::EngineEvent> WorkerAgent::Prepare(const Key& key, const std::string& run_dir,
                                                     const std::string& line) {
  auto parsed = ParseEngineEvent(line);
  if (!parsed.ok()) {
    // Not forwarded: the controller would only drop it too. The reason names the field.
    LogRank(LogLevel::kWarning, key,
            absl::StrCat(Describe(key), ": dropped an engine event: ", parsed.status().message()));
    return std::nullopt;
  }
  ev1::EngineEvent event = *std::move(parsed);
  if (std::get<2>(key) != 0) return event;
  auto relative = [&](const std::string& path) {
    return fs::relative(path, run_dir).lexically_normal().string();
  };
  auto upload = [&](const std::string& local, int64_t step,
                    google::protobuf::RepeatedPtrField<ev1::FileDigest>* uploaded) {
    const std::string job_path = relative(local);
    absl::StatusOr<ev1::FileDigest> done = transfer_->Upload(RefOf(key), local, job_path, step);
    if (!done.ok()) {
      LogRank(LogLevel::kWarning, key,
              absl::StrCat("upload of ", job_path, " failed: ", done.status().message()));
      return false;
    }
    *uploaded->Add() = *std::move(done);
    return true;
  };
  if (event.has_checkpoint()) {
    ev1::Checkpoint* c = event.mutable_checkpoint();
    bool ok = true;
    for (const auto& f : c->files()) {
      if (!(ok = upload(JoinPath(c->path(), f.path()), c->step(), c->mutable_uploaded()))) break;
    }
    // The manifest last: a resumed rank only trusts a checkpoint directory that has one.
    if (ok) upload(JoinPath(c->path(), "manifest.json"), c->step(), c->mutable_uploaded());
    c->set_job_path(relative(c->path()));
    return event;
  }
  if (event.has_finished()) {
    ev1::Finished* f = event.mutable_finished();
    std::error_code ec;
    auto upload_output = [&](const std::string& local) {
      if (!upload(local, 0, f->mutable_uploaded())) f->add_not_uploaded(relative(local));
    };
    for (const auto& [name, dir] : f->summary().outputs()) {
      for (const auto& entry : fs::recursive_directory_iterator(dir, ec)) {
        if (entry.is_regular_file()) upload_output(entry.path().string());
      }
      if (ec) f->add_not_uploaded(relative(dir));  // could not even list it
    }
    const std::string summary = JoinPath(run_dir, "summary.json");
    if (fs::exists(summary, ec)) upload_output(summary);
    return event;
  }
  return event;
}

void WorkerAgent::RunRank(Key key) {
  Rank* r;
  wv1::Assignment a;
  const std::string run_dir =
      RunDirectory(options_.work_dir, std::get<0>(key), std::get<1>(key), std::get<2>(key));
  {
    absl::MutexLock lock(&mu_);
    r = ranks_[key].get();
    a = r->assignment;
    r->run_dir = run_dir;
  }
  const wv1::RankRef& ref = a.ref();
  const std::string pin = run_dir;
  auto finish = [&](int code, int signal, const std::string& reason) {
    file_cache_->Unpin(pin);  // the rank reads its files no more
    absl::MutexLock lock(&mu_);
    wv1::RankExited e;
    *e.mutable_ref() = ref;
    e.set_exit_code(code);
    e.set_signal(signal);
    e.set_reason(reason);
    r->exited = e;
    r->runner_done = true;  // the last thing RunRank does under the lock
    FlushLocked();
    cv_.SignalAll();
  };
  auto fail = [&](const std::string& reason,
                  absl::StatusCode code = absl::StatusCode::kFailedPrecondition) {
    LogRank(LogLevel::kError, key, absl::StrCat(Describe(key), ": ", reason));
    // Reported as an engine failure event plus a non-zero exit so the job fails with the reason.
    ev1::EngineEvent failed;
    failed.mutable_failed()->set_reason(reason);
    failed.mutable_failed()->set_code(absl::StatusCodeToString(code));
    AddEvent(key, std::move(failed));
    finish(kExitFailure, 0, reason);
  };
  // A drain or a cancel that came before the engine started: it never will.
  auto stopped_before_start = [&]() {
    absl::MutexLock lock(&mu_);
    return draining_ || r->cancel_requested;
  };
  // Before anything runs: the spec's paths come from a client, the reads would be ours.
  if (absl::Status s = options_.data_roots.CheckSpec(a.spec()); !s.ok())
    return fail(std::string(s.message()), s.code());
  absl::Status made;
  {
    absl::MutexLock dirs(&run_dirs_mu_);
    made = MakeDirectories(run_dir);
  }
  if (!made.ok()) return fail(std::string(made.message()));
  // Uploaded files the spec names: fetched into the cache (once per worker, whatever the number
  // of ranks), linked under the run directory, and the spec rewritten to name them there.
  lora::v1::JobSpec spec = a.spec();
  for (const SpecPath& p : SpecPaths(a.spec())) {
    if (!IsFileRef(p.path)) continue;
    auto file = std::find_if(a.files().begin(), a.files().end(),
                             [&](const lora::v1::File& f) { return f.name() == p.path; });
    if (file == a.files().end())
      return fail(absl::StrCat(p.field, ": ", p.path, " is not in the assignment's files"));
    absl::StatusOr<std::string> local = file_cache_->Materialize(
        *file, JoinPath(run_dir, "files"),
        [&](const std::string& sha256, const std::string& path) {
          absl::Status fetched = transfer_->FetchBlob(ref, sha256, path);
          if (fetched.ok()) {
            LogRank(LogLevel::kInfo, key,
                    absl::StrCat("fetched blob ", sha256.substr(0, 12), " of ", p.path,
                                 " into the file cache"));
          }
          return fetched;
        },
        pin);
    if (!local.ok()) {
      return fail(absl::StrCat(p.field, ": fetching ", p.path, ": ", local.status().message()),
                  local.status().code());
    }
    SetSpecPath(&spec, p.field, *local);
  }
  absl::StatusOr<int64_t> resume_step =
      transfer_->FetchCheckpoint(a, run_dir, [&](const std::string& warning) {
        LogRank(LogLevel::kWarning, key, absl::StrCat(Describe(key), ": ", warning));
        ev1::EngineEvent e;
        e.mutable_log()->set_level("warning");
        e.mutable_log()->set_message("lora-worker: " + warning);
        AddEvent(key, std::move(e));
      });
  if (stopped_before_start())
    return finish(kExitInterrupted, 0, "stopped before lora-train started");
  if (!resume_step.ok())
    return fail(std::string(resume_step.status().message()), resume_step.status().code());
  std::string spec_json;
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.preserve_proto_field_names = true;
  if (auto s = google::protobuf::util::MessageToJsonString(spec, &spec_json, json_options); !s.ok())
    return fail(absl::StrCat("cannot write the job spec: ", s.message().as_string()));
  const std::string spec_path = JoinPath(run_dir, "job.json");
  if (absl::Status s = WriteFileAtomically(spec_path, spec_json); !s.ok())
    return fail(std::string(s.message()));
  const int port = ref.rank() == 0 ? ReservePort() : a.master_port();
  int slot = 0;
  {
    absl::MutexLock lock(&mu_);
    std::vector<int> held;
    for (const auto& [k, other] : ranks_) {
      if (other.get() != r && other->device_slot >= 0 && !other->exited)
        held.push_back(other->device_slot);
    }
    // The controller never assigns more ranks than slots; fall back to 0 rather than refuse.
    slot = std::max(0, LowestFreeSlot(held, options_.slots));
    r->device_slot = slot;
    wv1::RankAccepted acc;
    *acc.mutable_ref() = ref;
    acc.set_master_port(port);
    r->accepted = acc;
    FlushLocked();
  }
  std::vector<std::string> argv = {options_.lora_train,
                                   "run",
                                   "--job",
                                   spec_path,
                                   "--out",
                                   run_dir,
                                   "--events-fd",
                                   std::to_string(kEngineEventsFd),
                                   "--quiet"};
  if (*resume_step > 0) argv.insert(argv.end(), {"--resume", run_dir});
  // Rank 0 saves the checkpoints and this agent uploads them after the engine reports each one;
  // the engine's keep_latest must not delete one before then.
  const bool uploads_checkpoints = ref.rank() == 0;
  const std::string copied_file = JoinPath(run_dir, "copied_through_step");
  if (uploads_checkpoints) {
    // A previous attempt's figure would vouch for steps this attempt has not uploaded.
    if (absl::Status s = WriteFileAtomically(copied_file, "0\n"); !s.ok())
      return fail(absl::StrCat("cannot write ", copied_file, ": ", s.message()));
    argv.insert(argv.end(), {"--copied-checkpoints-file", copied_file});
  }
  for (const std::string& root : options_.data_roots.roots())
    argv.insert(argv.end(), {"--data-root", root});
  if (options_.data_roots.restricted() && !a.files().empty())
    argv.insert(argv.end(), {"--data-root", JoinPath(run_dir, "files")});
  if (options_.threads_per_rank > 0) {
    argv.insert(argv.end(),
                {"--set", absl::StrCat("training.num_threads=", options_.threads_per_rank)});
  }
  std::map<std::string, std::string> env = {
      {"RANK", std::to_string(ref.rank())},
      {"WORLD_SIZE", std::to_string(std::max(1, a.world_size()))},
      // The GPU of this rank's slot (lora-train trains on cuda:LOCAL_RANK).
      {"LOCAL_RANK",
       std::to_string(
           options_.gpus.empty()
               ? slot
               : options_.gpus[static_cast<size_t>(slot) % options_.gpus.size()].index())},
      {"LOCAL_WORLD_SIZE", std::to_string(std::max(1, options_.slots))},
      {"MASTER_ADDR", a.master_addr().empty() ? "127.0.0.1" : a.master_addr()},
      {"MASTER_PORT", std::to_string(port)},
      // Gloo binds to the address peers were told to use for this worker.
      {"LORA_GLOO_HOSTNAME", options_.address},
      {"LORA_JOB_ID", ref.job_id()},
      {"LORA_ATTEMPT", std::to_string(ref.attempt())}};
  const std::string log_path = JoinPath(run_dir, "engine.log");
  auto child = ChildProcess::Spawn(argv, env, log_path);
  if (!child.ok()) return fail(absl::StrCat("cannot start lora-train: ", child.status().message()));
  ChildProcess* c = child->get();
  {
    absl::MutexLock lock(&mu_);
    r->child = std::move(*child);
    // Stop() or a cancel may have come while it was spawning (they signal only a child they see).
    if (r->cancel_requested || draining_) c->Signal(SIGTERM);
    if (killed_) c->Signal(SIGKILL);
  }
  while (auto line = c->ReadEventLine()) {
    if (line->empty()) continue;
    std::optional<ev1::EngineEvent> forwarded = Prepare(key, run_dir, *line);
    if (!forwarded) continue;
    if (uploads_checkpoints && forwarded->has_checkpoint()) {
      // Uploaded, or given up on: either way the engine may now prune it. A failed write only
      // keeps more checkpoints on this disk for a while.
      const std::string step = absl::StrCat(forwarded->checkpoint().step(), "\n");
      if (absl::Status s = WriteFileAtomically(copied_file, step); !s.ok())
        LogRank(LogLevel::kWarning, key,
                absl::StrCat("cannot write ", copied_file, ": ", s.message()));
    }
    AddEvent(key, *std::move(forwarded));
  }
  const ChildExit exit = c->Wait();
  LogRank(LogLevel::kInfo, key,
          absl::StrCat(Describe(key), " exited: code ", exit.exit_code,
                       exit.signal ? absl::StrCat(", signal ", exit.signal) : ""));
  finish(exit.signal ? 128 + exit.signal : exit.exit_code, exit.signal,
         exit.exit_code == 0 ? "" : LastLineOf(log_path));
}

}  // namespace lora
