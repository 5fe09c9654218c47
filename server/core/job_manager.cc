#include "server/core/job_manager.h"

#include <algorithm>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/data_roots.h"
#include "common/job_spec/job_spec.h"
#include "common/nesting.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace lora::server {
namespace {

using lora::v1::Job;
using lora::v1::JobEvent;
using lora::v1::JobState;
namespace wv1 = lora::worker::v1;

constexpr int kExitInterrupted = 75;

std::string NewJobId() {
  static std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(NowMicros()));
  static absl::Mutex mu;
  absl::MutexLock lock(&mu);
  static const char* kAlphabet = "0123456789abcdefghjkmnpqrstvwxyz";  // Crockford-ish base32
  std::string id;
  uint64_t v = rng();
  for (int i = 0; i < 12; ++i, v >>= 5) id += kAlphabet[v & 31];
  return id;
}

bool Allowed(JobState from, JobState to) {
  using lora::v1::CANCELLED;
  using lora::v1::CANCELLING;
  using lora::v1::FAILED;
  using lora::v1::QUEUED;
  using lora::v1::RUNNING;
  using lora::v1::STARTING;
  using lora::v1::SUCCEEDED;
  switch (from) {
    case lora::v1::JOB_STATE_UNSPECIFIED:
      return to == QUEUED;
    case QUEUED:
      return to == STARTING || to == CANCELLED || to == FAILED;
    case STARTING:
      return to == RUNNING || to == QUEUED || to == CANCELLING || to == FAILED || to == SUCCEEDED;
    case RUNNING:
      return to == SUCCEEDED || to == FAILED || to == CANCELLING || to == QUEUED;
    case CANCELLING:
      return to == CANCELLED || to == SUCCEEDED || to == FAILED;
    default:
      return false;
  }
}

int CodeFromName(const std::string& name) {
  static const std::pair<const char*, absl::StatusCode> kCodes[] = {
      {"INVALID_ARGUMENT", absl::StatusCode::kInvalidArgument},
      {"NOT_FOUND", absl::StatusCode::kNotFound},
      {"FAILED_PRECONDITION", absl::StatusCode::kFailedPrecondition},
      {"DATA_LOSS", absl::StatusCode::kDataLoss},
      {"RESOURCE_EXHAUSTED", absl::StatusCode::kResourceExhausted},
      {"UNIMPLEMENTED", absl::StatusCode::kUnimplemented},
      {"PERMISSION_DENIED", absl::StatusCode::kPermissionDenied},
      {"UNAVAILABLE", absl::StatusCode::kUnavailable},
      {"ABORTED", absl::StatusCode::kAborted},
      {"CANCELLED", absl::StatusCode::kCancelled}};
  for (const auto& [n, c] : kCodes) {
    if (name == n) return static_cast<int>(c);
  }
  return static_cast<int>(absl::StatusCode::kInternal);
}

double Num(const nlohmann::json& j, const char* key, double fallback = 0) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}
int64_t Int(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<int64_t>() : 0;
}

