// JobManager: the public API (lora.v1.JobService) and watchers. See job_manager.h.
#include <algorithm>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/data_roots.h"
#include "common/job_spec/job_spec.h"
#include "common/status_macros.h"
#include "server/core/job_manager.h"
#include "server/core/list_filter.h"

namespace lora::server {

using lora::v1::Job;
using lora::v1::JobEvent;
using lora::v1::JobState;

namespace {

int CountOf(const std::map<std::string, int>& counts, const std::string& key) {
  auto it = counts.find(key);
  return it == counts.end() ? 0 : it->second;
}

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

std::string PageToken(const Job& job) {
  return absl::WebSafeBase64Escape(absl::StrCat(ToMicros(job.create_time()), ":", job.id()));
}

}  // namespace

// ---------------------------------------------------------------- public API

absl::Status JobManager::CheckSpecFiles(const lora::v1::JobSpec& spec, const std::string& tenant) {
  for (const SpecPath& p : SpecPaths(spec)) {
    if (!IsFileRef(p.path)) continue;
    if (!options_.resolve_files) {
      return absl::InvalidArgumentError(
          absl::StrCat(p.field, ": this lorad stores no uploaded files (files/...)"));
    }
    return options_.resolve_files(tenant, spec).status();
  }
  return absl::OkStatus();
}

absl::Status JobManager::SameRequest(const Job& existing, const Job& retry) {
  const std::string differs = FirstSpecDifference(existing.spec(), retry.spec());
  if (differs.empty()) return absl::OkStatus();
  // AIP-155: a request id names one request; reusing it for another is the caller's bug, and
  // answering with the old job would hide it.
  return absl::AlreadyExistsError(
      absl::StrCat("request_id ", retry.request_id(), " already created ", existing.name(),
                   " from a different spec (they differ at ", differs, "); use a new request_id"));
}

bool JobManager::NamesFile(const std::string& file_name) {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, a] : active_) {
    if (IsTerminal(a.job.state())) continue;
    for (const SpecPath& p : SpecPaths(a.job.spec())) {
      if (p.path == file_name) return true;
    }
  }
  return false;
}

absl::Status JobManager::CheckBlobForRank(const std::string& worker_id,
                                          const lora::worker::v1::RankRef& ref,
                                          const std::string& sha256) {
  LORA_RETURN_IF_ERROR(CheckRankOwner(worker_id, ref));
  lora::v1::Job job;
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(ref.job_id());
    if (it == active_.end())
      return absl::NotFoundError(absl::StrCat("jobs/", ref.job_id(), " not running"));
    job = it->second.job;
  }
  if (!options_.resolve_files) return absl::NotFoundError("no uploaded files");
  LORA_ASSIGN_OR_RETURN(std::vector<lora::v1::File> files,
                        options_.resolve_files(job.tenant(), job.spec()));
  for (const lora::v1::File& f : files) {
    for (const lora::v1::FileEntry& e : f.entries()) {
      if (e.sha256() == sha256) return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError("the assignment names no file with this blob");
}

absl::StatusOr<Job> JobManager::CreateJob(lora::v1::JobSpec spec, const std::string& request_id,
                                          bool* created, const std::string& tenant) {
  if (request_id.size() > 128)
    return absl::InvalidArgumentError("request_id: must be at most 128 characters");
  ApplyJobSpecDefaults(&spec);
  LORA_RETURN_IF_ERROR(ValidateJobSpec(spec));
  LORA_RETURN_IF_ERROR(CheckSpecPaths(spec, options_.declared_data_roots));
  LORA_RETURN_IF_ERROR(CheckSpecFiles(spec, tenant));
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
  const int64_t created_us = ToMicros(job.create_time());
  LORA_ASSIGN_OR_RETURN(JobUpdate created_update, PlanTransition(std::move(job), lora::v1::QUEUED,
                                                                 "created", {}, created_us));
  job = std::move(created_update.job);
  const JobEvent& first = created_update.events.front();

  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return absl::UnavailableError("lorad is shutting down");
    LORA_RETURN_IF_ERROR(CheckLeading());
    if (options_.max_queued_jobs_per_tenant > 0) {
      const int queued = CountOf(queued_by_tenant_, tenant) + CountOf(creating_by_tenant_, tenant);
      if (queued >= options_.max_queued_jobs_per_tenant) {
        return QueueLimitReached(tenant, request_id, queued, job, created);
      }
    }
    creating_.insert(job.id());
    ++creating_by_tenant_[tenant];
  }
  // Outside mu_: creates that arrive while one is being fsynced join the next group commit.
  Job existing;
  absl::Status s = store_->InsertJob(job, first, &existing);
  absl::MutexLock lock(&mu_);
  creating_.erase(job.id());
  created_.SignalAll();
  if (--creating_by_tenant_[tenant] <= 0) creating_by_tenant_.erase(tenant);
  if (absl::IsAlreadyExists(s)) {
    LORA_RETURN_IF_ERROR(SameRequest(existing, job));
    *created = false;
    auto it = active_.find(existing.id());
    return it != active_.end() ? it->second.job : existing;
  }
  LORA_RETURN_IF_ERROR(s);
  *created = true;
  // Stored, so it runs: now, or after the restart that a shutdown means (recovery reads it).
  if (shutdown_) return job;
  ActiveJob a;
  a.job = job;
  Index(job.id(), EntryOf(job));
  ScheduleCreated(active_.emplace(job.id(), std::move(a)).first->second);
  auto it = active_.find(job.id());
  return it != active_.end() ? it->second.job : job;
}

