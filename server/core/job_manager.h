// The controller's core: job lifecycle, events and watchers, workers, gang scheduling and
// retries. No gRPC here: the service adapters (server/grpc/) translate and call in, and talk
// to workers through the WorkerChannel interface.
//
// State machine (anything else is FAILED_PRECONDITION):
//   QUEUED -> STARTING -> RUNNING -> SUCCEEDED | FAILED
//   QUEUED -> CANCELLED;  STARTING | RUNNING -> CANCELLING -> CANCELLED
//   STARTING | RUNNING -> QUEUED (retry after a lost worker, bounded by max_attempts)
//
// Every state change and engine event becomes a JobEvent with the job's next sequence number,
// written to the store before watchers see it.
#ifndef LORA_SERVER_CORE_JOB_MANAGER_H_
#define LORA_SERVER_CORE_JOB_MANAGER_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lora/v1/job.pb.h"
#include "lora/v1/job_service.pb.h"
#include "lora/worker/v1/worker_service.pb.h"
#include "server/core/artifact_store.h"
#include "server/store/job_store.h"

namespace lora::server {

// Receives a job's events as they are stored. Called with the manager's lock held: must only
// enqueue, never block or call back into the manager.
class EventSubscriber {
 public:
  virtual ~EventSubscriber() = default;
  virtual void OnEvent(const lora::v1::JobEvent& event) = 0;
  // The job reached a terminal state (its last event was delivered first), or the server is
  // shutting down.
  virtual void OnClose(bool shutdown) = 0;
};

// The way to one connected worker. Send must not block (queue the message).
class WorkerChannel {
 public:
  virtual ~WorkerChannel() = default;
  virtual void Send(const lora::worker::v1::ControllerMessage& message) = 0;
  // Ends the stream (the worker reconnects and registers again).
  virtual void Close() = 0;
};

struct JobManagerStats {
  std::map<lora::v1::JobState, int64_t> jobs_by_state;  // active jobs only, plus totals below
  int64_t workers_connected = 0;
  int64_t workers_busy_slots = 0;
  int64_t workers_total_slots = 0;
  int64_t watchers = 0;
  // Queued jobs the connected workers cannot run however long they wait (no worker has the
  // job's device, or all of them together have fewer slots than its ranks), by device.
  std::map<std::string, int64_t> unschedulable_by_device;
};

class JobManager {
 public:
  struct Options {
    int max_attempts = 3;
    absl::Duration heartbeat_timeout = absl::Seconds(15);
    absl::Duration cancel_grace = absl::Seconds(10);
    // After a restart, how long running jobs wait for their workers to reconnect.
    absl::Duration reattach_grace = absl::Seconds(30);
    int heartbeat_interval_ms = 2000;
    // Per-tenant quotas (0 = none): jobs waiting in QUEUED (CreateJob beyond it is
    // RESOURCE_EXHAUSTED), and ranks running at once (further jobs of the tenant wait, without
    // holding up other tenants).
    int max_queued_jobs_per_tenant = 0;
    int max_running_ranks_per_tenant = 0;
    // lorad --data-root: where the workers' data lives; specs naming paths elsewhere are
    // refused at CreateJob (CheckSpecPaths). Empty: no check here (the workers still check).
    std::vector<std::string> declared_data_roots;
  };

  static absl::StatusOr<std::unique_ptr<JobManager>> Create(const Options& options, JobStore* store,
                                                            ArtifactStore* artifacts);

  // --- public API (lora.v1.JobService)
  // `created` tells a new job from an idempotent replay (request ids are per tenant). The job
  // belongs to `tenant`.
  absl::StatusOr<lora::v1::Job> CreateJob(lora::v1::JobSpec spec, const std::string& request_id,
                                          bool* created, const std::string& tenant = "");
  absl::StatusOr<lora::v1::Job> GetJob(const std::string& name);
  // `tenant` set: only that tenant's jobs.
  absl::StatusOr<lora::v1::ListJobsResponse> ListJobs(
      const lora::v1::ListJobsRequest& request,
      const std::optional<std::string>& tenant = std::nullopt);
  absl::StatusOr<lora::v1::Job> CancelJob(const std::string& name);
  absl::StatusOr<std::vector<lora::v1::Checkpoint>> ListCheckpoints(const std::string& name);
  absl::StatusOr<lora::v1::ArtifactFile> GetArtifact(const std::string& name,
                                                     const std::string& path);

  // Registers `subscriber` for events after *last_sequence (set to the newest stored event at
  // the moment of subscription): read history up to it from the store, get the rest live.
  // *terminal says the job has already ended (no live events will come).
  absl::Status Subscribe(const std::string& name, EventSubscriber* subscriber,
                         int64_t* last_sequence, bool* terminal);
  void Unsubscribe(const std::string& job_id, EventSubscriber* subscriber);
  absl::StatusOr<std::vector<lora::v1::JobEvent>> ReadEvents(const std::string& job_id,
                                                             int64_t after, int limit);