std::string PageToken(const Job& job) {
  return absl::WebSafeBase64Escape(absl::StrCat(ToMicros(job.create_time()), ":", job.id()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(const Options& options,
                                                               JobStore* store,
                                                               ArtifactStore* artifacts) {
  std::unique_ptr<JobManager> m(new JobManager(options, store, artifacts));
  LORA_RETURN_IF_ERROR(m->Recover());
  return m;
}

JobManager::JobManager(const Options& options, JobStore* store, ArtifactStore* artifacts)
    : options_(options), store_(store), artifacts_(artifacts) {}

absl::Status JobManager::Recover() {
  LORA_ASSIGN_OR_RETURN(std::vector<Job> jobs, store_->ListActiveJobs());
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + options_.reattach_grace;
  for (Job& job : jobs) {
    ActiveJob a;
    if (job.state() != lora::v1::QUEUED) {
      // Its ranks may still be running on workers that will reconnect.
      const int n = std::max(1, job.spec().resources().world_size());
      a.rt.ranks.resize(static_cast<size_t>(n));
      for (int r = 0; r < n; ++r) {
        RankSlot& slot = a.rt.ranks[static_cast<size_t>(r)];
        slot.worker_id = r < job.workers_size() ? job.workers(r) : "";
        slot.assigned = slot.accepted = true;
        slot.last_worker_seq =
            r < job.rank_event_sequences_size() ? job.rank_event_sequences(r) : 0;
      }
      a.rt.reattach_deadline = deadline;
    }
    const std::string id = job.id();
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

JobEvent JobManager::StateEvent(Job& job, JobState to, const std::string& reason) {
  JobEvent e;
  e.mutable_state_change()->set_from(job.state());
  e.mutable_state_change()->set_to(to);
  e.mutable_state_change()->set_reason(reason);
  return e;
}

absl::Status JobManager::Commit(ActiveJob& a, std::vector<JobEvent> events) {
  Job before = a.job;
  const auto now = FromMicros(NowMicros());
  a.job.clear_rank_event_sequences();
  for (const RankSlot& s : a.rt.ranks) a.job.add_rank_event_sequences(s.last_worker_seq);
  for (JobEvent& e : events) {
    e.set_sequence(a.job.last_sequence() + 1);
    *e.mutable_time() = now;
    a.job.set_last_sequence(e.sequence());
  }
  absl::Status s = store_->UpdateJob(a.job, events);
  if (!s.ok()) {
    a.job = std::move(before);
    return s;
  }
  auto it = subscribers_.find(a.job.id());
  if (it != subscribers_.end()) {
    for (EventSubscriber* sub : it->second) {
      for (const JobEvent& e : events) sub->OnEvent(e);
    }
  }
  return absl::OkStatus();
}

absl::Status JobManager::Transition(ActiveJob& a, JobState to, const std::string& reason,
                                    std::vector<JobEvent> extra) {
  Job& job = a.job;
  if (!Allowed(job.state(), to)) {
    return absl::FailedPreconditionError(absl::StrCat("jobs/", job.id(), " cannot go from ",
                                                      lora::v1::JobState_Name(job.state()), " to ",
                                                      lora::v1::JobState_Name(to)));
  }
  extra.insert(extra.begin(), StateEvent(job, to, reason));
  job.set_state(to);
  if (to != lora::v1::QUEUED) job.clear_queue_reason();
  const auto now = FromMicros(NowMicros());
  if (to == lora::v1::STARTING && !job.has_start_time()) *job.mutable_start_time() = now;
  if (IsTerminal(to)) *job.mutable_end_time() = now;
  LORA_RETURN_IF_ERROR(Commit(a, std::move(extra)));
  if (IsTerminal(to)) Finish(job.id());
  return absl::OkStatus();
}

void JobManager::Finish(std::string job_id) {  // by value: the job (and its id) is erased below
  auto it = active_.find(job_id);
  if (it != active_.end()) {
    ReleaseSlots(it->second);
    active_.erase(it);
  }
  auto subs = subscribers_.find(job_id);
  if (subs != subscribers_.end()) {
    for (EventSubscriber* sub : subs->second) sub->OnClose(false);
    subscribers_.erase(subs);
  }
}

void JobManager::ReleaseSlots(ActiveJob& a) {
  for (size_t r = 0; r < a.rt.ranks.size(); ++r) {
    RankSlot& s = a.rt.ranks[r];
    if (s.slot_released || s.worker_id.empty() || !s.assigned) continue;
    s.slot_released = true;
    auto w = workers_.find(s.worker_id);
    if (w == workers_.end()) continue;
    if (s.exited) {
      w->second.used_slots = std::max(0, w->second.used_slots - 1);
    } else {
      // Still stopping: the slot frees when it exits (or its worker is lost).
      draining_[{a.job.id(), a.job.attempt(), static_cast<int>(r)}] = s.worker_id;
    }
  }
}

void JobManager::SendCancel(ActiveJob& a, const std::string& reason) {
  for (size_t r = 0; r < a.rt.ranks.size(); ++r) {
    const RankSlot& s = a.rt.ranks[r];
    if (!s.assigned || s.exited) continue;
    auto w = workers_.find(s.worker_id);
    if (w == workers_.end() || !w->second.channel) continue;
    wv1::ControllerMessage msg;
    wv1::Cancel* c = msg.mutable_cancel();
    c->mutable_ref()->set_job_id(a.job.id());
    c->mutable_ref()->set_attempt(a.job.attempt());
    c->mutable_ref()->set_rank(static_cast<int>(r));
    c->set_grace_ms(static_cast<int>(absl::ToInt64Milliseconds(options_.cancel_grace)));
    c->set_reason(reason);
    w->second.channel->Send(msg);
  }
}

void JobManager::RetryOrFail(ActiveJob& a, const std::string& reason) {
  SendCancel(a, reason);
  ReleaseSlots(a);
  Job& job = a.job;
  if (job.attempt() < job.max_attempts()) {
    const int next = job.attempt() + 1;
    job.set_attempt(next);
    job.clear_workers();
    job.clear_error();  // the attempt's failure is in the state change's reason
    job.clear_ranks();
    a.rt = Runtime();
    (void)Transition(
        a, lora::v1::QUEUED,
        absl::StrCat("retrying (attempt ", next, " of ", job.max_attempts(), "): ", reason,
                     job.latest_checkpoint_step() > 0
                         ? absl::StrCat("; resuming from step ", job.latest_checkpoint_step())
                         : ""));
    return;
  }
  job.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kUnavailable));
  job.mutable_error()->set_message(
      absl::StrCat(reason, "; giving up after ", job.attempt(), " attempts"));
  (void)Transition(a, lora::v1::FAILED, job.error().message());
}

void JobManager::MaybeComplete(ActiveJob& a) {
  for (const RankSlot& s : a.rt.ranks) {
    if (!s.exited) return;
  }
  if (a.job.state() == lora::v1::CANCELLING) {
    const bool completed = a.rt.rank0_finished && a.rt.ranks[0].exit_code == 0;
    (void)Transition(a, completed ? lora::v1::SUCCEEDED : lora::v1::CANCELLED,
                     completed ? "finished before the cancel took effect" : "cancelled");
    return;
  }
  if (a.rt.rank0_finished) {
    (void)Transition(a, lora::v1::SUCCEEDED, "finished");
  } else {
    a.job.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kInternal));
    a.job.mutable_error()->set_message("ranks exited without reporting a result");
    (void)Transition(a, lora::v1::FAILED, a.job.error().message());
  }
}

// ---------------------------------------------------------------- public API

absl::StatusOr<Job> JobManager::CreateJob(lora::v1::JobSpec spec, const std::string& request_id,
                                          bool* created, const std::string& tenant) {
  if (request_id.size() > 128)
    return absl::InvalidArgumentError("request_id: must be at most 128 characters");
  ApplyJobSpecDefaults(&spec);
  LORA_RETURN_IF_ERROR(ValidateJobSpec(spec));
  LORA_RETURN_IF_ERROR(CheckSpecPaths(spec, options_.declared_data_roots));
  const int ranks = std::max(1, spec.resources().world_size());
  if (options_.max_running_ranks_per_tenant > 0 && ranks > options_.max_running_ranks_per_tenant) {
    return absl::ResourceExhaustedError(
        absl::StrCat("resources.world_size: ", ranks, " ranks, but tenant '", tenant,
                     "' may run at most ", options_.max_running_ranks_per_tenant, " at once"));
  }
  Job job;
  job.set_tenant(tenant);
  job.set_id(NewJobId());
  job.set_name(absl::StrCat("jobs/", job.id()));
  job.set_request_id(request_id);
  job.set_display_name(spec.job().name());
  job.set_kind(spec.job().kind());
  *job.mutable_spec() = std::move(spec);
  *job.mutable_create_time() = FromMicros(NowMicros());
  job.set_attempt(1);
  job.set_max_attempts(options_.max_attempts);
  job.mutable_progress()->set_total_steps(
      job.kind() == lora::v1::JOB_KIND_TRAIN ? job.spec().training().steps() : 0);
  JobEvent first = StateEvent(job, lora::v1::QUEUED, "created");
  job.set_state(lora::v1::QUEUED);
  first.set_sequence(1);
  *first.mutable_time() = job.create_time();
  job.set_last_sequence(1);

  absl::MutexLock lock(&mu_);
  if (shutdown_) return absl::UnavailableError("lorad is shutting down");
  if (options_.max_queued_jobs_per_tenant > 0) {
    int queued = 0;
    for (const auto& [id, a] : active_) {
      if (a.job.tenant() == tenant && a.job.state() == lora::v1::QUEUED) ++queued;
    }
    if (queued >= options_.max_queued_jobs_per_tenant) {
      // A retry of a request that already created its job still gets that job.
      if (!request_id.empty()) {
        auto existing = store_->FindJobByRequestId(tenant, request_id);
        if (existing.ok()) {
          *created = false;
          auto it = active_.find(existing->id());
          return it != active_.end() ? it->second.job : *existing;
        }
      }
      return absl::ResourceExhaustedError(
          absl::StrCat("tenant '", tenant, "' has ", queued,
                       " queued jobs, its limit; wait for one to start "
                       "or cancel one"));
    }
  }
  Job existing;
  absl::Status s = store_->InsertJob(job, first, &existing);
  if (absl::IsAlreadyExists(s)) {
    *created = false;
    auto it = active_.find(existing.id());
    return it != active_.end() ? it->second.job : existing;
  }
  LORA_RETURN_IF_ERROR(s);
  *created = true;
  ActiveJob a;
  a.job = job;
  active_.emplace(job.id(), std::move(a));
  Schedule();
  auto it = active_.find(job.id());
  return it != active_.end() ? it->second.job : job;
}

absl::StatusOr<Job> JobManager::GetJob(const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(id);
    if (it != active_.end()) return it->second.job;
  }
  return store_->GetJob(id);
}