absl::StatusOr<Job> JobManager::QueueLimitReached(const std::string& tenant,
                                                  const std::string& request_id, int queued,
                                                  const Job& job, bool* created) {
  // A retry of a request that already created its job still gets that job.
  if (!request_id.empty()) {
    auto existing = store_->FindJobByRequestId(tenant, request_id);
    if (existing.ok()) {
      LORA_RETURN_IF_ERROR(SameRequest(*existing, job));
      *created = false;
      auto it = active_.find(existing->id());
      return it != active_.end() ? it->second.job : *existing;
    }
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("tenant '", tenant, "' has ", queued,
                   " queued jobs, its limit; wait for one to start or cancel one"));
}

absl::StatusOr<Job> JobManager::GetJob(const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(id);
    if (it != active_.end()) {
      Job job = it->second.job;
      // Only a pool's first kScheduleWindow jobs get a reason from the scheduler.
      const IndexEntry e = EntryOf(job);
      auto end = window_end_.find(e.device);
      if (e.queued && end != window_end_.end() &&
          end->second < QueueKey{-e.priority, e.create_time_us, id}) {
        job.set_queue_reason(absl::StrCat("behind at least ", kScheduleWindow, " jobs in the ",
                                          job.spec().resources().device(),
                                          " queue (FIFO within priority)"));
      }
      return job;
    }
  }
  return store_->GetJob(id);
}

