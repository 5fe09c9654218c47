#include "server/grpc/worker_service.h"

#include <sys/stat.h>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/grpc/artifact_reader.h"
#include "server/grpc/auth.h"
#include "server/grpc/raw_message.h"
#include "server/grpc/reactor_lifetime.h"

namespace lora::server {
namespace {

namespace wv1 = lora::worker::v1;

std::string WorkerIdOf(const grpc::CallbackServerContext* context) {
  auto it = context->client_metadata().find("lora-worker-id");
  return it == context->client_metadata().end() ? ""
                                                : std::string(it->second.data(), it->second.size());
}

class ConnectReactor;

// The manager's handle on a worker stream; outlives the reactor safely.
class StreamChannel : public WorkerChannel {
 public:
  explicit StreamChannel(ConnectReactor* reactor) : reactor_(reactor) {}
  void Send(const wv1::ControllerMessage& message) override;
  void Close() override;
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    reactor_ = nullptr;
  }

 private:
  std::mutex mu_;
  ConnectReactor* reactor_;
};

// Registered raw (see raw_message.h): reads WorkerMessages, writes ControllerMessages.
class ConnectReactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // `claim` binds a registering worker id to the stream's credential.
  ConnectReactor(JobManager* manager, ThreadPool* pool, const ServiceHooks* hooks,
                 absl::Status auth, std::function<absl::Status(const std::string&)> claim)
      : manager_(manager),
        pool_(pool),
        hooks_(hooks),
        claim_(std::move(claim)),
        channel_(std::make_shared<StreamChannel>(this)) {
    if (!auth.ok()) {
      FinishOnce(auth);
      return;
    }
    StartRead(&in_);
  }

  void Enqueue(const wv1::ControllerMessage& message) {
    std::unique_lock<std::mutex> lock(mu_);
    if (finished_) return;
    outbox_.push_back(message);
    WriteNextLocked(lock);
  }