absl::StatusOr<lora::v1::ListJobsResponse> JobManager::ListJobs(
    const lora::v1::ListJobsRequest& request, const std::optional<std::string>& tenant) {
  if (request.page_size() < 0) return absl::InvalidArgumentError("page_size: must be >= 0");
  ListJobsQuery q;
  q.tenant = tenant;
  q.limit = request.page_size() == 0 ? 50 : std::min(request.page_size(), 1000);
  for (int s : request.states()) q.states.push_back(static_cast<JobState>(s));
  for (int k : request.kinds()) q.kinds.push_back(static_cast<lora::v1::JobKind>(k));
  if (!request.page_token().empty()) {
    std::string decoded;
    std::vector<std::string> parts;
    int64_t us = 0;
    if (absl::WebSafeBase64Unescape(request.page_token(), &decoded))
      parts = absl::StrSplit(decoded, absl::MaxSplits(':', 1));
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &us)) {
      return absl::InvalidArgumentError("page_token: not a token this server issued");
    }
    q.before = std::make_pair(us, parts[1]);
  }
  ++q.limit;  // one more to know whether a next page exists
  LORA_ASSIGN_OR_RETURN(std::vector<Job> jobs, store_->ListJobs(q));
  lora::v1::ListJobsResponse response;
  const size_t page = static_cast<size_t>(q.limit - 1);
  // A page also ends at kMaxListResponseBytes, so it always fits a client's receive limit
  // (one job is at most a spec of kMaxJobSpecBytes plus its status).
  size_t bytes = 0, taken = 0;
  for (; taken < jobs.size() && taken < page; ++taken) {
    const size_t size = jobs[taken].ByteSizeLong();
    if (taken > 0 && bytes + size > kMaxListResponseBytes) break;
    bytes += size;
    *response.add_jobs() = jobs[taken];
  }
  if (jobs.size() > taken) response.set_next_page_token(PageToken(jobs[taken - 1]));
  return response;
}

absl::StatusOr<Job> JobManager::CancelJob(const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  absl::MutexLock lock(&mu_);
  auto it = active_.find(id);
  if (it == active_.end()) {
    LORA_ASSIGN_OR_RETURN(Job job, store_->GetJob(id));
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is already ", lora::v1::JobState_Name(job.state())));
  }
  ActiveJob& a = it->second;
  switch (a.job.state()) {
    case lora::v1::QUEUED: {
      LORA_RETURN_IF_ERROR(Transition(a, lora::v1::CANCELLED, "cancelled before it started"));
      return store_->GetJob(id);
    }
    case lora::v1::STARTING:
    case lora::v1::RUNNING:
      LORA_RETURN_IF_ERROR(Transition(a, lora::v1::CANCELLING, "cancel requested"));
      SendCancel(a, "cancel requested");
      a.rt.cancel_deadline = absl::Now() + options_.cancel_grace + absl::Seconds(5);
      return a.job;
    default:
      return a.job;  // already CANCELLING
  }
}

absl::StatusOr<std::vector<lora::v1::Checkpoint>> JobManager::ListCheckpoints(
    const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  LORA_RETURN_IF_ERROR(GetJob(name).status());
  return store_->ListCheckpoints(id);
}

