#include "client/lora_client.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/address_list.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/not_leader.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace lora {
namespace {

// "2s", "0.5s" (to a tenth).
std::string Seconds(std::chrono::duration<double> d) {
  const double tenths = std::round(d.count() * 10);
  return std::fmod(tenths, 10) == 0 ? absl::StrFormat("%.0fs", tenths / 10)
                                    : absl::StrFormat("%.1fs", tenths / 10);
}

// Whether a watch stream that ended with `s` (not at our request) is worth reopening: lorad
// went away or restarted (UNAVAILABLE; CANCELLED when its shutdown cancelled the call), the
// connection broke (INTERNAL from a reset stream, UNKNOWN "Stream removed"), or a connect
// timed out.
bool Resumable(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::INTERNAL:
      return true;
    case grpc::StatusCode::UNKNOWN:
      return s.error_message() == "Stream removed";
    default:
      return false;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<LoraClient>> LoraClient::Create(const ClientOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (!options.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    LORA_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFileToString(options.tls_ca));
    if (!options.tls_cert.empty()) {
      LORA_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFileToString(options.tls_cert));
      LORA_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFileToString(options.tls_key));
    }
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // A peer that vanished without closing the connection ends a watch stream (UNAVAILABLE, which
  // Watch resumes from) instead of leaving it waiting forever. lorad accepts pings every 5 s.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  std::vector<Endpoint> endpoints;
  for (std::string& address : SplitAddressList(options.address)) {
    if (address.empty()) continue;
    Endpoint e;
    e.address = std::move(address);
    e.channel = grpc::CreateCustomChannel(e.address, credentials, args);
    e.stub = lora::v1::JobService::NewStub(e.channel);
    endpoints.push_back(std::move(e));
  }
  if (endpoints.empty()) return absl::InvalidArgumentError("address: empty");
  return std::unique_ptr<LoraClient>(new LoraClient(options, std::move(endpoints)));
}

bool LoraClient::Rotate() const {
  if (endpoints_.size() < 2) return false;
  current_ = (current_.load() + 1) % endpoints_.size();
  return true;
}

absl::Status LoraClient::Wrap(const grpc::Status& status) const {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return absl::UnavailableError(absl::StrCat("lorad at ", endpoint().address, " is unreachable (",
                                               status.error_message(), ")"));
  }
  return FromGrpcStatus(status);
}

LoraClient::LoraClient(const ClientOptions& options, std::vector<Endpoint> endpoints)
    : options_(options), endpoints_(std::move(endpoints)) {}

void LoraClient::Prepare(grpc::ClientContext* ctx, bool deadline) const {
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  if (deadline) ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
}

absl::Status LoraClient::AwaitConnection(const std::atomic<bool>* stop) const {
  const std::chrono::milliseconds timeout = std::min(options_.connect_timeout, options_.timeout);
  const auto deadline = std::chrono::system_clock::now() + timeout;
  grpc_connectivity_state state = endpoint().channel->GetState(/*try_to_connect=*/true);
  while (true) {
    if (state == GRPC_CHANNEL_READY) return absl::OkStatus();
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN)
      return absl::FailedPreconditionError("not connected");
    if (stop != nullptr && stop->load()) return absl::CancelledError("stopped");
    const auto now = std::chrono::system_clock::now();
    if (now >= deadline) {
      return absl::UnavailableError(absl::StrCat("lorad at ", endpoint().address,
                                                 " did not answer within ", Seconds(timeout)));
    }
    // In slices, so that `stop` is noticed.
    if (endpoint().channel->WaitForStateChange(
            state, std::min(deadline, now + std::chrono::milliseconds(100))))
      state = endpoint().channel->GetState(/*try_to_connect=*/true);
  }
}