  void FinishOnce(const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
      hooks_->Rpc("Connect", ToGrpcStatus(status).error_code(),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
      // Finish counts as a write, and only one may be in flight: with a write outstanding
      // (the manager closing the stream while it sends an assignment, say), OnWriteDone
      // finishes. A Finish over a write in flight is invalid gRPC usage.
      if (writing_) {
        pending_finish_ = status;
        return;
      }
    }
    Finish(ToGrpcStatus(status));
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Disconnected();
      FinishOnce(absl::OkStatus());
      return;
    }
    wv1::WorkerMessage message;
    if (absl::Status parsed = ParseMessage(in_, &message); !parsed.ok()) {
      Disconnected();
      FinishOnce(parsed);
      return;
    }
    if (!life_.Enter()) return;
    // Handled on the pool, one message at a time (the next read starts after), in order.
    pool_->Schedule([this, message = std::move(message)] {
      absl::Status s = Handle(message);
      bool finished;
      {
        std::lock_guard<std::mutex> lock(mu_);
        finished = finished_;
      }
      if (!s.ok())
        FinishOnce(s);
      else if (!finished)
        StartRead(&in_);
      life_.Leave();
    });
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (pending_finish_) {
      const absl::Status status = *std::move(pending_finish_);
      pending_finish_.reset();
      lock.unlock();
      Finish(ToGrpcStatus(status));
      return;
    }
    if (ok) WriteNextLocked(lock);
  }

  void OnCancel() override {
    Disconnected();
    FinishOnce(absl::CancelledError("stream cancelled"));
  }

  void OnDone() override {
    channel_->Detach();
    life_.Done();
  }

 private:
  absl::Status Handle(const wv1::WorkerMessage& m) {
    if (m.has_register_()) {
      if (!worker_id_.empty())
        return absl::FailedPreconditionError("register sent twice on one stream");
      if (absl::Status claimed = claim_(m.register_().worker_id()); !claimed.ok()) return claimed;
      auto ack = manager_->WorkerConnected(m.register_(), channel_);
      if (!ack.ok()) return ack.status();
      {
        std::lock_guard<std::mutex> lock(mu_);
        worker_id_ = m.register_().worker_id();
      }
      wv1::ControllerMessage reply;
      *reply.mutable_ack() = *ack;
      // The ack must precede any assignment the registration triggered: push it to the front.
      std::unique_lock<std::mutex> lock(mu_);
      outbox_.push_front(reply);
      ready_ = true;
      WriteNextLocked(lock);
      return absl::OkStatus();
    }
    if (worker_id_.empty())
      return absl::FailedPreconditionError("the first message must be register");
    if (m.has_heartbeat()) manager_->OnHeartbeat(worker_id_, m.heartbeat().draining());
    if (m.has_event()) manager_->OnRankEvent(worker_id_, m.event());
    if (m.has_accepted()) manager_->OnRankAccepted(worker_id_, m.accepted());
    if (m.has_exited()) manager_->OnRankExited(worker_id_, m.exited());
    if (!m.has_heartbeat()) manager_->OnAlive(worker_id_);  // any message shows it is alive
    return absl::OkStatus();
  }

  void Disconnected() {
    std::string id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (disconnected_ || worker_id_.empty()) return;
      disconnected_ = true;
      id = worker_id_;
    }
    if (!life_.Enter()) return;
    pool_->Schedule([this, id] {
      manager_->WorkerDisconnected(id, channel_.get());
      life_.Leave();
    });
  }

  void WriteNextLocked(std::unique_lock<std::mutex>& lock) {
    // Nothing goes out before the RegisterAck (assignments may be queued while registering).
    if (!ready_ || writing_ || outbox_.empty() || finished_) return;
    current_ = ToByteBuffer(outbox_.front());
    outbox_.pop_front();
    writing_ = true;
    lock.unlock();
    StartWrite(&current_);
  }

  JobManager* manager_;
  ThreadPool* pool_;
  const ServiceHooks* hooks_;
  std::function<absl::Status(const std::string&)> claim_;
  std::shared_ptr<StreamChannel> channel_;
  grpc::ByteBuffer in_;
  grpc::ByteBuffer current_;
  std::mutex mu_;
  std::deque<wv1::ControllerMessage> outbox_;
  std::string worker_id_;
  bool ready_ = false, writing_ = false, finished_ = false, disconnected_ = false;
  std::optional<absl::Status> pending_finish_;  // FinishOnce while a write was in flight
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  ReactorLifetime<ConnectReactor> life_{this};
};

void StreamChannel::Send(const wv1::ControllerMessage& message) {
  std::lock_guard<std::mutex> lock(mu_);
  if (reactor_ != nullptr) reactor_->Enqueue(message);
}

void StreamChannel::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  if (reactor_ != nullptr)
    reactor_->FinishOnce(absl::AbortedError("the controller replaced this stream"));
}