absl::StatusOr<lora::v1::ArtifactFile> JobManager::GetArtifact(const std::string& name,
                                                               const std::string& path) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  LORA_RETURN_IF_ERROR(ValidateArtifactPath(path));
  LORA_RETURN_IF_ERROR(GetJob(name).status());
  return store_->GetArtifact(id, path);
}

absl::Status JobManager::Subscribe(const std::string& name, EventSubscriber* subscriber,
                                   int64_t* last_sequence, bool* terminal) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  absl::MutexLock lock(&mu_);
  if (shutdown_) return absl::UnavailableError("lorad is shutting down");
  auto it = active_.find(id);
  if (it != active_.end()) {
    subscribers_[id].insert(subscriber);
    *last_sequence = it->second.job.last_sequence();
    *terminal = false;
    return absl::OkStatus();
  }
  LORA_ASSIGN_OR_RETURN(Job job, store_->GetJob(id));
  *last_sequence = job.last_sequence();
  *terminal = true;
  return absl::OkStatus();
}

void JobManager::Unsubscribe(const std::string& job_id, EventSubscriber* subscriber) {
  absl::MutexLock lock(&mu_);
  auto it = subscribers_.find(job_id);
  if (it == subscribers_.end()) return;
  it->second.erase(subscriber);
  if (it->second.empty()) subscribers_.erase(it);
}

absl::StatusOr<std::vector<JobEvent>> JobManager::ReadEvents(const std::string& job_id,
                                                             int64_t after, int limit) {
  return store_->ReadEvents(job_id, after, limit);
}

// ---------------------------------------------------------------- workers

absl::StatusOr<wv1::RegisterAck> JobManager::WorkerConnected(
    const wv1::Register& reg, std::shared_ptr<WorkerChannel> channel) {
  if (reg.worker_id().empty())
    return absl::InvalidArgumentError("register.worker_id: must not be empty");
  absl::MutexLock lock(&mu_);
  if (shutdown_) return absl::UnavailableError("lorad is shutting down");
  Worker& w = workers_[reg.worker_id()];
  if (w.channel && w.channel != channel) w.channel->Close();  // a stale stream of the same worker
  w.channel = std::move(channel);
  w.capabilities = reg.capabilities();
  if (w.capabilities.slots() <= 0) w.capabilities.set_slots(1);
  // One rank per GPU: a cuda worker never gets more ranks than the GPUs it advertised.
  if (w.capabilities.device() == "cuda" && w.capabilities.gpus_size() > 0 &&
      w.capabilities.slots() > w.capabilities.gpus_size()) {
    w.capabilities.set_slots(w.capabilities.gpus_size());
  }
  w.address = reg.address();
  w.last_seen = absl::Now();
  w.used_slots = 0;

  std::set<std::tuple<std::string, int, int>> reported;
  wv1::RegisterAck ack;
  ack.set_heartbeat_interval_ms(options_.heartbeat_interval_ms);
  ack.set_controller_version("lorad 0.1.0");
  for (const wv1::RunningRank& rr : reg.running()) {
    const auto& ref = rr.ref();
    reported.insert({ref.job_id(), ref.attempt(), ref.rank()});
    auto it = active_.find(ref.job_id());
    bool ours = it != active_.end() && it->second.job.attempt() == ref.attempt() &&
                ref.rank() >= 0 && ref.rank() < static_cast<int>(it->second.rt.ranks.size()) &&
                it->second.rt.ranks[static_cast<size_t>(ref.rank())].worker_id == reg.worker_id() &&
                !it->second.rt.ranks[static_cast<size_t>(ref.rank())].exited;
    if (ours) {
      RankSlot& slot = it->second.rt.ranks[static_cast<size_t>(ref.rank())];
      wv1::RunningRank* resume = ack.add_resume_from();
      *resume->mutable_ref() = ref;
      resume->set_last_event_seq(slot.last_worker_seq);
      ++w.used_slots;
    } else if (draining_.count({ref.job_id(), ref.attempt(), ref.rank()})) {
      ++w.used_slots;  // still stopping
      *ack.add_stop() = ref;
    } else {
      *ack.add_stop() = ref;
    }
  }
  // Ranks this worker should be running but does not report are gone.
  std::vector<std::string> lost_jobs;
  for (auto& [id, a] : active_) {
    for (size_t r = 0; r < a.rt.ranks.size(); ++r) {
      const RankSlot& slot = a.rt.ranks[r];
      if (slot.worker_id == reg.worker_id() && slot.assigned && !slot.exited &&
          !reported.count({id, a.job.attempt(), static_cast<int>(r)})) {
        lost_jobs.push_back(id);
        break;
      }
    }
  }
  for (const std::string& id : lost_jobs) {
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    ActiveJob& a = it->second;
    for (RankSlot& slot : a.rt.ranks) {
      if (slot.worker_id == reg.worker_id()) slot.slot_released = true;  // counted afresh above
    }
    if (a.job.state() == lora::v1::CANCELLING) {
      for (RankSlot& slot : a.rt.ranks) {
        if (slot.worker_id == reg.worker_id()) slot.exited = true;
      }
      MaybeComplete(a);
    } else {
      RetryOrFail(a, absl::StrCat("worker ", reg.worker_id(), " restarted and lost its rank"));
    }
  }
  Schedule();
  return ack;
}

void JobManager::WorkerDisconnected(const std::string& worker_id, const WorkerChannel* channel) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.channel.get() != channel) return;
  // Keep its ranks for heartbeat_timeout: the worker may reconnect with them still running.
  it->second.channel.reset();
  it->second.last_seen = absl::Now();
}

void JobManager::OnHeartbeat(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it != workers_.end()) it->second.last_seen = absl::Now();
}

