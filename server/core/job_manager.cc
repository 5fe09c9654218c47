#include "server/core/job_manager.h"

#include <algorithm>
#include <random>

#include <unistd.h>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/data_roots.h"
#include "common/file_util.h"
#include "common/job_spec/job_spec.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "server/core/engine_event_translator.h"

namespace lora::server {
namespace {

using lora::v1::Job;
using lora::v1::JobEvent;
using lora::v1::JobState;
namespace wv1 = lora::worker::v1;

int WorldOf(const Job& job) { return std::max(1, job.spec().resources().world_size()); }

// Why the retry policy requeued an attempt, as a metrics label: the policy's own order (a lost
// worker first, then a rank killed by a signal; a planned stop is the one requeue that costs
// no attempt; what is left is a failure reported as UNAVAILABLE).
template <typename Runtime>
const char* RetryReason(const Runtime& rt, const Decision& d) {
  for (const auto& r : rt.ranks) {
    if (r.lost) return "worker_lost";
  }
  for (const auto& r : rt.ranks) {
    if (r.exited && r.signal != 0) return "killed";
  }
  return d.counts_as_attempt ? "unavailable" : "planned_restart";
}

}  // namespace

void JobManager::LogStoreError(const Job& job, const absl::Status& s, const char* what) {
  ++store_write_failures_;
  // A failing disk fails every tick: one line per 10 s, with how many were not printed.
  const absl::Time now = absl::Now();
  if (now - store_error_logged_at_ < absl::Seconds(10)) return;
  LogWarning(absl::StrCat("jobs/", job.id(), ": ", what, " not stored, will retry: ", s.ToString(),
                          " (", store_write_failures_, " failed writes so far)"))
      .Job(job.id())
      .Attempt(job.attempt());
  store_error_logged_at_ = now;
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(const Options& options,
                                                               JobStore* store,
                                                               ArtifactStore* artifacts) {
  std::unique_ptr<JobManager> m(new JobManager(options, store, artifacts));
  if (!options.follower) LORA_RETURN_IF_ERROR(m->Recover());
  return m;
}

JobManager::JobManager(const Options& options, JobStore* store, ArtifactStore* artifacts)
    : options_(options), store_(store), artifacts_(artifacts), leading_(!options.follower) {}

absl::Status JobManager::Recover() {
  LORA_ASSIGN_OR_RETURN(std::vector<Job> jobs, store_->ListActiveJobs());
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + options_.reattach_grace;
  for (Job& job : jobs) {
    ActiveJob a;
    if (job.state() != lora::v1::QUEUED && job.state() != lora::v1::PAUSED) {
      // Its ranks may still be running on workers that will reconnect.
      const int n = WorldOf(job);
      a.rt.ranks.resize(static_cast<size_t>(n));
      for (int r = 0; r < n; ++r) {
        RankSlot& slot = a.rt.ranks[static_cast<size_t>(r)];
        slot.worker_id = r < job.workers_size() ? job.workers(r) : "";
        slot.assigned = true;
      }
      a.rt.reattach_deadline = deadline;
      // What the attempt's ranks reported before the restart (stored with the job).
      a.rt.rank0_finished = job.result_reported();
      a.rt.failure_reason = job.error().message();
      a.rt.failure_code = static_cast<absl::StatusCode>(job.error().code());
      if (job.state() == lora::v1::CANCELLING || job.state() == lora::v1::PAUSING)
        a.rt.cancel_deadline = deadline + options_.cancel_grace;
    }
    const std::string id = job.id();
    Index(id, EntryOf(job));
    a.job = std::move(job);
    active_.emplace(id, std::move(a));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> JobManager::JobId(const std::string& name) {
  if (!absl::StartsWith(name, "jobs/") || name.size() <= 5 ||
      name.find('/', 5) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("name: '", name, "' is not of the form jobs/{id}"));
  }
  return name.substr(5);
}

// ---------------------------------------------------------------- committing changes

absl::Status JobManager::Commit(ActiveJob& a, JobUpdate update) {
  LORA_RETURN_IF_ERROR(store_->UpdateJob(update.job, update.events));
  Publish(a, std::move(update));
  return absl::OkStatus();
}

void JobManager::Publish(ActiveJob& a, JobUpdate update) {
  const IndexEntry before = EntryOf(a.job);
  a.job = std::move(update.job);
  if (before.queued != (a.job.state() == lora::v1::QUEUED)) {
    Unindex(a.job.id(), before);
    if (!IsTerminal(a.job.state())) Index(a.job.id(), EntryOf(a.job));
  }
  Deliver(a.job.id(), std::move(update.events), std::chrono::steady_clock::now());
  if (IsTerminal(a.job.state())) {
    if (options_.observer.job_finished) options_.observer.job_finished(a.job);
    Finish(a.job.id());
  }
}

absl::Status JobManager::Transition(ActiveJob& a, Job next, JobState to, const std::string& reason,
                                    std::vector<JobEvent> extra) {
  LORA_ASSIGN_OR_RETURN(JobUpdate update,
                        PlanTransition(std::move(next), to, reason, std::move(extra), NowMicros()));
  return Commit(a, std::move(update));
}

JobManager::IndexEntry JobManager::EntryOf(const Job& job) {
  return IndexEntry{job.state() == lora::v1::QUEUED, job.spec().resources().device(), job.tenant(),
                    job.spec().job().priority(),     ToMicros(job.create_time()),     WorldOf(job)};
}

void JobManager::Index(const std::string& id, const IndexEntry& e) {
  if (!e.queued) {
    unqueued_.insert(id);
    return;
  }
  queue_[e.device].insert(QueueKey{-e.priority, e.create_time_us, id});
  ++queued_by_tenant_[e.tenant];
  ++queued_ranks_[e.device][e.ranks];
}

void JobManager::Unindex(const std::string& id, const IndexEntry& e) {
  if (!e.queued) {
    unqueued_.erase(id);
    return;
  }
  auto pool = queue_.find(e.device);
  if (pool != queue_.end()) {
    pool->second.erase(QueueKey{-e.priority, e.create_time_us, id});
    if (pool->second.empty()) queue_.erase(pool);
  }
  auto t = queued_by_tenant_.find(e.tenant);
  if (t != queued_by_tenant_.end() && --t->second <= 0) queued_by_tenant_.erase(t);
  auto r = queued_ranks_.find(e.device);
  if (r != queued_ranks_.end()) {
    auto c = r->second.find(e.ranks);
    if (c != r->second.end() && --c->second <= 0) r->second.erase(c);
    if (r->second.empty()) queued_ranks_.erase(r);
  }
}

JobManager::ActiveJob* JobManager::FindActive(const std::string& id) {
  // Bounded by one group commit: the creator indexes the job as soon as its write returns.
  while (creating_.count(id) > 0) created_.Wait(&mu_);
  auto it = active_.find(id);
  return it == active_.end() ? nullptr : &it->second;
}

void JobManager::Finish(const std::string& job_id_ref) {
  const std::string job_id = job_id_ref;  // the job (and its id) is erased below
  auto it = active_.find(job_id);
  if (it != active_.end()) {
    // Ranks still running (a failed peer's survivors, a cancel past its deadline) stop now.
    SendCancel(it->second, absl::StrCat("jobs/", job_id, " is ",
                                        lora::v1::JobState_Name(it->second.job.state())));
    ReleaseRanks(it->second);
    Unindex(job_id, EntryOf(it->second.job));
    active_.erase(it);
  }
  undecided_.erase(job_id);
  CloseWatchers(job_id);
}

void JobManager::Deliver(const std::string& job_id, std::vector<JobEvent> events,
                         std::optional<std::chrono::steady_clock::time_point> published_at) {
  auto it = subscribers_.find(job_id);
  if (it == subscribers_.end() || events.empty()) return;
  std::vector<std::shared_ptr<const PublishedEvent>> published;
  for (JobEvent& e : events) {
    auto p = std::make_shared<PublishedEvent>();
    p->published_at = published_at;
    p->wire = e.SerializeAsString();
    p->event = std::move(e);
    published.push_back(std::move(p));
  }
  for (EventSubscriber* sub : it->second) {
    for (const auto& e : published) sub->OnEvent(e);
  }
}

void JobManager::CloseWatchers(const std::string& job_id) {
  auto subs = subscribers_.find(job_id);
  if (subs != subscribers_.end()) {
    for (EventSubscriber* sub : subs->second) sub->OnClose(false);
    subscribers_.erase(subs);
  }
  followed_.erase(job_id);
}

void JobManager::EndAllWatchers() {
  for (auto& [id, subs] : subscribers_) {
    for (EventSubscriber* sub : subs) sub->OnClose(true);
  }
  subscribers_.clear();
  followed_.clear();
}

void JobManager::ReleaseRanks(ActiveJob& a) {
  for (size_t r = 0; r < a.rt.ranks.size(); ++r) {
    const RankSlot& s = a.rt.ranks[r];
    if (s.worker_id.empty() || !s.assigned || s.exited || s.lost) continue;
    draining_[{a.job.id(), a.job.attempt(), static_cast<int>(r)}] = s.worker_id;
  }
  a.rt = Runtime();
}

void JobManager::SendCancel(const ActiveJob& a, const std::string& reason) {
  for (size_t r = 0; r < a.rt.ranks.size(); ++r) {
    const RankSlot& s = a.rt.ranks[r];
    if (!s.assigned || s.exited || s.lost) continue;
    WorkerChannel* channel = workers_.Channel(s.worker_id);
    if (channel == nullptr) continue;
    wv1::ControllerMessage msg;
    wv1::Cancel* c = msg.mutable_cancel();
    c->mutable_ref()->set_job_id(a.job.id());
    c->mutable_ref()->set_attempt(a.job.attempt());
    c->mutable_ref()->set_rank(static_cast<int>(r));
    c->set_grace_ms(static_cast<int>(absl::ToInt64Milliseconds(options_.cancel_grace)));
    c->set_reason(reason);
    channel->Send(msg);
  }
}

// ---------------------------------------------------------------- decisions

void JobManager::Decide(ActiveJob& a) {
  AttemptView v;
  v.state = a.job.state();
  for (const RankSlot& s : a.rt.ranks) {
    v.ranks.push_back(RankView{s.exited, s.exit_code, s.signal, s.exit_reason, s.lost});
  }
  v.rank0_finished = a.rt.rank0_finished;
  v.failure_reason = a.rt.failure_reason;
  v.failure_code = a.rt.failure_code;
  v.lost_reason = a.rt.lost_reason;
  v.cancel_deadline_passed = absl::Now() > a.rt.cancel_deadline;
  v.attempt = a.job.attempt();
  v.max_attempts = a.job.max_attempts();
  v.restarts = a.job.restarts();
  v.latest_checkpoint_step = a.job.latest_checkpoint_step();
  const Decision d = DecideAttempt(v);
  if (d.outcome == Outcome::kWait) {
    undecided_.erase(a.job.id());
    return;
  }
  const std::string id = a.job.id();
  const Job before = a.job;
  if (absl::Status s = Apply(a, d); !s.ok()) {
    LogStoreError(before, s, "the attempt's outcome");
    undecided_.insert(id);
    return;
  }
  undecided_.erase(id);
}

absl::Status JobManager::Apply(ActiveJob& a, const Decision& d) {
  Job next = a.job;
  switch (d.outcome) {
    case Outcome::kWait:
      return absl::OkStatus();
    case Outcome::kSucceeded:
      return Transition(a, std::move(next), lora::v1::SUCCEEDED, d.reason);
    case Outcome::kCancelled:
      return Transition(a, std::move(next), lora::v1::CANCELLED, d.reason);
    case Outcome::kPaused: {
      // The stopped attempt is over: the next one (after ResumeJob) is a planned restart.
      next.set_attempt(next.attempt() + 1);
      next.set_restarts(next.restarts() + 1);
      next.clear_workers();
      next.clear_error();
      next.clear_result_reported();
      next.clear_ranks();
      next.clear_rank_event_sequences();
      LORA_ASSIGN_OR_RETURN(JobUpdate update, PlanTransition(std::move(next), lora::v1::PAUSED,
                                                             d.reason, {}, NowMicros()));
      LORA_RETURN_IF_ERROR(store_->UpdateJob(update.job, update.events));
      SendCancel(a, d.reason);  // any rank still running belongs to the finished attempt
      ReleaseRanks(a);
      Publish(a, std::move(update));
      return absl::OkStatus();
    }
    case Outcome::kFailed: {
      next.mutable_error()->set_code(static_cast<int>(d.code));
      next.mutable_error()->set_message(d.reason);
      return Transition(a, std::move(next), lora::v1::FAILED, d.reason);
    }
    case Outcome::kRequeue: {
      const char* retry_reason = RetryReason(a.rt, d);  // before ReleaseRanks resets a.rt
      next.set_attempt(next.attempt() + 1);
      if (!d.counts_as_attempt) next.set_restarts(next.restarts() + 1);
      next.clear_workers();
      next.clear_error();  // the attempt's failure is in the state change's reason
      next.clear_result_reported();
      next.clear_ranks();
      next.clear_rank_event_sequences();
      // A failure is also an error in the job's log (a planned restart only news), so the rank
      // or worker that caused it is named where people look.
      JobEvent log;
      log.mutable_log()->set_level(d.counts_as_attempt ? "error" : "info");
      log.mutable_log()->set_message(d.reason);
      LORA_ASSIGN_OR_RETURN(JobUpdate update, PlanTransition(std::move(next), lora::v1::QUEUED,
                                                             d.reason, {log}, NowMicros()));
      LORA_RETURN_IF_ERROR(store_->UpdateJob(update.job, update.events));
      // Stored: now the old attempt's ranks stop (named by its attempt number, so before the
      // new job is published), and the job is published as queued.
      SendCancel(a, d.reason);
      ReleaseRanks(a);
      Publish(a, std::move(update));
      if (options_.observer.job_retried)
        options_.observer.job_retried(a.job, retry_reason, d.reason);
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

void JobManager::RanksLost(const std::string& worker_id, const std::string& reason) {
  std::vector<std::string> affected;
  for (const std::string& id : unqueued_) {
    auto found = active_.find(id);
    if (found == active_.end()) continue;
    ActiveJob& a = found->second;
    bool hit = false;
    for (RankSlot& s : a.rt.ranks) {
      if (s.worker_id == worker_id && s.assigned && !s.exited && !s.lost) {
        s.lost = true;
        hit = true;
      }
    }
    if (hit) {
      if (a.rt.lost_reason.empty()) a.rt.lost_reason = reason;
      affected.push_back(id);
    }
  }
  for (const std::string& id : affected) {
    auto it = active_.find(id);
    if (it != active_.end()) Decide(it->second);
  }
}

void JobManager::WorkerLost(const std::string& worker_id, const std::string& reason) {
  if (options_.observer.worker_lost) options_.observer.worker_lost(worker_id, reason);
  if (std::shared_ptr<WorkerChannel> channel = workers_.Remove(worker_id)) channel->Close();
  for (auto it = draining_.begin(); it != draining_.end();) {
    it = it->second == worker_id ? draining_.erase(it) : std::next(it);
  }
  RanksLost(worker_id, absl::StrCat("worker ", worker_id, " lost (", reason, ")"));
}

// ---------------------------------------------------------------- scheduling and ticks

void JobManager::SendAssignment(ActiveJob& a, int rank) {
  RankSlot& slot = a.rt.ranks[static_cast<size_t>(rank)];
  WorkerChannel* channel = workers_.Channel(slot.worker_id);
  if (channel == nullptr) return;  // lost meanwhile; Tick handles it
  wv1::ControllerMessage msg;
  wv1::Assignment* as = msg.mutable_assignment();
  as->mutable_ref()->set_job_id(a.job.id());
  as->mutable_ref()->set_attempt(a.job.attempt());
  as->mutable_ref()->set_rank(rank);
  as->set_world_size(static_cast<int>(a.rt.ranks.size()));
  as->set_master_addr(a.rt.master_addr);
  as->set_master_port(rank == 0 ? 0 : a.rt.master_port);
  *as->mutable_spec() = a.job.spec();
  if (options_.resolve_files && !a.rt.files) {
    // Checked at CreateJob and kept while the job runs (FileService refuses to delete a file a
    // running job names); should it still be gone, the worker fails the rank naming it.
    auto files = options_.resolve_files(a.job.tenant(), a.job.spec());
    if (files.ok()) a.rt.files = std::move(*files);
  }
  if (a.rt.files) {
    for (const auto& f : *a.rt.files) *as->add_files() = f;
  }
  if (a.job.latest_checkpoint_step() > 0 && !a.rt.checkpoints) {
    auto checkpoints = store_->ListCheckpoints(a.job.id());
    if (checkpoints.ok()) a.rt.checkpoints = std::move(*checkpoints);
  }
  if (a.rt.checkpoints && !a.rt.checkpoints->empty()) {
    // Newest first: the worker falls back to an older one when the newest does not verify.
    *as->mutable_resume() = a.rt.checkpoints->back();
    for (auto it = a.rt.checkpoints->rbegin() + 1; it != a.rt.checkpoints->rend(); ++it)
      *as->add_fallback_resume() = *it;
  }
  slot.assigned = true;
  if (rank < a.job.ranks_size()) a.job.mutable_ranks(rank)->set_state(lora::v1::RANK_ASSIGNED);
  channel->Send(msg);
}

std::map<std::string, int> JobManager::UsedSlots() const {
  std::map<std::string, int> used;
  for (const std::string& id : unqueued_) {
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    for (const RankSlot& s : it->second.rt.ranks) {
      if (!s.worker_id.empty() && !s.exited && !s.lost) ++used[s.worker_id];
    }
  }
  for (const auto& [key, worker] : draining_) ++used[worker];
  return used;
}

std::vector<WorkerSlots> JobManager::ConnectedWorkerSlots() const {
  const std::map<std::string, int> used = UsedSlots();
  std::vector<WorkerSlots> out;
  for (const auto& [id, w] : workers_.all()) {
    if (!w.channel || w.draining) continue;  // a draining worker takes no new ranks
    auto u = used.find(id);
    out.push_back(WorkerSlots{id, w.capabilities.device(), w.capabilities.slots(),
                              u == used.end() ? 0 : u->second});
  }
  return out;
}

void JobManager::ScheduleCreated(ActiveJob& a) {
  // A new job can start only on a free slot of its pool. With none (every worker busy, or none
  // of its device: the backlog case) scheduling would change nothing but the new job's own
  // reason, so only that is set, and a create costs the same however long the queue is; the
  // next Tick refines the reason against the jobs ahead of it.
  const std::string& device = a.job.spec().resources().device();
  const std::vector<WorkerSlots> workers = ConnectedWorkerSlots();
  int free = 0;
  for (const WorkerSlots& w : workers) {
    if (w.device == device) free += std::max(0, w.slots - w.used);
  }
  if (free > 0) {
    Schedule();
    return;
  }
  const std::map<std::string, DevicePool> pools = PoolsOf(workers);
  auto pool = pools.find(device);
  a.job.set_queue_reason(QueueReason(device, WorldOf(a.job),
                                     pool == pools.end() ? DevicePool{} : pool->second, 0,
                                     static_cast<int>(workers.size())));
}

void JobManager::Schedule() {
  if (shutdown_ || draining_for_stop_) return;
  SchedulerInput in;
  std::vector<ActiveJob*> queued;  // parallel to in.queued
  // Each pool's head: within a pool the first job that cannot start holds the line, so a job
  // further back could only start past heads waiting for their tenant's quota; the window
  // bounds how many of those one pass looks past.
  window_end_.clear();
  for (const auto& [device, keys] : queue_) {
    size_t n = 0;
    for (const QueueKey& key : keys) {
      if (n++ == kScheduleWindow) {
        window_end_[device] = *std::prev(keys.find(key));
        break;
      }
      auto it = active_.find(key.id);
      if (it == active_.end()) continue;
      ActiveJob& a = it->second;
      queued.push_back(&a);
      in.queued.push_back(QueuedJob{key.id, a.job.tenant(), device, a.job.spec().job().priority(),
                                    key.create_time_us, WorldOf(a.job)});
    }
  }
  if (in.queued.empty()) return;
  for (const std::string& id : unqueued_) {
    auto it = active_.find(id);
    if (it != active_.end()) {
      in.running_ranks_by_tenant[it->second.job.tenant()] +=
          static_cast<int>(it->second.rt.ranks.size());
    }
  }
  in.workers = ConnectedWorkerSlots();
  in.max_running_ranks_per_tenant = options_.max_running_ranks_per_tenant;
  SchedulerOutput out = ScheduleJobs(in);
  // Queue reasons are display state, kept in memory and stored with the job's next change.
  for (size_t i = 0; i < queued.size(); ++i) {
    if (!out.queue_reasons[i].empty())
      queued[i]->job.set_queue_reason(std::move(out.queue_reasons[i]));
  }
  for (const Placement& p : out.placements) {
    ActiveJob& a = *queued[p.job];
    if (absl::Status s = Start(a, p.workers); !s.ok()) {
      // Later placements assumed this one's slots; all are decided again on the next tick.
      LogStoreError(a.job, s, "the start");
      break;
    }
  }
}

absl::Status JobManager::Start(ActiveJob& a, const std::vector<std::string>& workers) {
  const int n = static_cast<int>(workers.size());
  Job next = a.job;
  next.clear_workers();
  next.clear_ranks();
  next.clear_rank_event_sequences();
  next.clear_result_reported();
  for (int r = 0; r < n; ++r) {
    next.add_workers(workers[static_cast<size_t>(r)]);
    lora::v1::RankStatus* status = next.add_ranks();
    status->set_rank(r);
    status->set_worker_id(workers[static_cast<size_t>(r)]);
    next.add_rank_event_sequences(0);
  }
  LORA_RETURN_IF_ERROR(Transition(
      a, std::move(next), lora::v1::STARTING,
      absl::StrCat("assigned to ", n, n == 1 ? " worker slot: " : " worker slots: ", workers[0],
                   n > 1 ? ", ..." : "")));
  // Stored: the ranks now hold their slots.
  a.rt = Runtime();
  a.rt.ranks.resize(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r)
    a.rt.ranks[static_cast<size_t>(r)].worker_id = workers[static_cast<size_t>(r)];
  const WorkerRegistry::Worker* w0 = workers_.Find(workers[0]);
  a.rt.master_addr = w0 != nullptr ? w0->address : "";
  SendAssignment(a, 0);
  return absl::OkStatus();
}

void JobManager::Tick() {
  if (!leading()) {
    FollowWatched();
    return;
  }
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  const absl::Time now = absl::Now();
  for (const auto& [id, why] : workers_.Expired(now, options_.heartbeat_timeout))
    WorkerLost(id, why);
  std::vector<std::string> to_decide(undecided_.begin(), undecided_.end());
  // Deadlines belong to attempts that hold ranks: the unqueued jobs, not the backlog.
  for (const std::string& id : unqueued_) {
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    ActiveJob& a = it->second;
    if ((a.job.state() == lora::v1::CANCELLING || a.job.state() == lora::v1::PAUSING) &&
        now > a.rt.cancel_deadline)
      to_decide.push_back(id);
    if (now > a.rt.reattach_deadline) {
      a.rt.reattach_deadline = absl::InfiniteFuture();
      bool orphaned = false;
      for (RankSlot& s : a.rt.ranks) {
        if (!s.exited && !s.lost && workers_.Channel(s.worker_id) == nullptr) {
          s.lost = true;
          orphaned = true;
        }
      }
      if (orphaned) {
        if (a.rt.lost_reason.empty())
          a.rt.lost_reason = "its workers did not reconnect after a controller restart";
        to_decide.push_back(id);
      }
    }
  }
  for (const std::string& id : to_decide) {
    auto it = active_.find(id);
    if (it != active_.end()) Decide(it->second);
  }
  Schedule();
}

void JobManager::StopScheduling() {
  absl::MutexLock lock(&mu_);
  draining_for_stop_ = true;
}

void JobManager::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  // End worker streams now so the gRPC server does not wait out its shutdown deadline on them.
  for (const auto& [id, w] : workers_.all()) {
    if (w.channel) w.channel->Close();
  }
  EndAllWatchers();
}

JobManagerStats JobManager::Stats() {
  absl::MutexLock lock(&mu_);
  JobManagerStats s;
  // From the indexes: the cost does not grow with the backlog.
  for (const auto& [device, keys] : queue_) s.jobs_by_state[lora::v1::QUEUED] += keys.size();
  for (const std::string& id : unqueued_) {
    auto it = active_.find(id);
    if (it != active_.end()) ++s.jobs_by_state[it->second.job.state()];
  }
  const std::vector<WorkerSlots> connected = ConnectedWorkerSlots();
  for (const WorkerSlots& w : connected) {
    ++s.workers_connected;
    s.workers_busy_slots += w.used;
    s.workers_total_slots += w.slots;
  }
  for (const auto& [id, subs] : subscribers_) s.watchers += static_cast<int64_t>(subs.size());
  const std::map<std::string, DevicePool> pools = PoolsOf(connected);
  for (const auto& [device, by_ranks] : queued_ranks_) {
    for (const auto& [ranks, count] : by_ranks) {
      QueuedJob q;
      q.device = device;
      q.ranks = ranks;
      if (Unschedulable(q, pools)) s.unschedulable_by_device[device] += count;
    }
  }
  s.undecided_jobs = static_cast<int64_t>(undecided_.size());
  s.store_write_failures = store_write_failures_;
  return s;
}

}  // namespace lora::server