// Registered raw: reads UploadChunks.
class UploadReactor : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  UploadReactor(JobManager* manager, ArtifactStore* artifacts, ThreadPool* pool,
                const ServiceHooks* hooks, std::string worker_id, grpc::ByteBuffer* result,
                absl::Status auth, std::function<absl::Status(const std::string&)> check_claim)
      : manager_(manager),
        artifacts_(artifacts),
        pool_(pool),
        hooks_(hooks),
        worker_id_(std::move(worker_id)),
        result_(result),
        check_claim_(std::move(check_claim)) {
    if (!auth.ok()) {
      FinishOnce(auth);
      return;
    }
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    wv1::UploadChunk chunk;
    if (ok) {
      if (absl::Status parsed = ParseMessage(in_, &chunk); !parsed.ok()) {
        FinishOnce(parsed);
        return;
      }
    }
    if (!life_.Enter()) return;
    pool_->Schedule([this, ok, chunk = std::move(chunk)] {
      absl::Status s = ok ? Consume(chunk) : Complete();
      if (!s.ok())
        FinishOnce(s);
      else if (!ok)
        FinishOnce(absl::OkStatus());
      else
        StartRead(&in_);
      life_.Leave();
    });
  }
  void OnCancel() override { FinishOnce(absl::CancelledError("upload cancelled")); }
  void OnDone() override { life_.Done(); }

 private:
  absl::Status Consume(const wv1::UploadChunk& chunk) {
    if (chunk.has_header()) {
      if (upload_) return absl::InvalidArgumentError("header: sent twice");
      header_ = chunk.header();
      if (worker_id_.empty()) return absl::UnauthenticatedError("missing lora-worker-id metadata");
      if (absl::Status claimed = check_claim_(worker_id_); !claimed.ok()) return claimed;
      absl::Status owner = manager_->CheckRankOwner(worker_id_, header_.ref());
      if (!owner.ok()) return owner;
      auto upload = artifacts_->BeginUpload(header_.ref().job_id(), header_.path(), header_.size(),
                                            header_.sha256());
      if (!upload.ok()) return upload.status();
      upload_ = std::move(*upload);
      return absl::OkStatus();
    }
    if (!upload_) return absl::InvalidArgumentError("the first message must be the header");
    if (hooks_->on_artifact_bytes_received)
      hooks_->on_artifact_bytes_received(static_cast<int64_t>(chunk.data().size()));
    return upload_->Write(chunk.data().data(), chunk.data().size());
  }

  absl::Status Complete() {
    if (!upload_) return absl::InvalidArgumentError("no header was sent");
    absl::Status s = upload_->Finish();
    if (!s.ok()) return s;
    lora::v1::ArtifactFile file;
    file.set_path(header_.path());
    file.set_size(header_.size());
    file.set_sha256(header_.sha256());
    s = manager_->OnArtifactStored(header_, file);
    if (!s.ok()) return s;
    wv1::UploadResult result;
    result.set_size(file.size());
    result.set_sha256(file.sha256());
    *result_ = ToByteBuffer(result);
    return absl::OkStatus();
  }

  void FinishOnce(const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    hooks_->Rpc("UploadArtifact", ToGrpcStatus(status).error_code(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    Finish(ToGrpcStatus(status));
  }

  JobManager* manager_;
  ArtifactStore* artifacts_;
  ThreadPool* pool_;
  const ServiceHooks* hooks_;
  std::string worker_id_;
  grpc::ByteBuffer* result_;  // a serialized UploadResult
  std::function<absl::Status(const std::string&)> check_claim_;
  grpc::ByteBuffer in_;
  wv1::UploadHeader header_;
  std::unique_ptr<ArtifactUpload> upload_;
  std::mutex mu_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  ReactorLifetime<UploadReactor> life_{this};
};

}  // namespace

namespace {

// What a worker id is bound to: the credential's name, not the token, so rotating a worker
// token (old and new lines under one name in the tokens file) keeps its workers' ids.
std::string BindingKey(const Principal& p) {
  if (absl::StartsWith(p.id, "cert:") || p.id == "local") return p.id;
  return absl::StrCat("name:", p.tenant);
}

}  // namespace

absl::Status WorkerServiceImpl::Claim(const std::string& worker_id, const Principal& caller) {
  if (worker_id.empty()) return absl::InvalidArgumentError("register.worker_id: empty");
  std::lock_guard<std::mutex> lock(owners_mu_);
  auto [it, fresh] = owners_.emplace(worker_id, BindingKey(caller));
  if (!fresh && it->second != BindingKey(caller)) {
    return absl::PermissionDeniedError(absl::StrCat("register.worker_id: worker '", worker_id,
                                                    "' is bound to another credential"));
  }
  return absl::OkStatus();
}