void JobManager::WorkerLost(const std::string& worker_id, const std::string& reason) {
  auto w = workers_.find(worker_id);
  if (w != workers_.end()) {
    if (w->second.channel) w->second.channel->Close();
    workers_.erase(w);
  }
  for (auto it = draining_.begin(); it != draining_.end();) {
    it = it->second == worker_id ? draining_.erase(it) : std::next(it);
  }
  std::vector<std::string> affected;
  for (auto& [id, a] : active_) {
    for (const RankSlot& s : a.rt.ranks) {
      if (s.worker_id == worker_id && s.assigned && !s.exited) {
        affected.push_back(id);
        break;
      }
    }
  }
  for (const std::string& id : affected) {
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    ActiveJob& a = it->second;
    for (RankSlot& s : a.rt.ranks) {
      if (s.worker_id == worker_id) s.slot_released = true;
    }
    if (a.job.state() == lora::v1::CANCELLING) {
      for (RankSlot& s : a.rt.ranks) {
        if (s.worker_id == worker_id) s.exited = true;
      }
      MaybeComplete(a);
    } else {
      RetryOrFail(a, absl::StrCat("worker ", worker_id, " lost (", reason, ")"));
    }
  }
}

JobManager::ActiveJob* JobManager::FindRank(const wv1::RankRef& ref, const std::string& worker_id) {
  auto it = active_.find(ref.job_id());
  if (it == active_.end() || it->second.job.attempt() != ref.attempt()) return nullptr;
  if (ref.rank() < 0 || ref.rank() >= static_cast<int>(it->second.rt.ranks.size())) return nullptr;
  if (it->second.rt.ranks[static_cast<size_t>(ref.rank())].worker_id != worker_id) return nullptr;
  return &it->second;
}

absl::Status JobManager::CheckRankOwner(const std::string& worker_id, const wv1::RankRef& ref) {
  absl::MutexLock lock(&mu_);
  if (FindRank(ref, worker_id) == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat("worker ", worker_id, " does not run rank ",
                                                    ref.rank(), " of attempt ", ref.attempt(),
                                                    " of jobs/", ref.job_id()));
  }
  return absl::OkStatus();
}

