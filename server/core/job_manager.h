// The controller's core: the public job API, watchers, workers' reports, and the glue between
// the parts that decide (each pure and unit-tested on its own):
//   job_lifecycle.h            the state machine; a job change is planned on a copy
//   scheduler.h                queue + workers -> placements and queue reasons
//   retry_policy.h             an attempt's ranks -> wait | succeed | requeue | fail
//   engine_event_translator.h  an engine event -> job events and job fields
//   worker_registry.h          connected workers and their liveness
// The class is split by concern: job_manager.cc (commits, decisions, scheduling, ticks),
// job_manager_api.cc (the public API and watchers), job_manager_workers.cc (workers' reports).
// No gRPC here: the service adapters (server/grpc/) translate and call in, and talk to workers
// through WorkerChannel.
//
// One rule holds every change together: a job is written to the store first and published
// (memory, watchers, workers) only after the write succeeded. A failed write changes nothing:
// an API call returns the store's error; a decision taken in the background (an exit, a lost
// worker) is taken again on the next Tick; an engine event that could not be stored is asked
// for again by closing the worker's stream (it re-sends from the last stored sequence).
// Slot usage is derived from the jobs' ranks, never counted, so no path can leak a slot.
#ifndef LORA_SERVER_CORE_JOB_MANAGER_H_
#define LORA_SERVER_CORE_JOB_MANAGER_H_

#include <chrono>
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
#include "lora/v1/file.pb.h"
#include "lora/v1/job.pb.h"
#include "lora/v1/job_service.pb.h"
#include "lora/worker/v1/worker_service.pb.h"
#include "server/core/artifact_store.h"
#include "server/core/job_lifecycle.h"
#include "server/core/retry_policy.h"
#include "server/core/scheduler.h"
#include "server/core/worker_registry.h"
#include "server/store/job_store.h"