absl::Status LoraClient::Unary(bool idempotent,
                               const std::function<grpc::Status(grpc::ClientContext*)>& call) {
  size_t moved = 0;  // addresses moved on from in this call
  for (int attempt = 0;; ++attempt) {
    // Not wait_for_ready: a refused connection fails the call at once (with gRPC's reason), as
    // it should for a person waiting on `loractl submit`; a silent peer fails at the connect
    // timeout.
    absl::Status connected = AwaitConnection();
    // Nothing was sent: another replica may answer.
    if (!connected.ok() && moved + 1 < endpoints_.size() && Rotate()) {
      ++moved;
      --attempt;
      continue;
    }
    if (absl::IsUnavailable(connected)) return connected;
    grpc::ClientContext ctx;
    Prepare(&ctx);
    grpc::Status s = call(&ctx);
    if (s.ok()) return absl::OkStatus();
    // A follower's NOT_LEADER refusal did nothing, so even a call that is not idempotent may
    // go to another replica.
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        (idempotent || NotLeader(FromGrpcStatus(s)).has_value()) && moved + 1 < endpoints_.size() &&
        Rotate()) {
      ++moved;
      --attempt;
      continue;
    }
    if (idempotent && connected.ok() && s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        attempt < 3) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200) * (1 << attempt));
      continue;
    }
    return Wrap(s);
  }
}

absl::StatusOr<lora::v1::Job> LoraClient::CreateJob(const lora::v1::JobSpec& spec,
                                                    const std::string& request_id) {
  lora::v1::CreateJobRequest req;
  *req.mutable_spec() = spec;
  req.set_request_id(request_id);
  lora::v1::Job job;
  // Safe to retry with a request id: it makes creation idempotent.
  LORA_RETURN_IF_ERROR(Unary(!request_id.empty(), [&](grpc::ClientContext* ctx) {
    return endpoint().stub->CreateJob(ctx, req, &job);
  }));
  return job;
}

absl::StatusOr<lora::v1::Job> LoraClient::GetJob(const std::string& name) {
  lora::v1::GetJobRequest req;
  req.set_name(name);
  lora::v1::Job job;
  LORA_RETURN_IF_ERROR(Unary(
      true, [&](grpc::ClientContext* ctx) { return endpoint().stub->GetJob(ctx, req, &job); }));
  return job;
}

absl::StatusOr<lora::v1::ListJobsResponse> LoraClient::ListJobs(
    const lora::v1::ListJobsRequest& request) {
  lora::v1::ListJobsResponse resp;
  LORA_RETURN_IF_ERROR(Unary(true, [&](grpc::ClientContext* ctx) {
    return endpoint().stub->ListJobs(ctx, request, &resp);
  }));
  return resp;
}

absl::StatusOr<lora::v1::Job> LoraClient::CancelJob(const std::string& name) {
  lora::v1::CancelJobRequest req;
  req.set_name(name);
  lora::v1::Job job;
  LORA_RETURN_IF_ERROR(Unary(
      true, [&](grpc::ClientContext* ctx) { return endpoint().stub->CancelJob(ctx, req, &job); }));
  return job;
}

absl::StatusOr<lora::v1::Job> LoraClient::PauseJob(const std::string& name) {
  lora::v1::PauseJobRequest req;
  req.set_name(name);
  lora::v1::Job job;
  LORA_RETURN_IF_ERROR(Unary(
      true, [&](grpc::ClientContext* ctx) { return endpoint().stub->PauseJob(ctx, req, &job); }));
  return job;
}

absl::StatusOr<lora::v1::Job> LoraClient::ResumeJob(const std::string& name) {
  lora::v1::ResumeJobRequest req;
  req.set_name(name);
  lora::v1::Job job;
  // Not retried: a resume that took effect before the connection broke would fail the retry
  // (the job is no longer PAUSED), hiding that it worked.
  LORA_RETURN_IF_ERROR(Unary(
      false, [&](grpc::ClientContext* ctx) { return endpoint().stub->ResumeJob(ctx, req, &job); }));
  return job;
}

absl::Status LoraClient::DeleteJob(const std::string& name) {
  lora::v1::DeleteJobRequest req;
  req.set_name(name);
  lora::v1::DeleteJobResponse resp;
  return Unary(
      false, [&](grpc::ClientContext* ctx) { return endpoint().stub->DeleteJob(ctx, req, &resp); });
}

absl::StatusOr<std::vector<lora::v1::Checkpoint>> LoraClient::ListCheckpoints(
    const std::string& name) {
  lora::v1::ListCheckpointsRequest req;
  req.set_name(name);
  lora::v1::ListCheckpointsResponse resp;
  LORA_RETURN_IF_ERROR(Unary(true, [&](grpc::ClientContext* ctx) {
    return endpoint().stub->ListCheckpoints(ctx, req, &resp);
  }));
  return std::vector<lora::v1::Checkpoint>(resp.checkpoints().begin(), resp.checkpoints().end());
}