absl::Status JobManager::CheckWorkerOnJob(const std::string& worker_id, const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = active_.find(job_id);
  if (it != active_.end()) {
    for (const RankSlot& s : it->second.rt.ranks) {
      if (s.worker_id == worker_id) return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(
      absl::StrCat("worker ", worker_id, " runs no rank of jobs/", job_id));
}

void JobManager::OnRankAccepted(const std::string& worker_id, const wv1::RankAccepted& accepted) {
  absl::MutexLock lock(&mu_);
  ActiveJob* a = FindRank(accepted.ref(), worker_id);
  if (a == nullptr) return;
  a->rt.ranks[static_cast<size_t>(accepted.ref().rank())].accepted = true;
  if (accepted.ref().rank() < a->job.ranks_size())
    a->job.mutable_ranks(accepted.ref().rank())->set_state(lora::v1::RANK_STARTED);
  if (accepted.ref().rank() == 0 && a->rt.master_port == 0) {
    a->rt.master_port = accepted.master_port();
    for (size_t r = 1; r < a->rt.ranks.size(); ++r) SendAssignment(*a, static_cast<int>(r));
  }
}

std::vector<JobEvent> JobManager::TranslateEngineEvent(ActiveJob& a, int rank,
                                                       const std::string& text) {
  std::vector<JobEvent> out;
  // Worker input: bounded before the recursive parser sees it.
  if (!CheckJsonNesting(text, "engine event").ok()) return out;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return out;
  const std::string type = j.value("event", "");
  lora::v1::JobProgress* p = a.job.mutable_progress();
  auto verified_files = [&](const nlohmann::json& list, std::vector<lora::v1::ArtifactFile>* files,
                            std::string* problem) {
    if (!list.is_array()) return false;
    for (const auto& f : list) {
      const std::string path = f.value("path", "");
      auto stored = store_->GetArtifact(a.job.id(), path);
      if (!stored.ok() || stored->sha256() != f.value("sha256", "")) {
        *problem = absl::StrCat(path, " was not uploaded intact");
        return false;
      }
      files->push_back(*stored);
    }
    return true;
  };
  if (rank < a.job.ranks_size()) {
    lora::v1::RankStatus* status = a.job.mutable_ranks(rank);
    status->set_state(lora::v1::RANK_RUNNING);
    *status->mutable_last_seen_time() = FromMicros(NowMicros());
    if (type == "rank_status" || type == "step") {
      status->set_step(std::max(status->step(), Int(j, "step")));
      status->set_step_seconds(Num(j, "step_seconds"));
    }
    if (type == "rank_status") {
      status->set_peak_rss_bytes(Int(j, "peak_rss_bytes"));
      status->set_parameter_bytes(Int(j, "parameter_bytes"));
      status->set_bytes_sent(Int(j, "bytes_sent"));
    }
  }
  if (type == "step" && rank == 0) {
    JobEvent e;
    lora::v1::StepMetrics* m = e.mutable_metrics();
    m->set_step(Int(j, "step"));
    m->set_total_steps(Int(j, "total_steps"));
    m->set_loss(Num(j, "loss"));
    m->set_grad_norm(Num(j, "grad_norm"));
    m->set_lr(Num(j, "lr"));
    m->set_tokens_per_second(Num(j, "tokens_per_second"));
    m->set_elapsed_seconds(Num(j, "elapsed_seconds"));
    m->set_eta_seconds(Num(j, "eta_seconds"));
    m->set_tokens(Int(j, "tokens"));
    p->set_step(m->step());
    p->set_total_steps(m->total_steps());
    p->set_loss(m->loss());
    p->set_lr(m->lr());
    p->set_tokens_per_second(m->tokens_per_second());
    p->set_eta_seconds(m->eta_seconds());
    p->set_elapsed_seconds(m->elapsed_seconds());
    p->set_tokens(m->tokens());
    out.push_back(e);
  } else if (type == "eval" && rank == 0) {
    JobEvent e;
    e.mutable_eval()->set_step(Int(j, "step"));
    e.mutable_eval()->set_eval_loss(Num(j, "eval_loss"));
    e.mutable_eval()->set_eval_tokens(Int(j, "eval_tokens"));
    p->set_eval_loss(e.eval().eval_loss());
    if (e.eval().step() == 0) p->set_initial_eval_loss(e.eval().eval_loss());
    out.push_back(e);
  } else if (type == "checkpoint" && rank == 0) {
    std::vector<lora::v1::ArtifactFile> files;
    std::string problem;
    JobEvent e;
    if (!verified_files(j.value("uploaded", nlohmann::json()), &files, &problem)) {
      e.mutable_log()->set_level("warning");
      e.mutable_log()->set_message(
          absl::StrCat("checkpoint at step ", Int(j, "step"), " not recorded: ", problem));
    } else {
      lora::v1::Checkpoint* c = e.mutable_checkpoint();
      c->set_step(Int(j, "step"));
      c->set_path(j.value("job_path", ""));
      c->set_bytes(Int(j, "bytes"));
      c->set_manifest_sha256(j.value("sha256", ""));
      c->set_attempt(a.job.attempt());
      *c->mutable_create_time() = FromMicros(NowMicros());
      for (auto& f : files) *c->add_files() = f;
      if (absl::Status s = store_->PutCheckpoint(a.job.id(), *c); s.ok()) {
        a.job.set_latest_checkpoint_step(std::max(a.job.latest_checkpoint_step(), c->step()));
      }
    }
    out.push_back(e);
  } else if (type == "finished" && rank == 0) {
    std::vector<lora::v1::ArtifactFile> files;
    std::string problem;
    JobEvent e;
    e.mutable_log()->set_level("info");
    if (verified_files(j.value("uploaded", nlohmann::json::array()), &files, &problem)) {
      a.job.clear_outputs();
      for (auto& f : files) *a.job.add_outputs() = f;
      a.rt.rank0_finished = true;
      e.mutable_log()->set_message(
          absl::StrCat("finished; ", files.size(), " output files uploaded"));
    } else {
      a.rt.failure_reason = absl::StrCat("outputs incomplete: ", problem);
      e.mutable_log()->set_level("error");
      e.mutable_log()->set_message(a.rt.failure_reason);
    }
    out.push_back(e);
  } else if (type == "failed") {
    // Multi-rank engines name the rank that failed first ("rank 2: ..."), which need not be
    // the rank reporting it.
    const std::string reason = j.value("reason", "failed");
    a.rt.failure_reason = absl::StrCat(a.rt.ranks.size() > 1 && !absl::StartsWith(reason, "rank ")
                                           ? absl::StrCat("rank ", rank, ": ")
                                           : "",
                                       reason);
    a.rt.failure_code = CodeFromName(j.value("code", ""));
    a.job.mutable_error()->set_code(a.rt.failure_code);
    a.job.mutable_error()->set_message(a.rt.failure_reason);
    JobEvent e;
    e.mutable_log()->set_level("error");
    e.mutable_log()->set_message(a.rt.failure_reason);
    e.mutable_log()->set_rank(rank);
    out.push_back(e);
  } else if (type == "log" || type == "started") {
    JobEvent e;
    e.mutable_log()->set_level(type == "log" ? j.value("level", "info") : "info");
    e.mutable_log()->set_rank(rank);
    e.mutable_log()->set_message(
        type == "log"
            ? j.value("message", "")
            : absl::StrCat("rank ", rank, " started: ", j.value("base_model", ""), ", ",
                           Int(j, "trainable_parameters"), " trainable parameters, steps ",
                           Int(j, "start_step"), "..", Int(j, "total_steps")));
    if (rank == 0 || type == "log") out.push_back(e);
  }
  return out;
}

void JobManager::OnRankEvent(const std::string& worker_id, const wv1::RankEvent& event) {
  absl::MutexLock lock(&mu_);
  ActiveJob* a = FindRank(event.ref(), worker_id);
  if (a == nullptr) return;
  RankSlot& slot = a->rt.ranks[static_cast<size_t>(event.ref().rank())];
  if (event.worker_seq() <= slot.last_worker_seq) return;  // a re-send after reconnecting
  slot.last_worker_seq = event.worker_seq();
  std::vector<JobEvent> events = TranslateEngineEvent(*a, event.ref().rank(), event.json());
  if (a->job.state() == lora::v1::STARTING) {
    (void)Transition(*a, lora::v1::RUNNING, "ranks started", std::move(events));
  } else {
    (void)Commit(*a, std::move(events));
  }
}

void JobManager::OnRankExited(const std::string& worker_id, const wv1::RankExited& exited) {
  absl::MutexLock lock(&mu_);
  const auto& ref = exited.ref();
  auto drain = draining_.find({ref.job_id(), ref.attempt(), ref.rank()});
  if (drain != draining_.end()) {
    auto w = workers_.find(drain->second);
    if (w != workers_.end()) w->second.used_slots = std::max(0, w->second.used_slots - 1);
    draining_.erase(drain);
    Schedule();
    return;
  }
  ActiveJob* a = FindRank(ref, worker_id);
  if (a == nullptr) return;
  RankSlot& slot = a->rt.ranks[static_cast<size_t>(ref.rank())];
  if (slot.exited) return;
  slot.exited = true;
  slot.exit_code = exited.exit_code();
  slot.signal = exited.signal();
  if (ref.rank() < a->job.ranks_size()) {
    lora::v1::RankStatus* status = a->job.mutable_ranks(ref.rank());
    status->set_state(lora::v1::RANK_EXITED);
    status->set_exit_code(exited.exit_code());
    status->set_signal(exited.signal());
  }
  if (!slot.slot_released) {
    slot.slot_released = true;
    auto w = workers_.find(worker_id);
    if (w != workers_.end()) w->second.used_slots = std::max(0, w->second.used_slots - 1);
  }
  const std::string who = a->rt.ranks.size() > 1 ? absl::StrCat("rank ", ref.rank()) : "the engine";
  if (a->job.state() == lora::v1::CANCELLING) {
    MaybeComplete(*a);
  } else if (exited.exit_code() == 0) {
    MaybeComplete(*a);
  } else if (exited.signal() != 0 || exited.exit_code() == kExitInterrupted) {
    RetryOrFail(*a, exited.signal() != 0
                        ? absl::StrCat(who, " was killed by signal ", exited.signal())
                        : absl::StrCat(who, " stopped after a checkpoint"));
  } else if (a->rt.ranks.size() > 1 &&
             a->rt.failure_code == static_cast<int>(absl::StatusCode::kUnavailable)) {
    // A peer died, hung or became unreachable: every rank restarts from the latest checkpoint
    // (the survivors may report before the lost rank's own exit arrives).
    RetryOrFail(*a, a->rt.failure_reason);
  } else {
    std::string reason = !a->rt.failure_reason.empty()
                             ? a->rt.failure_reason
                             : absl::StrCat(who, " exited with code ", exited.exit_code(),
                                            exited.reason().empty() ? "" : ": " + exited.reason());
    if (a->job.error().code() == 0)
      a->job.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kInternal));
    a->job.mutable_error()->set_message(reason);
    SendCancel(*a, "another rank failed");
    (void)Transition(*a, lora::v1::FAILED, reason);
  }
  Schedule();
}

