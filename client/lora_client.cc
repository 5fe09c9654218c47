#include "client/lora_client.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace lora {

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
  auto channel = grpc::CreateCustomChannel(options.address, credentials, args);
  return std::unique_ptr<LoraClient>(new LoraClient(options, std::move(channel)));
}

absl::Status LoraClient::Wrap(const grpc::Status& status) const {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return absl::UnavailableError(absl::StrCat("lorad at ", options_.address, " is unreachable (",
                                               status.error_message(), ")"));
  }
  return FromGrpcStatus(status);
}

LoraClient::LoraClient(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      stub_(lora::v1::JobService::NewStub(channel_)) {}

void LoraClient::Prepare(grpc::ClientContext* ctx, bool deadline) const {
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  if (deadline) ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
}

absl::StatusOr<lora::v1::Job> LoraClient::CreateJob(const lora::v1::JobSpec& spec,
                                                    const std::string& request_id) {
  lora::v1::CreateJobRequest req;
  *req.mutable_spec() = spec;
  req.set_request_id(request_id);
  lora::v1::Job job;
  // Safe to retry: the request id makes creation idempotent.
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    if (!request_id.empty()) ctx.set_wait_for_ready(true);
    grpc::Status s = stub_->CreateJob(&ctx, req, &job);
    if (s.ok()) return job;
    if (request_id.empty() || s.error_code() != grpc::StatusCode::UNAVAILABLE || attempt >= 3)
      return Wrap(s);
  }
}

absl::StatusOr<lora::v1::Job> LoraClient::GetJob(const std::string& name) {
  lora::v1::GetJobRequest req;
  req.set_name(name);
  lora::v1::Job job;
  grpc::ClientContext ctx;
  Prepare(&ctx);
  LORA_RETURN_IF_ERROR(Wrap(stub_->GetJob(&ctx, req, &job)));
  return job;
}

absl::StatusOr<lora::v1::ListJobsResponse> LoraClient::ListJobs(
    const lora::v1::ListJobsRequest& request) {
  lora::v1::ListJobsResponse resp;
  grpc::ClientContext ctx;
  Prepare(&ctx);
  LORA_RETURN_IF_ERROR(Wrap(stub_->ListJobs(&ctx, request, &resp)));
  return resp;
}

absl::StatusOr<lora::v1::Job> LoraClient::CancelJob(const std::string& name) {
  lora::v1::CancelJobRequest req;
  req.set_name(name);
  lora::v1::Job job;
  grpc::ClientContext ctx;
  Prepare(&ctx);
  LORA_RETURN_IF_ERROR(Wrap(stub_->CancelJob(&ctx, req, &job)));
  return job;
}

absl::StatusOr<std::vector<lora::v1::Checkpoint>> LoraClient::ListCheckpoints(
    const std::string& name) {
  lora::v1::ListCheckpointsRequest req;
  req.set_name(name);
  lora::v1::ListCheckpointsResponse resp;
  grpc::ClientContext ctx;
  Prepare(&ctx);
  LORA_RETURN_IF_ERROR(Wrap(stub_->ListCheckpoints(&ctx, req, &resp)));
  return std::vector<lora::v1::Checkpoint>(resp.checkpoints().begin(), resp.checkpoints().end());
}

absl::Status LoraClient::Watch(const std::string& name, int64_t after_sequence,
                               const std::function<bool(const lora::v1::JobEvent&)>& on_event,
                               const std::atomic<bool>* stop, std::chrono::seconds give_up_after) {
  int64_t last = after_sequence;
  auto unreachable_since = std::chrono::steady_clock::now();
  while (true) {
    if (stop && stop->load()) return absl::CancelledError("stopped watching");
    grpc::ClientContext ctx;
    Prepare(&ctx, /*deadline=*/false);
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10) + give_up_after);
    lora::v1::WatchJobRequest req;
    req.set_name(name);
    req.set_after_sequence(last);
    std::atomic<bool> done{false};
    // A stop request cancels the blocking read.
    std::thread canceller([&] {
      while (!done.load()) {
        if (stop && stop->load()) {
          ctx.TryCancel();
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
    auto reader = stub_->WatchJob(&ctx, req);
    lora::v1::JobEvent event;
    bool keep_going = true;
    while (keep_going && reader->Read(&event)) {
      unreachable_since = std::chrono::steady_clock::now();
      if (event.sequence() <= last) continue;
      last = event.sequence();
      keep_going = on_event(event);
    }
    if (!keep_going) ctx.TryCancel();
    grpc::Status s = reader->Finish();
    done = true;
    canceller.join();
    if (!keep_going || (stop && stop->load())) return absl::CancelledError("stopped watching");
    if (s.ok()) return absl::OkStatus();
    const bool transient = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           s.error_code() == grpc::StatusCode::INTERNAL ||
                           s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!transient) return Wrap(s);
    if (std::chrono::steady_clock::now() - unreachable_since > give_up_after) return Wrap(s);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
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
    auto reader = stub_->DownloadArtifact(&ctx, req);
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