absl::StatusOr<lora::v1::ListJobsResponse> JobManager::ListJobs(
    const lora::v1::ListJobsRequest& request, const std::optional<std::string>& tenant) {
  if (request.page_size() < 0) return absl::InvalidArgumentError("page_size: must be >= 0");
  LORA_ASSIGN_OR_RETURN(JobFilter filter, ParseJobFilter(request.filter()));
  LORA_ASSIGN_OR_RETURN(bool ascending, ParseOrderByAscending(request.order_by()));
  ListJobsQuery q;
  q.tenant = tenant;
  q.ascending = ascending;
  const size_t page = request.page_size() == 0 ? 50 : std::min(request.page_size(), 1000);
  for (int s : request.states()) q.states.push_back(static_cast<JobState>(s));
  for (int k : request.kinds()) q.kinds.push_back(static_cast<lora::v1::JobKind>(k));
  // The filter's states and kinds narrow the request's (AND): both given, keep the common ones.
  auto narrow = [](auto* have, const auto& want) {
    if (want.empty()) return;
    if (have->empty()) {
      *have = want;
      return;
    }
    std::vector<typename std::decay_t<decltype(*have)>::value_type> both;
    for (auto v : *have) {
      if (std::find(want.begin(), want.end(), v) != want.end()) both.push_back(v);
    }
    // Nothing in common matches nothing: an impossible value keeps the SQL simple.
    if (both.empty()) both.push_back(static_cast<typename decltype(both)::value_type>(-1));
    *have = both;
  };
  narrow(&q.states, filter.states);
  narrow(&q.kinds, filter.kinds);
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
  // Labels are inside the job records: read in batches and keep the matches, scanning at most
  // kMaxListScan jobs per call (a page may then hold fewer than page_size jobs, with a token to
  // continue, as AIP-158 allows).
  constexpr size_t kMaxListScan = 10000;
  q.limit = static_cast<int>(filter.has_labels() ? std::max<size_t>(page + 1, 500) : page + 1);
  std::vector<Job> matched;
  size_t scanned = 0;
  bool exhausted = false;
  std::optional<Job> last_scanned;
  while (matched.size() <= page && scanned < kMaxListScan) {
    LORA_ASSIGN_OR_RETURN(std::vector<Job> batch, store_->ListJobs(q));
    for (Job& j : batch) {
      ++scanned;
      q.before = std::make_pair(ToMicros(j.create_time()), j.id());
      if (filter.Matches(j)) matched.push_back(j);
      last_scanned = std::move(j);
      if (matched.size() > page) break;
    }
    if (static_cast<int>(batch.size()) < q.limit) {
      exhausted = true;
      break;
    }
  }
  lora::v1::ListJobsResponse response;
  // A page also ends at kMaxListResponseBytes, so it always fits a client's receive limit
  // (one job is at most a spec of kMaxJobSpecBytes plus its status).
  size_t bytes = 0, taken = 0;
  for (; taken < matched.size() && taken < page; ++taken) {
    const size_t size = matched[taken].ByteSizeLong();
    if (taken > 0 && bytes + size > kMaxListResponseBytes) break;
    bytes += size;
    *response.add_jobs() = matched[taken];
  }
  if (matched.size() > taken && taken > 0) {
    response.set_next_page_token(PageToken(matched[taken - 1]));
  } else if (!exhausted && last_scanned) {
    response.set_next_page_token(PageToken(*last_scanned));  // the scan stopped early
  }
  return response;
}

absl::StatusOr<Job> JobManager::CancelJob(const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  absl::MutexLock lock(&mu_);
  LORA_RETURN_IF_ERROR(CheckLeading());
  ActiveJob* found = FindActive(id);
  if (found == nullptr) {
    LORA_ASSIGN_OR_RETURN(Job job, store_->GetJob(id));
    return absl::FailedPreconditionError(
        absl::StrCat(name, " is already ", lora::v1::JobState_Name(job.state())));
  }
  ActiveJob& a = *found;
  switch (a.job.state()) {
    case lora::v1::QUEUED: {
      LORA_RETURN_IF_ERROR(
          Transition(a, a.job, lora::v1::CANCELLED, "cancelled before it started"));
      return store_->GetJob(id);
    }
    case lora::v1::PAUSED: {
      LORA_RETURN_IF_ERROR(Transition(a, a.job, lora::v1::CANCELLED, "cancelled while paused"));
      return store_->GetJob(id);
    }
    case lora::v1::PAUSING:  // its ranks are stopping already
      LORA_RETURN_IF_ERROR(Transition(a, a.job, lora::v1::CANCELLING, "cancel requested"));
      return a.job;
    case lora::v1::STARTING:
    case lora::v1::RUNNING:
      LORA_RETURN_IF_ERROR(Transition(a, a.job, lora::v1::CANCELLING, "cancel requested"));
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
  if (!leading_) {
    // Follower: live events come from the store (FollowWatched). A job watched already keeps
    // its cursor, so every watcher of it reads history up to the same point.
    LORA_ASSIGN_OR_RETURN(Job job, store_->GetJob(id));
    *terminal = IsTerminal(job.state());
    if (*terminal) {
      *last_sequence = job.last_sequence();
      return absl::OkStatus();
    }
    auto [it, inserted] = followed_.emplace(id, job.last_sequence());
    *last_sequence = it->second;
    subscribers_[id].insert(subscriber);
    return absl::OkStatus();
  }
  if (ActiveJob* a = FindActive(id)) {
    subscribers_[id].insert(subscriber);
    *last_sequence = a->job.last_sequence();
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
  if (it->second.empty()) {
    subscribers_.erase(it);
    followed_.erase(job_id);
  }
}

absl::StatusOr<std::vector<JobEvent>> JobManager::ReadEvents(const std::string& job_id,
                                                             int64_t after, int limit) {
  return store_->ReadEvents(job_id, after, limit);
}

}  // namespace lora::server
