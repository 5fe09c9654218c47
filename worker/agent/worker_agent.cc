#include "worker/agent/worker_agent.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

namespace lora {
namespace {

namespace wv1 = lora::worker::v1;
namespace fs = std::filesystem;

void Log(const std::string& message) { std::cerr << "lora-worker: " << message << std::endl; }

wv1::RankRef RefOf(const std::tuple<std::string, int, int>& key) {
  wv1::RankRef ref;
  ref.set_job_id(std::get<0>(key));
  ref.set_attempt(std::get<1>(key));
  ref.set_rank(std::get<2>(key));
  return ref;
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

bool Transient(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         s.error_code() == grpc::StatusCode::CANCELLED ||
         s.error_code() == grpc::StatusCode::ABORTED ||
         s.error_code() == grpc::StatusCode::INTERNAL;
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
  return tls;
}

WorkerAgent::WorkerAgent(WorkerAgentOptions options) : options_(std::move(options)) {
  channel_ = MakeChannel();
  stub_ = wv1::WorkerService::NewStub(channel_);
}

WorkerAgent::~WorkerAgent() { Stop(); }

std::shared_ptr<grpc::Channel> WorkerAgent::MakeChannel() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  if (options_.tls.ca_pem.empty()) {
    return grpc::CreateCustomChannel(options_.controller, grpc::InsecureChannelCredentials(), args);
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = options_.tls.ca_pem;
  ssl.pem_cert_chain = options_.tls.cert_pem;
  ssl.pem_private_key = options_.tls.key_pem;
  return grpc::CreateCustomChannel(options_.controller, grpc::SslCredentials(ssl), args);
}

void WorkerAgent::AddMetadata(grpc::ClientContext* ctx) const {
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  ctx->AddMetadata("lora-worker-id", options_.worker_id);
}

void WorkerAgent::Run() {
  std::thread heartbeat([this] { Heartbeats(); });
  auto backoff = std::chrono::milliseconds(250);
  while (!stopping_) {
    const auto started = std::chrono::steady_clock::now();
    Session();
    if (stopping_) break;
    if (std::chrono::steady_clock::now() - started > std::chrono::seconds(10))
      backoff = std::chrono::milliseconds(250);
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, backoff, [this] { return stopping_.load(); });
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
  }
  heartbeat.join();
  // Ranks were asked to stop (SIGTERM: checkpoint and exit); give them time, then insist.
  std::vector<std::thread> runners;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, r] : ranks_) {
      if (r->runner.joinable()) runners.push_back(std::move(r->runner));
    }
  }
  std::thread killer([this] {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(30), [this] {
          for (auto& [key, r] : ranks_) {
            if (!r->exited) return false;
          }
          return true;
        })) {
      for (auto& [key, r] : ranks_) {
        if (r->child) r->child->Signal(SIGKILL);
      }
    }
  });
  for (auto& t : runners) t.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, r] : ranks_) r->exited.emplace();
  }
  cv_.notify_all();
  killer.join();
}

void WorkerAgent::Stop() {
  if (stopping_.exchange(true)) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [key, r] : ranks_) {
    if (r->child && !r->exited) r->child->Signal(SIGTERM);
  }
  if (context_) context_->TryCancel();
  cv_.notify_all();
}

bool WorkerAgent::WriteLocked(const wv1::WorkerMessage& m) {
  if (!stream_ || !stream_->Write(m)) {
    connected_ = false;
    return false;
  }
  return true;
}

void WorkerAgent::FlushLocked() {
  if (!connected_) return;
  for (auto& [key, r] : ranks_) {
    if (r->exit_sent) continue;
    if (r->accepted && !r->accepted_sent) {
      wv1::WorkerMessage m;
      *m.mutable_accepted() = *r->accepted;
      if (!WriteLocked(m)) return;
      r->accepted_sent = true;
    }
    while (r->sent_seq < static_cast<int64_t>(r->events.size())) {
      wv1::WorkerMessage m;
      *m.mutable_event() = r->events[static_cast<size_t>(r->sent_seq)];
      if (!WriteLocked(m)) return;
      ++r->sent_seq;
    }
    if (r->exited && r->exited->has_ref()) {
      wv1::WorkerMessage m;
      *m.mutable_exited() = *r->exited;
      if (!WriteLocked(m)) return;
      r->exit_sent = true;
      r->done_at = std::chrono::steady_clock::now();
    }
  }
}

int LowestFreeSlot(const std::vector<int>& held, int slots) {
  for (int i = 0; i < slots; ++i) {
    if (std::find(held.begin(), held.end(), i) == held.end()) return i;
  }
  return -1;
}

