// lora-worker: connects out to lorad, registers, runs assigned ranks as lora-train children,
// forwards their events, uploads their checkpoints and outputs, reports exits. If the
// controller goes away it reconnects with backoff; running children keep going and their
// events are buffered and re-sent from where the controller left off.
//
//   WorkerAgent agent(options);
//   agent.Run();        // until Stop() (SIGTERM)
#ifndef LORA_WORKER_AGENT_WORKER_AGENT_H_
#define LORA_WORKER_AGENT_WORKER_AGENT_H_

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <grpcpp/grpcpp.h>

#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data_roots.h"
#include "lora/worker/v1/worker_service.grpc.pb.h"
#include "worker/agent/child_process.h"

namespace lora {

struct WorkerAgentOptions {
  std::string controller = "127.0.0.1:50051";
  std::string worker_id;
  std::string work_dir = "lora-worker";
  std::string lora_train;             // path of the lora-train binary
  std::string address = "127.0.0.1";  // where other ranks reach this worker
  std::string device = "cpu";
  int slots = 1;
  std::vector<lora::worker::v1::GpuInfo> gpus;  // advertised; rank slot i runs on GPU gpus[i]
  std::string token;                            // worker bearer token
  int threads_per_rank = 0;  // passed to lora-train as training.num_threads (0 = all cores)
  // What a job's path fields may name (--data-root); checked before a rank starts and passed on
  // to lora-train, which checks again. Default: no restriction.
  DataRoots data_roots;
  // TLS to the controller (ReadWorkerTls); empty ca_pem = plaintext.
  struct Tls {
    std::string ca_pem;             // verifies lorad's certificate
    std::string cert_pem, key_pem;  // this worker's client certificate (optional)
  } tls;
};

// The TLS material for the controller channel from PEM files: the CA that signed lorad's
// certificate, and optionally this worker's client certificate and key (lorad verifies them
// against --tls-client-ca). All empty = plaintext. Errors name the flag (--tls-ca, --tls-cert,
// --tls-key) and never quote the files. Only reads files: gRPC is not initialized here, so it
// may run before the signal mask is set (gRPC's threads must inherit the mask).
absl::StatusOr<WorkerAgentOptions::Tls> ReadWorkerTls(const std::string& ca_file,
                                                      const std::string& cert_file,
                                                      const std::string& key_file);

// The lowest slot in [0, slots) that no running rank holds, or -1 when all are taken. A rank
// keeps its slot, and so its GPU, from start to exit.
int LowestFreeSlot(const std::vector<int>& held, int slots);

class WorkerAgent {
 public:
  explicit WorkerAgent(WorkerAgentOptions options);
  ~WorkerAgent();
  void Run();
  void Stop();  // stops reconnecting, SIGTERMs running ranks, returns from Run

 private:
  using Key = std::tuple<std::string, int, int>;  // job, attempt, rank
  struct Rank {
    lora::worker::v1::Assignment assignment;
    std::unique_ptr<ChildProcess> child;
    std::vector<lora::worker::v1::RankEvent> events;  // everything produced, for re-sends
    int64_t sent_seq = 0;
    bool accepted_sent = false;
    std::optional<lora::worker::v1::RankAccepted> accepted;
    std::optional<lora::worker::v1::RankExited> exited;
    bool exit_sent = false;
    bool cancel_requested = false;
    int device_slot = -1;  // which of the worker's slots (GPU) it holds while running
    std::thread runner;
    std::chrono::steady_clock::time_point done_at;
  };

  void Session();  // one connection, until it breaks
  void Dispatch(const lora::worker::v1::ControllerMessage& message);
  void StartRank(const lora::worker::v1::Assignment& assignment);
  void RunRank(Key key);
  void CancelRank(const Key& key, int grace_ms);
  // Uploads one file as a job artifact (retrying while the controller is unreachable).
  absl::StatusOr<std::pair<int64_t, std::string>> Upload(const Key& key, const std::string& local,
                                                         const std::string& job_path, int64_t step);
  absl::Status Fetch(const std::string& job_id, const std::string& job_path,
                     const std::string& local, const std::string& sha256);
  // Turns an engine event line into the forwarded JSON (uploading what it announces first).
  std::string Prepare(const Key& key, const std::string& run_dir, const std::string& line);
  // Sends unsent events / accept / exit of every rank (with the stream lock held by caller).
  void FlushLocked();
  bool WriteLocked(const lora::worker::v1::WorkerMessage& m);
  void Heartbeats();
  std::shared_ptr<grpc::Channel> MakeChannel();
  void AddMetadata(grpc::ClientContext* ctx) const;

  WorkerAgentOptions options_;
  std::atomic<bool> stopping_{false};
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<lora::worker::v1::WorkerService::Stub> stub_;

  std::mutex mu_;  // guards ranks_, stream_, connected_
  std::condition_variable cv_;
  std::map<Key, std::unique_ptr<Rank>> ranks_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<lora::worker::v1::WorkerMessage,
                                           lora::worker::v1::ControllerMessage>>
      stream_;
  bool connected_ = false;  // registered and acknowledged
  int heartbeat_ms_ = 2000;
};

}  // namespace lora

#endif  // LORA_WORKER_AGENT_WORKER_AGENT_H_
