// liblora_client: a small C++ client for lorad's lora.v1.JobService, for loractl and for any
// C++ tool. Blocking calls with deadlines; watch and download reconnect and resume.
//
//   LORA_ASSIGN_OR_RETURN(auto client, LoraClient::Create({.address = "127.0.0.1:50051"}));
//   LORA_ASSIGN_OR_RETURN(lora::v1::Job job, client->CreateJob(spec, request_id));
//   client->Watch(job.name(), 0, [](const lora::v1::JobEvent& e) { ...; return true; });
//   client->Download(job.name(), "final/adapter/adapter_model.safetensors",
//   "out/adapter_model.safetensors");
#ifndef LORA_CLIENT_LORA_CLIENT_H_
#define LORA_CLIENT_LORA_CLIENT_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "lora/v1/job_service.grpc.pb.h"

namespace lora {

struct ClientOptions {
  std::string address = "127.0.0.1:50051";
  std::string token;  // bearer token
  // TLS: with tls_ca set, the channel is TLS (tls_cert/tls_key for client certificates).
  std::string tls_ca, tls_cert, tls_key;
  std::chrono::milliseconds timeout{30000};  // per unary call
};

class LoraClient {
 public:
  static absl::StatusOr<std::unique_ptr<LoraClient>> Create(const ClientOptions& options);

  absl::StatusOr<lora::v1::Job> CreateJob(const lora::v1::JobSpec& spec,
                                          const std::string& request_id);
  absl::StatusOr<lora::v1::Job> GetJob(const std::string& name);
  absl::StatusOr<lora::v1::ListJobsResponse> ListJobs(const lora::v1::ListJobsRequest& request);
  absl::StatusOr<lora::v1::Job> CancelJob(const std::string& name);
  absl::StatusOr<std::vector<lora::v1::Checkpoint>> ListCheckpoints(const std::string& name);

  // Streams events after `after_sequence` to `on_event` until the job ends (OK), `on_event`
  // returns false or `stop` becomes true (CANCELLED), or the server stays unreachable for
  // `give_up_after` (UNAVAILABLE). Dropped streams are resumed from the last sequence seen.
  absl::Status Watch(const std::string& name, int64_t after_sequence,
                     const std::function<bool(const lora::v1::JobEvent&)>& on_event,
                     const std::atomic<bool>* stop = nullptr,
                     std::chrono::seconds give_up_after = std::chrono::seconds(120));

  struct DownloadResult {
    int64_t bytes = 0;        // file size
    int64_t transferred = 0;  // bytes fetched by this call (less when resumed)
    std::string sha256;
  };
  // Downloads an artifact to `local_path`, resuming a partial "<local_path>.partial", verifying
  // the sha256, then renaming into place.
  absl::StatusOr<DownloadResult> Download(const std::string& name, const std::string& artifact_path,
                                          const std::string& local_path);

 private:
  explicit LoraClient(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel);
  void Prepare(grpc::ClientContext* ctx, bool deadline = true) const;
  absl::Status Wrap(const grpc::Status& status) const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<lora::v1::JobService::Stub> stub_;
};

}  // namespace lora

#endif  // LORA_CLIENT_LORA_CLIENT_H_