namespace lora::server {

// Receives a job's events as they are stored. Called with the manager's lock held: must only
// enqueue, never block or call back into the manager.
// A job event as published to watchers: serialized once, shared by all of them.
struct PublishedEvent {
  lora::v1::JobEvent event;
  std::string wire;  // event.SerializeAsString()
  // When the manager published it after committing it; unset for history read back from the
  // store (delivery latency is measured on live events only).
  std::optional<std::chrono::steady_clock::time_point> published_at;
};

class EventSubscriber {
 public:
  virtual ~EventSubscriber() = default;
  virtual void OnEvent(const std::shared_ptr<const PublishedEvent>& event) = 0;
  // The job reached a terminal state (its last event was delivered first), or the server is
  // shutting down.
  virtual void OnClose(bool shutdown) = 0;
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
  // Jobs whose outcome is decided but could not be stored yet (the store is failing).
  int64_t undecided_jobs = 0;
  int64_t store_write_failures = 0;  // since start: writes a decision or event could not make
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
    // Uploaded files ("files/{id}" in a spec's path fields): the files a tenant's spec names,
    // NOT_FOUND naming the field for one the tenant does not have (FileManager::ResolveSpec).
    // Checked at CreateJob and sent with every assignment. Unset: specs may not name uploads.
    std::function<absl::StatusOr<std::vector<lora::v1::File>>(const std::string& tenant,
                                                              const lora::v1::JobSpec& spec)>
        resolve_files;
    // Told as things happen (lorad counts and logs them); each may be empty. Called with the
    // manager's lock held, after the change was stored: count, log and return; never call
    // back into the manager.
    struct Observer {
      // A job reached SUCCEEDED, FAILED or CANCELLED.
      std::function<void(const lora::v1::Job& job)> job_finished;
      // An attempt was given up and the job queued again (`job` as queued, attempt + 1).
      // `reason`: worker_lost, killed, unavailable or planned_restart; `why`: the state
      // change's reason.
      std::function<void(const lora::v1::Job& job, const char* reason, const std::string& why)>
          job_retried;
      // A worker was given up on: `reason` is "missed heartbeats" or "disconnected".
      std::function<void(const std::string& worker_id, const std::string& reason)> worker_lost;
    };
    Observer observer;
    // A replica of a shared store (PostgreSQL) starts as a follower: it serves reads from the
    // store and follows watched jobs by reading their new events every Tick, and refuses
    // writes and workers (UNAVAILABLE, naming `leader` when known) until Lead(). false: lead
    // from the start (one lorad).
    bool follower = false;
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
  // QUEUED -> PAUSED at once; STARTING/RUNNING -> PAUSING (ranks asked to checkpoint and stop;
  // Decide ends it in PAUSED). PAUSING and PAUSED answer as they are.
  absl::StatusOr<lora::v1::Job> PauseJob(const std::string& name);
  // PAUSED -> QUEUED; FAILED_PRECONDITION naming the state otherwise.
  absl::StatusOr<lora::v1::Job> ResumeJob(const std::string& name);
  // A job that ended, with everything stored about it (store records, then artifact files).
  absl::Status DeleteJob(const std::string& name);
  // Retention (lorad --retain-finished): deletes up to `limit` jobs that ended before `cutoff`;
  // returns how many.
  int DeleteFinishedBefore(absl::Time cutoff, int limit = 100);
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
  // `draining`: the worker is shutting down and gets no new ranks.
  void OnHeartbeat(const std::string& worker_id, bool draining);
  void OnAlive(const std::string& worker_id);
  void OnRankEvent(const std::string& worker_id, const lora::worker::v1::RankEvent& event);
  void OnRankAccepted(const std::string& worker_id, const lora::worker::v1::RankAccepted& accepted);
  void OnRankExited(const std::string& worker_id, const lora::worker::v1::RankExited& exited);
  // Upload of a job artifact finished and verified.
  absl::Status OnArtifactStored(const lora::worker::v1::UploadHeader& header,
                                const lora::v1::ArtifactFile& file);
  // Whether a worker may upload for / fetch from this job attempt.
  absl::Status CheckRankOwner(const std::string& worker_id, const lora::worker::v1::RankRef& ref);
  // OK when `worker_id` holds the rank now and the rank's job names a file holding the blob
  // (what FetchBlob may serve); NOT_FOUND or PERMISSION_DENIED otherwise.
  absl::Status CheckBlobForRank(const std::string& worker_id, const lora::worker::v1::RankRef& ref,
                                const std::string& sha256);
  // Whether a job that has not ended names the file ("files/{id}") in its spec.
  bool NamesFile(const std::string& file_name);
  // Whether a worker runs any rank of the job's current attempt (to fetch resume files).
  absl::Status CheckWorkerOnJob(const std::string& worker_id, const std::string& job_id);

  // Periodic duties: lost workers, cancel deadlines, reattach deadlines, scheduling; on a
  // follower, the watched jobs' new events.
  void Tick();
  // A follower was elected: its watchers are ended resumably (they reconnect and resume by
  // sequence), the active jobs are recovered from the store as after a restart (running ones
  // wait reattach_grace for their workers), and writes and workers are accepted from now on.
  absl::Status Lead();
  bool leading() ABSL_LOCKS_EXCLUDED(mu_);
  // OK on the leader; on a follower UNAVAILABLE naming the leader (what its writes answer).
  absl::Status CheckWritable() ABSL_LOCKS_EXCLUDED(mu_);
  // Where a follower sends writers and workers ("" = unknown), from the leader lease.
  void SetLeaderHint(const std::string& leader) ABSL_LOCKS_EXCLUDED(mu_);
  // lorad is stopping: no job starts from now on (ranks already running drain and report).
  void StopScheduling();
  // Tells every watcher the server is going away; later calls fail with UNAVAILABLE.
  void Shutdown();
  JobManagerStats Stats();

