// liblora_client: a small C++ client for lorad's lora.v1.JobService, for loractl and for any
// C++ tool. Blocking calls with deadlines; every call fails at once when lorad refuses the
// connection and after connect_timeout when it does not answer; watch and download reconnect
// and resume.
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
  // host:port; lorad replicas: several, comma-separated (calls go to whichever answers them,
  // moving on from one that cannot be reached or refuses as a follower).
  std::string address = "127.0.0.1:50051";
  std::string token;  // bearer token
  // TLS: with tls_ca set, the channel is TLS (tls_cert/tls_key for client certificates).
  std::string tls_ca, tls_cert, tls_key;
  std::chrono::milliseconds timeout{30000};  // per unary call
  // How long a call waits for a connection to lorad (at most `timeout`). A refused connection
  // (nothing listens, a TLS handshake fails) fails the call at once, whatever this says; this
  // bounds a peer that never answers.
  std::chrono::milliseconds connect_timeout{10000};
};

// How Watch rides out a lost stream (lorad restarting, a network blip): it reconnects after
// exponentially growing, jittered delays and resumes after the last sequence it delivered.
struct ReconnectPolicy {
  std::chrono::milliseconds initial_backoff{250};
  std::chrono::milliseconds max_backoff{5000};
  double multiplier = 2;
  double jitter = 0.2;  // each delay is scaled by a random factor in [1 - jitter, 1 + jitter]
  // Gives up (UNAVAILABLE) once the stream has been down this long; zero: never reconnects.
  // A stream counts as up again once it delivers an event or stays open for 5 seconds.
  std::chrono::milliseconds give_up_after{std::chrono::seconds(120)};
  int max_attempts = 0;  // reconnect attempts per outage; 0: no limit but give_up_after
  // Before each wait: why the stream ended, the attempt (1, 2, ...), the delay, and the last
  // sequence delivered (the stream resumes after it).
  std::function<void(const absl::Status& cause, int attempt, std::chrono::milliseconds delay,
                     int64_t last_sequence)>
      on_retry;
  // A reopened stream delivered its first event (or ended with the job): the watch resumed
  // after `last_sequence`.
  std::function<void(int64_t last_sequence)> on_reconnected;
};

class LoraClient {
 public:
  static absl::StatusOr<std::unique_ptr<LoraClient>> Create(const ClientOptions& options);

  absl::StatusOr<lora::v1::Job> CreateJob(const lora::v1::JobSpec& spec,
                                          const std::string& request_id);
  absl::StatusOr<lora::v1::Job> GetJob(const std::string& name);
  absl::StatusOr<lora::v1::ListJobsResponse> ListJobs(const lora::v1::ListJobsRequest& request);
  absl::StatusOr<lora::v1::Job> CancelJob(const std::string& name);
  absl::StatusOr<lora::v1::Job> PauseJob(const std::string& name);
  absl::StatusOr<lora::v1::Job> ResumeJob(const std::string& name);
  absl::Status DeleteJob(const std::string& name);
  absl::StatusOr<std::vector<lora::v1::Checkpoint>> ListCheckpoints(const std::string& name);

  // Streams events after `after_sequence` to `on_event` until the job ends (OK), `on_event`
  // returns false or `stop` becomes true (CANCELLED), or the stream cannot be resumed within
  // the policy's bounds (UNAVAILABLE). A stream that ends CANCELLED, UNAVAILABLE,
  // DEADLINE_EXCEEDED or INTERNAL without being asked to is reopened after the last sequence
  // delivered: each event is delivered once, in order.
  absl::Status Watch(const std::string& name, int64_t after_sequence,
                     const std::function<bool(const lora::v1::JobEvent&)>& on_event,
                     const std::atomic<bool>* stop = nullptr, const ReconnectPolicy& policy = {});

  struct DownloadResult {
    int64_t bytes = 0;        // file size
    int64_t transferred = 0;  // bytes fetched by this call (less when resumed)
    std::string sha256;
  };
  // Downloads an artifact to `local_path`, resuming a partial "<local_path>.partial", verifying
  // the sha256, then renaming into place.
  absl::StatusOr<DownloadResult> Download(const std::string& name, const std::string& artifact_path,
                                          const std::string& local_path);

  // For the other services' clients (client/file_upload.h) on the same connection: the
  // channel, a context with this client's credentials (and deadline), a unary call with the
  // same connection handling as the JobService calls, and the status mapping.
  // The channel to the address in use now (with replicas, it changes when one fails).
  std::shared_ptr<grpc::Channel> channel() const { return endpoint().channel; }
  void PrepareContext(grpc::ClientContext* ctx, bool deadline = true) const {
    Prepare(ctx, deadline);
  }
  absl::Status CallUnary(bool idempotent,
                         const std::function<grpc::Status(grpc::ClientContext*)>& call) {
    return Unary(idempotent, call);
  }
  absl::Status ToStatus(const grpc::Status& status) const { return Wrap(status); }

 private:
  // One lorad address and its connection.
  struct Endpoint {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<lora::v1::JobService::Stub> stub;
  };
  LoraClient(const ClientOptions& options, std::vector<Endpoint> endpoints);
  const Endpoint& endpoint() const { return endpoints_[current_.load() % endpoints_.size()]; }
  // Moves on to the next address (replicas); false with one address.
  bool Rotate() const;
  void Prepare(grpc::ClientContext* ctx, bool deadline = true) const;
  absl::Status Wrap(const grpc::Status& status) const;
  // Waits (at most connect_timeout) until the channel is connected (OK) or failed to connect
  // (FAILED_PRECONDITION: a call fails at once with gRPC's reason); UNAVAILABLE when lorad did
  // not answer in time, CANCELLED when `stop` became true.
  absl::Status AwaitConnection(const std::atomic<bool>* stop = nullptr) const;
  // One unary call: connection first, then `call`; an idempotent call that fails UNAVAILABLE
  // after the connection was up (lorad going away mid-call) is retried a few times. With several
  // addresses, a call that could not connect, an idempotent one that failed UNAVAILABLE (a
  // replica going away), or any call a follower refused as NOT_LEADER (common/not_leader.h),
  // moves on to the next address at once.
  absl::Status Unary(bool idempotent,
                     const std::function<grpc::Status(grpc::ClientContext*)>& call);

  ClientOptions options_;
  std::vector<Endpoint> endpoints_;
  mutable std::atomic<size_t> current_{0};
};

}  // namespace lora

#endif  // LORA_CLIENT_LORA_CLIENT_H_