absl::Status JobManager::OnArtifactStored(const wv1::UploadHeader& header,
                                          const lora::v1::ArtifactFile& file) {
  return store_->PutArtifact(header.ref().job_id(), file, header.step(), header.ref().attempt());
}

// ---------------------------------------------------------------- scheduling

void JobManager::SendAssignment(ActiveJob& a, int rank) {
  RankSlot& slot = a.rt.ranks[static_cast<size_t>(rank)];
  auto w = workers_.find(slot.worker_id);
  if (w == workers_.end() || !w->second.channel) return;  // lost meanwhile; Tick handles it
  wv1::ControllerMessage msg;
  wv1::Assignment* as = msg.mutable_assignment();
  as->mutable_ref()->set_job_id(a.job.id());
  as->mutable_ref()->set_attempt(a.job.attempt());
  as->mutable_ref()->set_rank(rank);
  as->set_world_size(static_cast<int>(a.rt.ranks.size()));
  as->set_master_addr(a.rt.master_addr);
  as->set_master_port(rank == 0 ? 0 : a.rt.master_port);
  *as->mutable_spec() = a.job.spec();
  if (a.job.latest_checkpoint_step() > 0) {
    auto checkpoints = store_->ListCheckpoints(a.job.id());
    if (checkpoints.ok() && !checkpoints->empty()) *as->mutable_resume() = checkpoints->back();
  }
  slot.assigned = true;
  if (rank < a.job.ranks_size()) a.job.mutable_ranks(rank)->set_state(lora::v1::RANK_ASSIGNED);
  w->second.channel->Send(msg);
}

std::map<std::string, JobManager::DevicePool> JobManager::ConnectedPools() const {
  std::map<std::string, DevicePool> pools;
  for (const auto& [id, w] : workers_) {
    if (!w.channel) continue;
    DevicePool& pool = pools[w.capabilities.device()];
    ++pool.workers;
    pool.slots += w.capabilities.slots();
  }
  return pools;
}

std::string JobManager::QueueReason(const std::string& device, int ranks, const DevicePool& pool,
                                    int free_slots, int connected_workers) {
  // A cuda slot is one GPU (one rank per GPU).
  const std::string slots = device == "cuda"
                                ? absl::StrCat(ranks, ranks == 1 ? " GPU" : " GPUs")
                                : absl::StrCat(ranks, " ", device, ranks == 1 ? " slot" : " slots");
  if (pool.workers == 0) {
    return absl::StrCat("no connected worker has device ", device, " (", connected_workers,
                        connected_workers == 1 ? " worker" : " workers", " connected)");
  }
  if (pool.slots < ranks) {
    return absl::StrCat("needs ", slots, " at once; the connected ", device, " workers have ",
                        pool.slots, " in all");
  }
  return absl::StrCat("waiting for ", slots, " (", free_slots, " free)");
}

std::string JobManager::TenantQuotaReason(const std::string& tenant, int running, int ranks,
                                          int limit) {
  if (limit <= 0 || running + ranks <= limit) return "";
  return absl::StrCat("tenant '", tenant, "' runs ", running, " of its ", limit,
                      " ranks; this job needs ", ranks, " (waits for the tenant's own jobs)");
}