void WorkerAgent::Session() {
  auto context = std::make_unique<grpc::ClientContext>();
  AddMetadata(context.get());
  auto stream = stub_->Connect(context.get());
  wv1::WorkerMessage reg;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wv1::Register* r = reg.mutable_register_();
    r->set_worker_id(options_.worker_id);
    r->set_address(options_.address);
    r->set_version("lora-worker 0.1.0");
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
      rank->accepted_sent = false;  // re-send: the controller may not have processed it
    }
    context_ = std::move(context);
    stream_ = std::move(stream);
    connected_ = false;
    if (!stream_->Write(reg)) {
      // Said every attempt: a TLS or credential problem never heals by itself, and the
      // operator needs gRPC's reason (e.g. a handshake failure) to see which it is.
      const grpc::Status status = stream_->Finish();
      if (!stopping_) {
        Log(absl::StrCat("cannot reach ", options_.controller, ": ", status.error_message(),
                         " (code ", static_cast<int>(status.error_code()), "); retrying"));
      }
      stream_.reset();
      context_.reset();
      return;
    }
  }
  wv1::ControllerMessage message;
  auto* s = stream_.get();
  while (s->Read(&message)) Dispatch(message);
  grpc::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connected_ = false;
  }
  status = s->Finish();
  if (!stopping_)
    Log(absl::StrCat("disconnected from ", options_.controller, ": ", status.error_message(),
                     " (code ", static_cast<int>(status.error_code()), "); reconnecting"));
  std::lock_guard<std::mutex> lock(mu_);
  stream_.reset();
  context_.reset();
}

void WorkerAgent::Dispatch(const wv1::ControllerMessage& message) {
  if (message.has_ack()) {
    std::lock_guard<std::mutex> lock(mu_);
    heartbeat_ms_ =
        message.ack().heartbeat_interval_ms() > 0 ? message.ack().heartbeat_interval_ms() : 2000;
    for (const auto& rr : message.ack().resume_from()) {
      auto it = ranks_.find({rr.ref().job_id(), rr.ref().attempt(), rr.ref().rank()});
      if (it != ranks_.end())
        it->second->sent_seq = std::min<int64_t>(rr.last_event_seq(), it->second->events.size());
    }
    for (const auto& ref : message.ack().stop()) {
      auto it = ranks_.find({ref.job_id(), ref.attempt(), ref.rank()});
      if (it == ranks_.end()) continue;
      it->second->exit_sent = true;  // nobody wants its results any more
      it->second->done_at = std::chrono::steady_clock::now();
      if (it->second->child && !it->second->exited) it->second->child->Signal(SIGKILL);
    }
    connected_ = true;
    Log(absl::StrCat("registered with ", options_.controller, " as ", options_.worker_id));
    FlushLocked();
  } else if (message.has_assignment()) {
    StartRank(message.assignment());
  } else if (message.has_cancel()) {
    const auto& ref = message.cancel().ref();
    CancelRank({ref.job_id(), ref.attempt(), ref.rank()}, message.cancel().grace_ms());
  }
}

void WorkerAgent::StartRank(const wv1::Assignment& assignment) {
  const auto& ref = assignment.ref();
  Key key{ref.job_id(), ref.attempt(), ref.rank()};
  std::lock_guard<std::mutex> lock(mu_);
  if (ranks_.count(key)) return;  // duplicate (re-sent after a reconnect)
  auto rank = std::make_unique<Rank>();
  rank->assignment = assignment;
  Rank* r = rank.get();
  ranks_[key] = std::move(rank);
  r->runner = std::thread([this, key] { RunRank(key); });
  Log(absl::StrCat("assigned jobs/", ref.job_id(), " attempt ", ref.attempt(), " rank ", ref.rank(),
                   "/", assignment.world_size()));
}

void WorkerAgent::CancelRank(const Key& key, int grace_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ranks_.find(key);
  if (it == ranks_.end()) return;
  Rank* r = it->second.get();
  r->cancel_requested = true;
  if (r->child && !r->exited) r->child->Signal(SIGTERM);
  std::thread([this, key, grace_ms] {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(std::max(grace_ms, 0)), [&] {
      auto it = ranks_.find(key);
      return it == ranks_.end() || it->second->exited.has_value();
    });
    auto it = ranks_.find(key);
    if (it != ranks_.end() && !it->second->exited && it->second->child)
      it->second->child->Signal(SIGKILL);
  }).detach();
}

