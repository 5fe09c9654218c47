// lora-worker: connects out to lorad, registers, runs assigned ranks as lora-train children,
// forwards their events, uploads their checkpoints and outputs, reports exits. If the
// controller goes away it reconnects with backoff; running children keep going and their
// events are kept and re-sent from where the controller left off. On Stop() (SIGTERM) it
// drains: no new ranks, SIGTERM to the running ones, their drain checkpoints uploaded and their
// exits reported, then it disconnects, all within options.drain_grace.
//
//   LORA_ASSIGN_OR_RETURN(std::unique_ptr<WorkerAgent> agent, WorkerAgent::Create(options));
//   std::thread signals([&] { WaitForSigterm(); agent->Stop(); });
//   agent->Run();  // returns once drained
//
// Threads and locks:
// - Run()'s thread holds the session: connects, registers, reads and dispatches the
//   controller's messages; one SessionWriter thread per session writes (session_writer.h).
// - One runner thread per rank: fetches its checkpoint, runs lora-train, pumps its events
//   (uploading what they announce first), reports its exit.
// - One housekeeping thread: heartbeats, cancel graces, the drain's progress and deadline, and
//   the removal of finished ranks' run directories.
// - mu_ guards the ranks and the session state. Nothing blocks on the network or on a child
//   with mu_ held: messages go to the session's outbox (SessionWriter::Enqueue), uploads and
//   fetches (artifact_transfer.h) run on the rank's thread without it. Lock order: mu_, then
//   the SessionWriter's, ArtifactTransfer's or ChildProcess's own lock (each a leaf).
// - A drain stops at the first of: every rank's exit written; the grace over (the rest
//   SIGKILLed, their exits given a few seconds to go out); lorad refusing the worker (a
//   non-transient code: no exit could be reported). A second Stop() ends the grace at once.
//
// Invariants: a rank's events are forwarded in order, each once per session, from the seq the
// controller acknowledged (RegisterAck.resume_from); its exit goes out after all its events
// and counts as sent only once written; its run directory is removed only after that (and after
// its runner returned: everything it announced was uploaded or given up on).
#ifndef LORA_WORKER_AGENT_WORKER_AGENT_H_
#define LORA_WORKER_AGENT_WORKER_AGENT_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/data_roots.h"
#include "lora/worker/v1/worker_service.grpc.pb.h"
#include "worker/agent/artifact_transfer.h"
#include "worker/agent/child_process.h"
#include "worker/agent/file_cache.h"
#include "worker/agent/retry_policy.h"
#include "worker/agent/session_writer.h"
#include "worker/agent/work_dir.h"

namespace lora {

struct WorkerAgentOptions {
  // lorad's worker endpoint, host:port; several, comma-separated, for lorad replicas (only the
  // leader accepts workers: a refused or lost session moves on to the next one).
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
  // Uploaded files ("files/{id}" in a spec) are fetched into this cache (FileCache), shared by
  // the ranks; empty: <work_dir>/cache. Least recently used blobs go beyond max bytes.
  std::string cache_dir;
  int64_t cache_max_bytes = int64_t{20} << 30;
  // TLS to the controller (ReadWorkerTls); empty ca_pem = plaintext.
  struct Tls {
    std::string ca_pem;             // verifies lorad's certificate
    std::string cert_pem, key_pem;  // this worker's client certificate (optional)
    // Where they came from (ReadWorkerTls): when set, gRPC re-reads the files every
    // refresh_interval_s and new connections use what they hold then, so renewed certificates
    // need no restart. A pair it cannot load (caught mid-replacement) leaves the previous one.
    std::string ca_file, cert_file, key_file;
    unsigned refresh_interval_s = 5;
  } tls;
  // After Stop(): how long ranks get to write their drain checkpoints and have them uploaded
  // and their exits reported; then the rest are killed (and reported killed).
  std::chrono::milliseconds drain_grace = std::chrono::seconds(60);
  RetryPolicy connect_retry = RetryPolicy::Connect();
  RetryPolicy upload_retry = RetryPolicy::Upload();
  RetryPolicy fetch_retry = RetryPolicy::Fetch();
  // engine.log tails of failed ranks kept under <work_dir>/logs: bytes each, and how many.
  size_t failed_log_bytes = 64 << 10;
  int failed_logs_kept = 32;
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
  // Takes the work directory (FAILED_PRECONDITION naming the holder while another lora-worker
  // has it) and removes what a crashed worker left there; INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<WorkerAgent>> Create(WorkerAgentOptions options);
  ~WorkerAgent();
  WorkerAgent(const WorkerAgent&) = delete;
  WorkerAgent& operator=(const WorkerAgent&) = delete;