void JobManager::Schedule() {
  if (shutdown_) return;
  std::vector<ActiveJob*> queued;
  for (auto& [id, a] : active_) {
    if (a.job.state() == lora::v1::QUEUED) queued.push_back(&a);
  }
  std::sort(queued.begin(), queued.end(), [](const ActiveJob* x, const ActiveJob* y) {
    const int px = x->job.spec().job().priority(), py = y->job.spec().job().priority();
    if (px != py) return px > py;
    const int64_t tx = ToMicros(x->job.create_time()), ty = ToMicros(y->job.create_time());
    return tx != ty ? tx < ty : x->job.id() < y->job.id();
  });
  // The job holding the line of each device pool (cpu, cuda): pools do not share slots, so a
  // job waiting for a GPU never holds up CPU jobs.
  std::map<std::string, const ActiveJob*> blocked_by;
  std::map<std::string, int> running_by_tenant;
  for (const auto& [id, a] : active_) {
    if (a.job.state() != lora::v1::QUEUED) {
      running_by_tenant[a.job.tenant()] += static_cast<int>(a.rt.ranks.size());
    }
  }
  std::map<std::string, DevicePool> pools = ConnectedPools();
  int connected = 0;
  for (const auto& [device, pool] : pools) connected += pool.workers;
  for (ActiveJob* a : queued) {
    const int n = std::max(1, a->job.spec().resources().world_size());
    const std::string& device = a->job.spec().resources().device();
    // Over its quota a job waits for its own tenant's jobs, and does not hold the line.
    if (std::string why = TenantQuotaReason(a->job.tenant(), running_by_tenant[a->job.tenant()], n,
                                            options_.max_running_ranks_per_tenant);
        !why.empty()) {
      a->job.set_queue_reason(why);
      continue;
    }
    if (auto it = blocked_by.find(device); it != blocked_by.end()) {
      a->job.set_queue_reason(absl::StrCat("behind ", it->second->job.name(), " in the ", device,
                                           " queue (FIFO within priority)"));
      continue;
    }
    std::vector<std::string> picked;
    for (auto& [id, w] : workers_) {
      if (!w.channel || w.capabilities.device() != device) continue;
      for (int free = w.capabilities.slots() - w.used_slots;
           free > 0 && static_cast<int>(picked.size()) < n; --free) {
        picked.push_back(id);
      }
    }
    // Gang: all ranks or none. FIFO within priority: a job that cannot start holds the line,
    // so a large job is never starved by smaller ones behind it.
    if (static_cast<int>(picked.size()) < n) {
      blocked_by[device] = a;
      a->job.set_queue_reason(
          QueueReason(device, n, pools[device], static_cast<int>(picked.size()), connected));
      continue;
    }
    a->job.clear_queue_reason();
    a->rt = Runtime();
    a->rt.ranks.resize(static_cast<size_t>(n));
    a->job.clear_workers();
    a->job.clear_ranks();
    for (int r = 0; r < n; ++r) {
      a->rt.ranks[static_cast<size_t>(r)].worker_id = picked[static_cast<size_t>(r)];
      ++workers_[picked[static_cast<size_t>(r)]].used_slots;
      a->job.add_workers(picked[static_cast<size_t>(r)]);
      lora::v1::RankStatus* status = a->job.add_ranks();
      status->set_rank(r);
      status->set_worker_id(picked[static_cast<size_t>(r)]);
    }
    running_by_tenant[a->job.tenant()] += n;
    a->rt.master_addr = workers_[picked[0]].address;
    if (!Transition(*a, lora::v1::STARTING,
                    absl::StrCat("assigned to ", n, n == 1 ? " worker slot: " : " worker slots: ",
                                 picked[0], n > 1 ? ", ..." : ""))
             .ok()) {
      continue;
    }
    SendAssignment(*a, 0);
  }
}

void JobManager::Tick() {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  const absl::Time now = absl::Now();
  std::vector<std::pair<std::string, std::string>> lost;
  for (const auto& [id, w] : workers_) {
    if (now - w.last_seen > options_.heartbeat_timeout) {
      lost.emplace_back(id, w.channel ? "missed heartbeats" : "disconnected");
    }
  }
  for (const auto& [id, why] : lost) WorkerLost(id, why);
  std::vector<std::string> expired, orphaned;
  for (auto& [id, a] : active_) {
    if (a.job.state() == lora::v1::CANCELLING && now > a.rt.cancel_deadline) expired.push_back(id);
    if (now > a.rt.reattach_deadline) {
      a.rt.reattach_deadline = absl::InfiniteFuture();
      for (const RankSlot& s : a.rt.ranks) {
        auto w = workers_.find(s.worker_id);
        if (!s.exited && (w == workers_.end() || !w->second.channel)) {
          orphaned.push_back(id);
          break;
        }
      }
    }
  }
  for (const std::string& id : expired) {
    auto it = active_.find(id);
    if (it != active_.end())
      (void)Transition(it->second, lora::v1::CANCELLED, "ranks did not confirm the stop in time");
  }
  for (const std::string& id : orphaned) {
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    if (it->second.job.state() == lora::v1::CANCELLING) {
      (void)Transition(it->second, lora::v1::CANCELLED,
                       "cancelled (workers did not come back after a restart)");
    } else {
      RetryOrFail(it->second, "its workers did not reconnect after a controller restart");
    }
  }
  Schedule();
}

void JobManager::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  // End worker streams now so the gRPC server does not wait out its shutdown deadline on them.
  for (auto& [id, w] : workers_) {
    if (w.channel) w.channel->Close();
  }
  for (auto& [id, subs] : subscribers_) {
    for (EventSubscriber* sub : subs) sub->OnClose(true);
  }
  subscribers_.clear();
}

JobManagerStats JobManager::Stats() {
  absl::MutexLock lock(&mu_);
  JobManagerStats s;
  for (const auto& [id, a] : active_) ++s.jobs_by_state[a.job.state()];
  for (const auto& [id, w] : workers_) {
    if (!w.channel) continue;
    ++s.workers_connected;
    s.workers_busy_slots += w.used_slots;
    s.workers_total_slots += w.capabilities.slots();
  }
  for (const auto& [id, subs] : subscribers_) s.watchers += static_cast<int64_t>(subs.size());
  std::map<std::string, DevicePool> pools = ConnectedPools();
  for (const auto& [id, a] : active_) {
    if (a.job.state() != lora::v1::QUEUED) continue;
    const std::string& device = a.job.spec().resources().device();
    if (pools[device].slots < std::max(1, a.job.spec().resources().world_size()))
      ++s.unschedulable_by_device[device];
  }
  return s;
}

}  // namespace lora::server