  // --- workers (lora.worker.v1.WorkerService)
  absl::StatusOr<lora::worker::v1::RegisterAck> WorkerConnected(
      const lora::worker::v1::Register& reg, std::shared_ptr<WorkerChannel> channel);
  void WorkerDisconnected(const std::string& worker_id, const WorkerChannel* channel);
  void OnHeartbeat(const std::string& worker_id);
  void OnRankEvent(const std::string& worker_id, const lora::worker::v1::RankEvent& event);
  void OnRankAccepted(const std::string& worker_id, const lora::worker::v1::RankAccepted& accepted);
  void OnRankExited(const std::string& worker_id, const lora::worker::v1::RankExited& exited);
  // Upload of a job artifact finished and verified.
  absl::Status OnArtifactStored(const lora::worker::v1::UploadHeader& header,
                                const lora::v1::ArtifactFile& file);
  // Whether a worker may upload for / fetch from this job attempt.
  absl::Status CheckRankOwner(const std::string& worker_id, const lora::worker::v1::RankRef& ref);
  // Whether a worker runs any rank of the job's current attempt (to fetch resume files).
  absl::Status CheckWorkerOnJob(const std::string& worker_id, const std::string& job_id);

  // Periodic duties: lost workers, cancel deadlines, reattach deadlines, scheduling.
  void Tick();
  // Tells every watcher the server is going away; later calls fail with UNAVAILABLE.
  void Shutdown();
  JobManagerStats Stats();

 private:
  struct RankSlot {
    std::string worker_id;
    bool assigned = false;  // the Assignment was sent
    bool accepted = false;
    bool exited = false;
    int exit_code = 0;
    int signal = 0;
    int64_t last_worker_seq = 0;
    bool slot_released = false;
  };
  struct Runtime {
    std::vector<RankSlot> ranks;
    int master_port = 0;
    std::string master_addr;
    absl::Time cancel_deadline = absl::InfiniteFuture();
    absl::Time reattach_deadline = absl::InfiniteFuture();
    std::string failure_reason;  // from a rank's "failed" event
    int failure_code = 0;        // its google.rpc.Code
    bool rank0_finished = false;
  };
  struct ActiveJob {
    lora::v1::Job job;
    Runtime rt;
  };
  struct Worker {
    std::shared_ptr<WorkerChannel> channel;  // null while disconnected
    lora::worker::v1::Capabilities capabilities;
    std::string address;
    absl::Time last_seen;
    int used_slots = 0;
  };

  JobManager(const Options& options, JobStore* store, ArtifactStore* artifacts);
  absl::Status Recover();
  static absl::StatusOr<std::string> JobId(const std::string& name);

  // Appends events (assigning sequences), persists the job, then notifies watchers.
  absl::Status Commit(ActiveJob& a, std::vector<lora::v1::JobEvent> events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  lora::v1::JobEvent StateEvent(lora::v1::Job& job, lora::v1::JobState to,
                                const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Transition(ActiveJob& a, lora::v1::JobState to, const std::string& reason,
                          std::vector<lora::v1::JobEvent> extra = {})
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Finish(std::string job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseSlots(ActiveJob& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendCancel(ActiveJob& a, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RetryOrFail(ActiveJob& a, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeComplete(ActiveJob& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLost(const std::string& worker_id, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The connected workers of one device (cpu, cuda): jobs of that device share their slots.
  struct DevicePool {
    int workers = 0;
    int slots = 0;
  };
  std::map<std::string, DevicePool> ConnectedPools() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Why a job of `ranks` more ranks of `tenant` must wait for the tenant's own jobs, or ""
  // when its quota allows it (limit 0: none).
  static std::string TenantQuotaReason(const std::string& tenant, int running, int ranks,
                                       int limit);
  // Why a job of `ranks` ranks on `device` cannot start now, for Job.queue_reason.
  static std::string QueueReason(const std::string& device, int ranks, const DevicePool& pool,
                                 int free_slots, int connected_workers);
  void Schedule() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendAssignment(ActiveJob& a, int rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ActiveJob* FindRank(const lora::worker::v1::RankRef& ref, const std::string& worker_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<lora::v1::JobEvent> TranslateEngineEvent(ActiveJob& a, int rank,
                                                       const std::string& json)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  JobStore* const store_;
  ArtifactStore* const artifacts_;

  absl::Mutex mu_;
  std::map<std::string, ActiveJob> active_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::set<EventSubscriber*>> subscribers_ ABSL_GUARDED_BY(mu_);
  // Ranks of replaced attempts still stopping: their slot stays busy until they exit.
  std::map<std::tuple<std::string, int, int>, std::string> draining_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_JOB_MANAGER_H_