  // Serves the controller until a Stop() has drained the ranks (or its grace ran out).
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  // Starts the drain and returns at once (safe from any thread but a signal handler). A second
  // call ends the grace now: the ranks still running are killed.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Key = std::tuple<std::string, int, int>;  // job, attempt, rank
  using Clock = std::chrono::steady_clock;
  struct Rank {
    lora::worker::v1::Assignment assignment;
    std::string run_dir;
    std::unique_ptr<ChildProcess> child;
    std::vector<lora::worker::v1::RankEvent> events;  // everything produced, for re-sends
    // Events queued on the current session (or acknowledged by the controller): the next
    // one to send is events[sent_seq].
    int64_t sent_seq = 0;
    std::optional<lora::worker::v1::RankAccepted> accepted;
    bool accepted_queued = false;  // on the current session
    std::optional<lora::worker::v1::RankExited> exited;
    int64_t exit_ticket = 0;  // the exit's ticket on the current session's writer; 0: not queued
    bool exit_sent = false;   // written on some session (or the controller stopped wanting it)
    bool cancel_requested = false;
    std::optional<Clock::time_point> kill_at;  // SIGKILL then: the cancel's grace
    int device_slot = -1;  // which of the worker's slots (GPU) it holds while running
    std::thread runner;
    bool runner_done = false;  // RunRank returned
    bool cleaned = false;      // run directory removed
    Clock::time_point done_at;
  };

  WorkerAgent(WorkerAgentOptions options, std::unique_ptr<WorkDirLock> lock);

  // One connection, until it breaks or the drain closes it; the stream's final status.
  grpc::Status Session() ABSL_LOCKS_EXCLUDED(mu_);
  void Dispatch(const lora::worker::v1::ControllerMessage& message) ABSL_LOCKS_EXCLUDED(mu_);
  void StartRank(const lora::worker::v1::Assignment& assignment) ABSL_LOCKS_EXCLUDED(mu_);
  void RunRank(Key key) ABSL_LOCKS_EXCLUDED(mu_);
  void CancelRank(const Key& key, int grace_ms) ABSL_LOCKS_EXCLUDED(mu_);
  // Parses an engine event line into the forwarded message (uploading what it announces first);
  // nullopt for a line that does not parse (logged).
  std::optional<lora::engine::v1::EngineEvent> Prepare(const Key& key, const std::string& run_dir,
                                                       const std::string& line);
  // Adds an event of the worker's own (a warning, a failure) to the rank's stream.
  void AddEvent(const Key& key, lora::engine::v1::EngineEvent event) ABSL_LOCKS_EXCLUDED(mu_);
  // Queues every rank's unsent accept, events and exit on the current session's writer.
  void FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the exits the current session has written as sent.
  void NoteWrittenExitsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Housekeeping() ABSL_LOCKS_EXCLUDED(mu_);
  // The drain's next step, if any: done, out of time, or closing the session.
  void DrainStepLocked(Clock::time_point now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Run() returns: closes the session once what was queued is written.
  void FinishLocked(Clock::time_point now, const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void KillRanksLocked(int signo) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes the run directories of ranks whose exit was sent and whose runner returned
  // (keeping the log tail of a failed one).
  void CleanUpFinishedRanks() ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);
  // The controller the next session and transfers talk to.
  lora::worker::v1::WorkerService::Stub* stub() const { return stubs_[current_.load()].get(); }
  const std::string& controller() const { return controllers_[current_.load()]; }
  void AddMetadata(grpc::ClientContext* ctx) const;

  const WorkerAgentOptions options_;
  const std::unique_ptr<WorkDirLock> work_dir_lock_;
  // One channel per controller address (options_.controller split at commas).
  std::vector<std::string> controllers_;
  std::vector<std::unique_ptr<lora::worker::v1::WorkerService::Stub>> stubs_;
  std::atomic<size_t> current_{0};
  std::unique_ptr<FileCache> file_cache_;
  std::unique_ptr<ArtifactTransfer> transfer_;

  // Creating a run directory and removing another with its empty parents (jobs/<id>/...) must
  // not interleave: the chaos test caught a new attempt's mkdir failing with ENOENT because the
  // previous attempt's cleanup removed jobs/<id> in between.
  absl::Mutex run_dirs_mu_;
  absl::Mutex mu_;
  absl::CondVar cv_;  // any change a waiter below may be waiting for
  std::map<Key, std::unique_ptr<Rank>> ranks_ ABSL_GUARDED_BY(mu_);
  // The current session (null between sessions).
  SessionWriter* writer_ ABSL_GUARDED_BY(mu_) = nullptr;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;  // registered and acknowledged
  bool closing_ ABSL_GUARDED_BY(mu_) = false;    // half-closed on purpose (the drain is done)
  Clock::time_point close_deadline_ ABSL_GUARDED_BY(mu_);
  int heartbeat_ms_ ABSL_GUARDED_BY(mu_) = 2000;
  // The drain (Stop()).
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  Clock::time_point drain_deadline_ ABSL_GUARDED_BY(mu_);
  bool killed_ ABSL_GUARDED_BY(mu_) = false;  // the grace ran out: remaining ranks SIGKILLed
  Clock::time_point report_deadline_ ABSL_GUARDED_BY(mu_);  // for the killed ranks' exits
  bool unreachable_ ABSL_GUARDED_BY(mu_) = false;  // the controller refuses us: stop waiting
  bool finished_ ABSL_GUARDED_BY(mu_) = false;     // Run() returns
  bool housekeeping_stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace lora

#endif  // LORA_WORKER_AGENT_WORKER_AGENT_H_