absl::Status LoraClient::Watch(const std::string& name, int64_t after_sequence,
                               const std::function<bool(const lora::v1::JobEvent&)>& on_event,
                               const std::atomic<bool>* stop, const ReconnectPolicy& policy) {
  auto stopped = [&] { return stop != nullptr && stop->load(); };
  int64_t last = after_sequence;
  int attempt = 0;  // reconnect attempts in this outage
  std::optional<std::chrono::steady_clock::time_point> down_since;
  std::mt19937_64 rng(std::random_device{}());
  while (true) {
    if (stopped()) return absl::CancelledError("stopped watching");
    bool healthy = false;  // the stream delivered an event or stayed open for a while
    absl::Status cause;
    absl::Status connected = AwaitConnection(stop);
    if (absl::IsCancelled(connected)) return absl::CancelledError("stopped watching");
    if (absl::IsUnavailable(connected)) {
      cause = connected;
    } else {
      grpc::ClientContext ctx;
      Prepare(&ctx, /*deadline=*/false);  // streams last as long as the job
      lora::v1::WatchJobRequest req;
      req.set_name(name);
      req.set_after_sequence(last);
      std::atomic<bool> done{false};
      // A stop request cancels the blocking read.
      std::thread canceller([&] {
        while (stop != nullptr && !done.load()) {
          if (stop->load()) {
            ctx.TryCancel();
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      });
      const auto opened = std::chrono::steady_clock::now();
      auto reader = endpoint().stub->WatchJob(&ctx, req);
      lora::v1::JobEvent event;
      bool keep_going = true;
      bool announce = attempt > 0;  // a reconnect: say so with its first event
      while (keep_going && reader->Read(&event)) {
        if (event.sequence() <= last) continue;  // already delivered
        if (announce && policy.on_reconnected) policy.on_reconnected(last);
        announce = false;
        last = event.sequence();
        healthy = true;
        keep_going = on_event(event);
      }
      if (!keep_going) ctx.TryCancel();
      grpc::Status s = reader->Finish();
      done = true;
      canceller.join();
      if (!keep_going || stopped()) return absl::CancelledError("stopped watching");
      if (s.ok()) {
        if (announce && policy.on_reconnected) policy.on_reconnected(last);
        return absl::OkStatus();
      }
      if (!Resumable(s)) return Wrap(s);
      cause = FromGrpcStatus(s);
      healthy = healthy || (connected.ok() &&
                            std::chrono::steady_clock::now() - opened >= std::chrono::seconds(5));
    }
    // The stream is down. An outage starts at the first failure after a healthy stream.
    const auto now = std::chrono::steady_clock::now();
    if (healthy) {
      attempt = 0;
      down_since.reset();
    }
    if (!down_since) down_since = now;
    ++attempt;
    const auto down = now - *down_since;
    const std::string why =
        absl::StrCat(absl::StatusCodeToString(cause.code()), ": ", cause.message());
    if (policy.give_up_after.count() <= 0) {
      return absl::UnavailableError(absl::StrCat("the event stream from lorad at ",
                                                 endpoint().address, " ended (", why, ")"));
    }
    if (down >= policy.give_up_after ||
        (policy.max_attempts > 0 && attempt > policy.max_attempts)) {
      return absl::UnavailableError(
          absl::StrCat("lorad at ", endpoint().address, " could not be reached again within ",
                       Seconds(down), " (", attempt - 1, " reconnect attempts) to resume the ",
                       "stream after event ", last, " (", why, ")"));
    }
    // Exponential, capped, jittered; never past the give-up time.
    const double base =
        std::min<double>(static_cast<double>(policy.max_backoff.count()),
                         static_cast<double>(policy.initial_backoff.count()) *
                             std::pow(policy.multiplier, std::min(attempt - 1, 30)));
    const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
    std::uniform_real_distribution<double> scale(1 - jitter, 1 + jitter);
    auto delay = std::chrono::milliseconds(static_cast<int64_t>(
        std::min<double>(base * scale(rng), static_cast<double>(policy.max_backoff.count()))));
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(policy.give_up_after - down);
    delay = std::clamp(delay, std::chrono::milliseconds(0), left);
    if (policy.on_retry) policy.on_retry(cause, attempt, delay, last);
    // Replicas: a follower serves watches too, so move on only from one that cannot be reached;
    // at once during the first round of an outage, after the backoff once every one has failed
    // (all of them down must not spin).
    if (endpoint().channel->GetState(false) != GRPC_CHANNEL_READY && Rotate() &&
        static_cast<size_t>(attempt) < endpoints_.size()) {
      delay = std::chrono::milliseconds(0);
    }
    // Wait out the delay, but when the connection itself was down, stop waiting as soon as the
    // channel (which keeps reconnecting on its own) is up again: lorad is back.
    const bool connection_was_down = endpoint().channel->GetState(false) != GRPC_CHANNEL_READY;
    const auto wake = std::chrono::system_clock::now() + delay;
    while (std::chrono::system_clock::now() < wake && !stopped()) {
      const auto slice =
          std::min(wake, std::chrono::system_clock::now() + std::chrono::milliseconds(50));
      if (!connection_was_down) {
        std::this_thread::sleep_until(slice);
        continue;
      }
      const grpc_connectivity_state state = endpoint().channel->GetState(/*try_to_connect=*/true);
      if (state == GRPC_CHANNEL_READY) break;
      endpoint().channel->WaitForStateChange(state, slice);
    }
  }
}

absl::StatusOr<LoraClient::DownloadResult> LoraClient::Download(const std::string& name,
                                                                const std::string& artifact_path,
                                                                const std::string& local_path) {
  const std::string partial = local_path + ".partial";
  LORA_RETURN_IF_ERROR(MakeDirectories(ParentDirectory(local_path)));
  DownloadResult result;
  for (int attempt = 0; attempt < 20; ++attempt) {
    std::error_code ec;
    int64_t offset = std::filesystem::exists(partial, ec)
                         ? static_cast<int64_t>(std::filesystem::file_size(partial, ec))
                         : 0;
    int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return absl::PermissionDeniedError(absl::StrCat(partial, ": cannot write"));
    grpc::ClientContext ctx;
    Prepare(&ctx, /*deadline=*/false);
    lora::v1::DownloadArtifactRequest req;
    req.set_name(name);
    req.set_path(artifact_path);
    req.set_offset(offset);
    auto reader = endpoint().stub->DownloadArtifact(&ctx, req);
    lora::v1::ArtifactChunk chunk;
    bool write_failed = false;
    while (reader->Read(&chunk)) {
      result.bytes = chunk.total_size();
      result.sha256 = chunk.sha256();
      if (chunk.offset() != offset) continue;
      if (::write(fd, chunk.data().data(), chunk.data().size()) !=
          static_cast<ssize_t>(chunk.data().size())) {
        write_failed = true;
        ctx.TryCancel();
        break;
      }
      offset += static_cast<int64_t>(chunk.data().size());
      result.transferred += static_cast<int64_t>(chunk.data().size());
    }
    ::fsync(fd);
    ::close(fd);
    grpc::Status s = reader->Finish();
    if (write_failed) return absl::ResourceExhaustedError(absl::StrCat(partial, ": write failed"));
    if (s.error_code() == grpc::StatusCode::OUT_OF_RANGE) {
      std::filesystem::remove(partial, ec);  // a stale partial larger than the file: start over
      continue;
    }
    if (!s.ok()) {
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE) return Wrap(s);
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      continue;
    }
    LORA_ASSIGN_OR_RETURN(std::string digest, Sha256File(partial));
    if (digest != result.sha256) {
      std::filesystem::remove(partial, ec);
      return absl::DataLossError(absl::StrCat(artifact_path, ": sha256 mismatch (got ", digest,
                                              ", expected ", result.sha256,
                                              "); the partial file was removed, retry"));
    }
    if (::rename(partial.c_str(), local_path.c_str()) != 0) {
      return absl::InternalError(absl::StrCat(local_path, ": cannot rename into place"));
    }
    return result;
  }
  return absl::UnavailableError(absl::StrCat(artifact_path, ": download kept failing"));
}

}  // namespace lora