absl::StatusOr<std::pair<int64_t, std::string>> WorkerAgent::Upload(const Key& key,
                                                                    const std::string& local,
                                                                    const std::string& job_path,
                                                                    int64_t step) {
  auto digest = Sha256File(local);
  if (!digest.ok()) return digest.status();
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(fs::file_size(local, ec));
  if (ec) return absl::NotFoundError(absl::StrCat(local, ": ", ec.message()));
  for (int attempt = 0; !stopping_; ++attempt) {
    grpc::ClientContext ctx;
    AddMetadata(&ctx);
    wv1::UploadResult result;
    auto writer = stub_->UploadArtifact(&ctx, &result);
    wv1::UploadChunk header;
    wv1::UploadHeader* h = header.mutable_header();
    *h->mutable_ref() = RefOf(key);
    h->set_path(job_path);
    h->set_size(size);
    h->set_sha256(*digest);
    h->set_step(step);
    bool ok = writer->Write(header);
    std::FILE* f = std::fopen(local.c_str(), "rb");
    std::string buf(1 << 20, '\0');
    while (ok && f != nullptr) {
      size_t n = std::fread(buf.data(), 1, buf.size(), f);
      if (n == 0) break;
      wv1::UploadChunk data;
      data.set_data(buf.data(), n);
      ok = writer->Write(data);
    }
    if (f != nullptr) std::fclose(f);
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (s.ok()) return std::make_pair(size, *digest);
    if (!Transient(s) || attempt >= 120) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(250 * (attempt + 1), 2000)));
  }
  return absl::CancelledError("worker stopping");
}

absl::Status WorkerAgent::Fetch(const std::string& job_id, const std::string& job_path,
                                const std::string& local, const std::string& sha256) {
  if (absl::Status s = MakeDirectories(ParentDirectory(local)); !s.ok()) return s;
  auto out = AtomicFile::Create(local);
  if (!out.ok()) return out.status();
  Sha256 hash;
  int64_t offset = 0;
  for (int attempt = 0; !stopping_ && attempt < 60; ++attempt) {
    grpc::ClientContext ctx;
    AddMetadata(&ctx);
    wv1::FetchArtifactRequest request;
    request.set_job_id(job_id);
    request.set_path(job_path);
    request.set_offset(offset);
    auto reader = stub_->FetchArtifact(&ctx, request);
    lora::v1::ArtifactChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != offset) continue;
      hash.Update(chunk.data());
      if (absl::Status s = (*out)->Write(chunk.data()); !s.ok()) return s;
      offset += static_cast<int64_t>(chunk.data().size());
    }
    grpc::Status s = reader->Finish();
    if (s.ok()) {
      if (hash.HexDigest() != sha256)
        return absl::DataLossError(absl::StrCat(job_path, ": sha256 mismatch after fetch"));
      return (*out)->Commit();
    }
    if (!Transient(s))
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return absl::UnavailableError(absl::StrCat(job_path, ": could not fetch"));
}

std::string WorkerAgent::Prepare(const Key& key, const std::string& run_dir,
                                 const std::string& line) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object() || std::get<2>(key) != 0) return line;
  const std::string type = j.value("event", "");
  auto relative = [&](const std::string& path) {
    return fs::relative(path, run_dir).lexically_normal().string();
  };
  nlohmann::json uploaded = nlohmann::json::array();
  auto upload = [&](const std::string& local, int64_t step) -> bool {
    const std::string job_path = relative(local);
    auto done = Upload(key, local, job_path, step);
    if (!done.ok()) {
      Log(absl::StrCat("upload of ", job_path, " failed: ", done.status().message()));
      return false;
    }
    uploaded.push_back({{"path", job_path}, {"size", done->first}, {"sha256", done->second}});
    return true;
  };
  if (type == "checkpoint") {
    const std::string dir = j.value("path", "");
    const int64_t step = j.value("step", int64_t{0});
    bool ok = true;
    const nlohmann::json files = j.value("files", nlohmann::json::array());
    for (const auto& f : files) {
      if (!(ok = upload(JoinPath(dir, f.value("path", "")), step))) break;
    }
    // The manifest last: a resumed rank only trusts a checkpoint directory that has one.
    if (ok) upload(JoinPath(dir, "manifest.json"), step);
    j["uploaded"] = uploaded;
    j["job_path"] = relative(dir);
    return j.dump();
  }
  if (type == "finished") {
    std::error_code ec;
    const nlohmann::json outputs = j.value("outputs", nlohmann::json::object());
    for (const auto& [name, dir] : outputs.items()) {
      if (!dir.is_string()) continue;
      for (const auto& entry : fs::recursive_directory_iterator(dir.get<std::string>(), ec)) {
        if (entry.is_regular_file()) upload(entry.path().string(), 0);
      }
    }
    const std::string summary = JoinPath(run_dir, "summary.json");
    if (fs::exists(summary, ec)) upload(summary, 0);
    j["uploaded"] = uploaded;
    return j.dump();
  }
  return line;
}