absl::Status WorkerServiceImpl::CheckClaim(const std::string& worker_id, const Principal& caller) {
  std::lock_guard<std::mutex> lock(owners_mu_);
  auto it = owners_.find(worker_id);
  if (it == owners_.end()) {
    // Not registered with this lorad (yet): after a restart, a worker's uploads can arrive
    // before its stream is back. Transient, so the worker retries instead of giving up on a
    // checkpoint or an output; its stream re-registers it.
    return absl::UnavailableError(absl::StrCat("lora-worker-id: worker '", worker_id,
                                               "' has not registered with this lorad yet"));
  }
  if (it->second != BindingKey(caller)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "lora-worker-id: this credential has not registered worker '", worker_id, "'"));
  }
  return absl::OkStatus();
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* WorkerServiceImpl::Connect(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<Principal> caller = credentials_->Authenticate(*context, Plane::kWorker);
  return new ConnectReactor(manager_, pool_, hooks_, caller.status(),
                            [this, p = caller.ok() ? *caller : Principal{}](const std::string& id) {
                              return Claim(id, p);
                            });
}

grpc::ServerReadReactor<grpc::ByteBuffer>* WorkerServiceImpl::UploadArtifact(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* result) {
  absl::StatusOr<Principal> caller = credentials_->Authenticate(*context, Plane::kWorker);
  return new UploadReactor(manager_, artifacts_, pool_, hooks_, WorkerIdOf(context), result,
                           caller.status(),
                           [this, p = caller.ok() ? *caller : Principal{}](const std::string& id) {
                             return CheckClaim(id, p);
                           });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* WorkerServiceImpl::FetchArtifact(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  wv1::FetchArtifactRequest request;
  absl::StatusOr<Principal> caller = credentials_->Authenticate(*context, Plane::kWorker);
  absl::Status ready = caller.status();
  if (ready.ok()) ready = ParseMessage(*raw, &request);
  std::string worker = WorkerIdOf(context), job = request.job_id(), path = request.path();
  ArtifactResolver resolve = [this, worker, job, path, p = caller.ok() ? *caller : Principal{}]()
      -> absl::StatusOr<std::pair<lora::v1::ArtifactFile, std::string>> {
    if (absl::Status claimed = CheckClaim(worker, p); !claimed.ok()) return claimed;
    absl::Status owner = manager_->CheckWorkerOnJob(worker, job);
    if (!owner.ok()) return owner;
    auto file = manager_->GetArtifact("jobs/" + job, path);
    if (!file.ok()) return file.status();
    auto where = artifacts_->PathOf(job, path);
    if (!where.ok()) return where.status();
    return std::make_pair(*file, *where);
  };
  return StreamArtifactRaw(pool_, std::move(resolve), request.offset(), hooks_, "FetchArtifact",
                           ready);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* WorkerServiceImpl::FetchBlob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  wv1::FetchBlobRequest request;
  absl::StatusOr<Principal> caller = credentials_->Authenticate(*context, Plane::kWorker);
  absl::Status ready = caller.status();
  if (ready.ok()) ready = ParseMessage(*raw, &request);
  std::string worker = WorkerIdOf(context);
  ArtifactResolver resolve = [this, worker, request, p = caller.ok() ? *caller : Principal{}]()
      -> absl::StatusOr<std::pair<lora::v1::ArtifactFile, std::string>> {
    if (absl::Status claimed = CheckClaim(worker, p); !claimed.ok()) return claimed;
    if (files_ == nullptr) return absl::NotFoundError("this lorad stores no uploaded files");
    LORA_RETURN_IF_ERROR(ValidateSha256(request.sha256(), "sha256"));
    LORA_RETURN_IF_ERROR(manager_->CheckBlobForRank(worker, request.ref(), request.sha256()));
    LORA_ASSIGN_OR_RETURN(std::string where, files_->BlobPath(request.sha256()));
    struct stat st;
    if (::stat(where.c_str(), &st) != 0) return absl::NotFoundError("blob not stored");
    lora::v1::ArtifactFile file;
    file.set_path(request.sha256());
    file.set_size(st.st_size);
    file.set_sha256(request.sha256());
    return std::make_pair(file, where);
  };
  return StreamArtifactRaw(pool_, std::move(resolve), request.offset(), hooks_, "FetchBlob", ready);
}

}  // namespace lora::server