 private:
  // CreateJob: the uploads the spec names exist and are the tenant's.
  absl::Status CheckSpecFiles(const lora::v1::JobSpec& spec, const std::string& tenant);
  // An idempotent retry must be the same request: ALREADY_EXISTS naming the first difference
  // between the stored job's spec and the retry's.
  static absl::Status SameRequest(const lora::v1::Job& existing, const lora::v1::Job& retry);
  struct RankSlot {
    std::string worker_id;
    bool assigned = false;  // the Assignment was sent
    bool exited = false;
    int exit_code = 0;
    int signal = 0;
    std::string exit_reason;
    bool lost = false;  // its worker was lost or came back without it
  };
  struct Runtime {
    std::vector<RankSlot> ranks;
    int master_port = 0;
    std::string master_addr;
    absl::Time cancel_deadline = absl::InfiniteFuture();
    absl::Time reattach_deadline = absl::InfiniteFuture();
    std::string failure_reason;  // from a rank's failure event
    absl::StatusCode failure_code = absl::StatusCode::kOk;
    std::string lost_reason;
    bool rank0_finished = false;
    // What every rank of the attempt is sent besides the spec, read from the store once for
    // the first rank's assignment: the others get the same files and the same checkpoint to
    // resume from, and the store is not read again per rank under the lock.
    std::optional<std::vector<lora::v1::File>> files;
    std::optional<std::vector<lora::v1::Checkpoint>> checkpoints;  // oldest first
  };
  struct ActiveJob {
    lora::v1::Job job;  // as stored
    Runtime rt;
  };
  // A rank of a replaced attempt (or a finished job) still stopping: its slot stays busy until
  // it exits or its worker is lost.
  using RankKey = std::tuple<std::string, int, int>;  // job, attempt, rank