void WorkerAgent::RunRank(Key key) {
  Rank* r;
  wv1::Assignment a;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r = ranks_[key].get();
    a = r->assignment;
  }
  const auto& ref = a.ref();
  const std::string run_dir = JoinPath(
      options_.work_dir,
      absl::StrCat("jobs/", ref.job_id(), "/attempt-", ref.attempt(), "/rank-", ref.rank()));
  auto finish = [&](int code, int signal, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu_);
    wv1::RankExited e;
    *e.mutable_ref() = ref;
    e.set_exit_code(code);
    e.set_signal(signal);
    e.set_reason(reason);
    r->exited = e;
    FlushLocked();
    cv_.notify_all();
  };
  auto fail = [&](const std::string& reason,
                  absl::StatusCode code = absl::StatusCode::kFailedPrecondition) {
    Log(reason);
    // Report as an engine failure event plus a non-zero exit so the job fails with the reason.
    {
      std::lock_guard<std::mutex> lock(mu_);
      wv1::RankEvent ev;
      *ev.mutable_ref() = ref;
      ev.set_worker_seq(static_cast<int64_t>(r->events.size()) + 1);
      const nlohmann::json failed = {
          {"event", "failed"}, {"reason", reason}, {"code", absl::StatusCodeToString(code)}};
      ev.set_json(failed.dump());
      r->events.push_back(ev);
    }
    finish(1, 0, reason);
  };
  // Before anything runs: the spec's paths come from a client, the reads would be ours.
  if (absl::Status s = options_.data_roots.CheckSpec(a.spec()); !s.ok())
    return fail(std::string(s.message()), s.code());
  if (absl::Status s = MakeDirectories(run_dir); !s.ok()) return fail(std::string(s.message()));
  for (const auto& f : a.resume().files()) {
    absl::Status s = Fetch(ref.job_id(), f.path(), JoinPath(run_dir, f.path()), f.sha256());
    if (!s.ok())
      return fail(absl::StrCat("fetching checkpoint file ", f.path(), ": ", s.message()));
  }
  std::string spec_json;
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(a.spec(), &spec_json, json_options);
  const std::string spec_path = JoinPath(run_dir, "job.json");
  if (absl::Status s = WriteFileAtomically(spec_path, spec_json); !s.ok())
    return fail(std::string(s.message()));
  const int port = ref.rank() == 0 ? ReservePort() : a.master_port();
  int slot = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
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
                                   std::to_string(ChildProcess::kEventsFd),
                                   "--quiet"};
  if (a.resume().step() > 0) argv.insert(argv.end(), {"--resume", run_dir});
  for (const std::string& root : options_.data_roots.roots())
    argv.insert(argv.end(), {"--data-root", root});
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
    std::lock_guard<std::mutex> lock(mu_);
    r->child = std::move(*child);
    if (r->cancel_requested || stopping_) c->Signal(SIGTERM);
  }
  while (auto line = c->ReadEventLine()) {
    if (line->empty()) continue;
    std::string forwarded = Prepare(key, run_dir, *line);
    std::lock_guard<std::mutex> lock(mu_);
    wv1::RankEvent ev;
    *ev.mutable_ref() = ref;
    ev.set_worker_seq(static_cast<int64_t>(r->events.size()) + 1);
    ev.set_json(std::move(forwarded));
    r->events.push_back(std::move(ev));
    FlushLocked();
  }
  ChildExit exit = c->Wait();
  finish(exit.signal ? 0 : exit.exit_code, exit.signal,
         exit.exit_code == 0 ? "" : LastLineOf(log_path));
  Log(absl::StrCat("jobs/", ref.job_id(), " rank ", ref.rank(), " exited: code ", exit.exit_code,
                   exit.signal ? absl::StrCat(", signal ", exit.signal) : ""));
}

void WorkerAgent::Heartbeats() {
  while (!stopping_) {
    std::vector<std::unique_ptr<Rank>> finished;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(heartbeat_ms_),
                   [this] { return stopping_.load(); });
      if (stopping_) break;
      if (connected_) {
        wv1::WorkerMessage m;
        for (const auto& [key, r] : ranks_) {
          if (!r->exited) *m.mutable_heartbeat()->add_running() = RefOf(key);
        }
        m.mutable_heartbeat();
        WriteLocked(m);
        FlushLocked();
      }
      const auto now = std::chrono::steady_clock::now();
      for (auto it = ranks_.begin(); it != ranks_.end();) {
        if (it->second->exit_sent && now - it->second->done_at > std::chrono::seconds(60)) {
          finished.push_back(std::move(it->second));
          it = ranks_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& r : finished) {
      if (r->runner.joinable()) r->runner.join();
    }
  }
}

}  // namespace lora