  // Where an active job sits in the indexes below: what they are keyed by, copied out of the
  // job so that a change can be reindexed without keeping the old job around.
  struct IndexEntry {
    bool queued = false;
    std::string device, tenant;
    int priority = 0;
    int64_t create_time_us = 0;
    int ranks = 1;
  };
  struct QueueKey {  // a pool's order: priority (higher first), create time, id
    int neg_priority;
    int64_t create_time_us;
    std::string id;
    bool operator<(const QueueKey& o) const {
      return std::tie(neg_priority, create_time_us, id) <
             std::tie(o.neg_priority, o.create_time_us, o.id);
    }
  };
  static IndexEntry EntryOf(const lora::v1::Job& job);
  void Index(const std::string& id, const IndexEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unindex(const std::string& id, const IndexEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  JobManager(const Options& options, JobStore* store, ArtifactStore* artifacts);
  absl::Status Recover();
  // UNAVAILABLE on a follower (writes and workers go to the leader), OK on the leader.
  absl::Status CheckLeading() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Follower: delivers the watched jobs' events stored since the last call.
  void FollowWatched() ABSL_LOCKS_EXCLUDED(mu_);
  // A store error in a background decision (counted, logged at most every 10 s; the decision
  // is taken again).
  void LogStoreError(const lora::v1::Job& job, const absl::Status& s, const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static absl::StatusOr<std::string> JobId(const std::string& name);

  // Writes `update` durably, then publishes it (the active job, watchers). On error nothing
  // changed.
  absl::Status Commit(ActiveJob& a, JobUpdate update) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The second half of Commit, for an update already stored.
  void Publish(ActiveJob& a, JobUpdate update) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Plans and commits a transition of `next` (a copy of a.job with other changes).
  absl::Status Transition(ActiveJob& a, lora::v1::Job next, lora::v1::JobState to,
                          const std::string& reason, std::vector<lora::v1::JobEvent> extra = {})
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends `events` to the job's watchers, each serialized once for all of them.
  void Deliver(const std::string& job_id, std::vector<lora::v1::JobEvent> events,
               std::optional<std::chrono::steady_clock::time_point> published_at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job's watchers are told it ended (its last event went first) and forgotten.
  void CloseWatchers(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every watcher is ended resumably (shutdown, or a follower taking over) and forgotten.
  void EndAllWatchers() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job ended: ranks still running stop, watchers are told, it leaves memory.
  void Finish(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ranks of the attempt that have not exited move to draining_ (their slots stay busy).
  void ReleaseRanks(ActiveJob& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendCancel(const ActiveJob& a, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Asks the retry policy what becomes of the attempt and carries it out. On a store error the
  // job is marked and decided again by Tick.
  void Decide(ActiveJob& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Apply(ActiveJob& a, const Decision& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the ranks `worker_id` ran as lost (their worker is gone) and decides.
  void RanksLost(const std::string& worker_id, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLost(const std::string& worker_id, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Slots held on each worker: ranks of active attempts that have not exited, plus draining_.
  std::map<std::string, int> UsedSlots() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<WorkerSlots> ConnectedWorkerSlots() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Schedule() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Schedule for a job just created: the full pass only when its pool has a free slot.
  void ScheduleCreated(ActiveJob& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Start(ActiveJob& a, const std::vector<std::string>& workers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendAssignment(ActiveJob& a, int rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ActiveJob* FindRank(const lora::worker::v1::RankRef& ref, const std::string& worker_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // CreateJob's answer when the tenant has `queued` jobs, its limit: the job of a retried
  // request, else RESOURCE_EXHAUSTED.
  absl::StatusOr<lora::v1::Job> QueueLimitReached(const std::string& tenant,
                                                  const std::string& request_id, int queued,
                                                  const lora::v1::Job& job, bool* created)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The active job `id` (nullptr if it has ended or never was), after waiting for a CreateJob
  // that is still writing it.
  ActiveJob* FindActive(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies keep_latest to the job's stored checkpoints; returns the files to delete.
  std::vector<std::string> PruneCheckpoints(const lora::v1::Job& job)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DeleteArtifactFiles(const std::string& job_id, const std::vector<std::string>& paths);

  const Options options_;
  JobStore* const store_;
  ArtifactStore* const artifacts_;

  absl::Mutex mu_;
  std::map<std::string, ActiveJob> active_ ABSL_GUARDED_BY(mu_);
  // The queue as an ordered index per device pool, and the active jobs that are not queued
  // (their ranks hold slots), kept in step with active_ (Index / Unindex on every insert,
  // publish and finish). Schedule looks at the first kScheduleWindow jobs of each pool only,
  // and nothing on the create path walks the whole queue: a create costs the same with ten jobs
  // waiting or a hundred thousand.
  static constexpr size_t kScheduleWindow = 256;
  std::map<std::string, std::set<QueueKey>> queue_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> unqueued_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> queued_by_tenant_ ABSL_GUARDED_BY(mu_);
  // Jobs a CreateJob is writing to the store (without mu_, so that concurrent creates share
  // one group commit): they count against their tenant's queue limit already, and a call that
  // names one waits until it is indexed (FindActive) rather than take it for ended.
  std::set<std::string> creating_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> creating_by_tenant_ ABSL_GUARDED_BY(mu_);
  absl::CondVar created_;  // a job left creating_
  std::map<std::string, std::map<int, int>> queued_ranks_ ABSL_GUARDED_BY(mu_);  // device, ranks
  // Per pool, the last job the latest Schedule looked at when the window was full: jobs after
  // it are told they wait behind at least kScheduleWindow others (their stored reason may be
  // older than the queue ahead of them).
  std::map<std::string, QueueKey> window_end_ ABSL_GUARDED_BY(mu_);
  WorkerRegistry workers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::set<EventSubscriber*>> subscribers_ ABSL_GUARDED_BY(mu_);
  std::map<RankKey, std::string> draining_ ABSL_GUARDED_BY(mu_);  // -> worker id
  // Jobs whose last decision could not be committed (the store failed): decided again by Tick.
  std::set<std::string> undecided_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool leading_ ABSL_GUARDED_BY(mu_) = true;
  std::string leader_hint_ ABSL_GUARDED_BY(mu_);
  // Follower: the watched jobs and the last sequence delivered to their watchers.
  std::map<std::string, int64_t> followed_ ABSL_GUARDED_BY(mu_);
  bool draining_for_stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t store_write_failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time store_error_logged_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_JOB_MANAGER_H_
