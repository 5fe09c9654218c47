// JobManager: what workers report (lora.worker.v1.WorkerService). See job_manager.h.
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "server/core/engine_event_translator.h"
#include "server/core/job_manager.h"

namespace lora::server {

using lora::v1::Job;
using lora::v1::JobEvent;
namespace wv1 = lora::worker::v1;

// ---------------------------------------------------------------- workers

absl::StatusOr<wv1::RegisterAck> JobManager::WorkerConnected(
    const wv1::Register& reg, std::shared_ptr<WorkerChannel> channel) {
  if (reg.worker_id().empty())
    return absl::InvalidArgumentError("register.worker_id: must not be empty");
  absl::MutexLock lock(&mu_);
  if (shutdown_) return absl::UnavailableError("lorad is shutting down");
  LORA_RETURN_IF_ERROR(CheckLeading());
  const std::string& wid = reg.worker_id();
  // A stale stream of the same worker: it reconnected before the old one was noticed gone.
  if (std::shared_ptr<WorkerChannel> stale = workers_.Connect(reg, std::move(channel), absl::Now()))
    stale->Close();

  std::set<RankKey> reported;
  wv1::RegisterAck ack;
  ack.set_heartbeat_interval_ms(options_.heartbeat_interval_ms);
  ack.set_controller_version("lorad 0.1.0");
  for (const wv1::RunningRank& rr : reg.running()) {
    const auto& ref = rr.ref();
    const RankKey key{ref.job_id(), ref.attempt(), ref.rank()};
    reported.insert(key);
    ActiveJob* a = FindRank(ref, wid);
    if (a != nullptr && !a->rt.ranks[static_cast<size_t>(ref.rank())].exited &&
        !a->rt.ranks[static_cast<size_t>(ref.rank())].lost) {
      wv1::RunningRank* resume = ack.add_resume_from();
      *resume->mutable_ref() = ref;
      resume->set_last_event_seq(ref.rank() < a->job.rank_event_sequences_size()
                                     ? a->job.rank_event_sequences(ref.rank())
                                     : 0);
    } else {
      // Not ours (any more): stop it; its slot stays busy until it exits.
      draining_[key] = wid;
      *ack.add_stop() = ref;
    }
  }
  // Draining ranks this worker no longer runs have stopped.
  for (auto it = draining_.begin(); it != draining_.end();) {
    it = it->second == wid && !reported.count(it->first) ? draining_.erase(it) : std::next(it);
  }
  // Ranks this worker should be running but does not report are gone.
  std::vector<std::string> lost_jobs;
  for (auto& [id, a] : active_) {
    bool hit = false;
    for (size_t r = 0; r < a.rt.ranks.size(); ++r) {
      RankSlot& slot = a.rt.ranks[r];
      if (slot.worker_id == wid && slot.assigned && !slot.exited && !slot.lost &&
          !reported.count({id, a.job.attempt(), static_cast<int>(r)})) {
        slot.lost = true;
        hit = true;
      }
    }
    if (hit) {
      if (a.rt.lost_reason.empty())
        a.rt.lost_reason = absl::StrCat("worker ", wid, " restarted and lost its rank");
      lost_jobs.push_back(id);
    }
  }
  for (const std::string& id : lost_jobs) {
    auto it = active_.find(id);
    if (it != active_.end()) Decide(it->second);
  }
  Schedule();
  return ack;
}

void JobManager::WorkerDisconnected(const std::string& worker_id, const WorkerChannel* channel) {
  absl::MutexLock lock(&mu_);
  // Its ranks are kept for heartbeat_timeout: the worker may reconnect with them still running.
  workers_.Disconnect(worker_id, channel, absl::Now());
}

void JobManager::OnHeartbeat(const std::string& worker_id, bool draining) {
  absl::MutexLock lock(&mu_);
  workers_.Heartbeat(worker_id, absl::Now());
  workers_.SetDraining(worker_id, draining);
}

void JobManager::OnAlive(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  workers_.Heartbeat(worker_id, absl::Now());
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
  // Rank health is display state: it is stored with the job's next change.
  if (accepted.ref().rank() < a->job.ranks_size())
    a->job.mutable_ranks(accepted.ref().rank())->set_state(lora::v1::RANK_STARTED);
  if (accepted.ref().rank() == 0 && a->rt.master_port == 0) {
    a->rt.master_port = accepted.master_port();
    for (size_t r = 1; r < a->rt.ranks.size(); ++r) SendAssignment(*a, static_cast<int>(r));
  }
}

void JobManager::OnRankEvent(const std::string& worker_id, const wv1::RankEvent& event) {
  std::vector<std::string> pruned;
  std::string job_id;
  {
    absl::MutexLock lock(&mu_);
    ActiveJob* a = FindRank(event.ref(), worker_id);
    if (a == nullptr) return;
    const int rank = event.ref().rank();
    Job next = a->job;
    while (next.rank_event_sequences_size() < static_cast<int>(a->rt.ranks.size()))
      next.add_rank_event_sequences(0);
    if (event.worker_seq() <= next.rank_event_sequences(rank)) return;  // a re-send
    next.set_rank_event_sequences(rank, event.worker_seq());
    const std::string id = a->job.id();
    ArtifactLookup lookup = [this, &id](const std::string& path) {
      return store_->GetArtifact(id, path);
    };
    TranslatedEvent t = TranslateEngineEvent(
        event.event(), rank, static_cast<int>(a->rt.ranks.size()), lookup, NowMicros(), &next);
    absl::Status s;
    if (t.checkpoint) s = store_->PutCheckpoint(id, *t.checkpoint);
    if (s.ok()) {
      if (a->job.state() == lora::v1::STARTING) {
        s = Transition(*a, std::move(next), lora::v1::RUNNING, "ranks started",
                       std::move(t.events));
      } else {
        s = Commit(*a, PlanEvents(std::move(next), std::move(t.events), NowMicros()));
      }
    }
    if (!s.ok()) {
      // Nothing of the event was applied. The worker re-sends everything after the last stored
      // sequence when it reconnects: make it reconnect.
      LogStoreError(a->job, s, "an engine event");
      if (WorkerChannel* channel = workers_.Channel(worker_id)) channel->Close();
      return;
    }
    if (t.rank0_finished) a->rt.rank0_finished = true;
    if (t.failure_reason) {
      a->rt.failure_reason = *t.failure_reason;
      a->rt.failure_code = t.failure_code;
    }
    if (t.checkpoint) pruned = PruneCheckpoints(a->job);
    job_id = id;
  }
  if (!pruned.empty()) DeleteArtifactFiles(job_id, pruned);
}

void JobManager::OnRankExited(const std::string& worker_id, const wv1::RankExited& exited) {
  absl::MutexLock lock(&mu_);
  const auto& ref = exited.ref();
  if (draining_.erase({ref.job_id(), ref.attempt(), ref.rank()}) > 0) {
    Schedule();
    return;
  }
  ActiveJob* a = FindRank(ref, worker_id);
  if (a == nullptr) return;
  RankSlot& slot = a->rt.ranks[static_cast<size_t>(ref.rank())];
  if (slot.exited || slot.lost) return;
  slot.exited = true;
  slot.exit_code = exited.exit_code();
  slot.signal = exited.signal();
  slot.exit_reason = exited.reason();
  if (ref.rank() < a->job.ranks_size()) {
    lora::v1::RankStatus* status = a->job.mutable_ranks(ref.rank());
    status->set_state(lora::v1::RANK_EXITED);
    status->set_exit_code(exited.exit_code());
    status->set_signal(exited.signal());
  }
  Decide(*a);
  Schedule();
}

absl::Status JobManager::OnArtifactStored(const wv1::UploadHeader& header,
                                          const lora::v1::ArtifactFile& file) {
  return store_->PutArtifact(header.ref().job_id(), file, header.step(), header.ref().attempt());
}

std::vector<std::string> JobManager::PruneCheckpoints(const Job& job) {
  const int keep = job.spec().checkpoint().keep_latest();
  if (keep <= 0) return {};
  auto checkpoints = store_->ListCheckpoints(job.id());
  if (!checkpoints.ok() || static_cast<int>(checkpoints->size()) <= keep) return {};
  const int64_t first_kept = (*checkpoints)[checkpoints->size() - static_cast<size_t>(keep)].step();
  auto removed = store_->DeleteCheckpointsBefore(job.id(), first_kept);
  if (!removed.ok()) {
    // The records stay, and so do their files: retried after the next checkpoint.
    LogStoreError(job, removed.status(), "checkpoint retention");
    return {};
  }
  return *std::move(removed);
}

void JobManager::DeleteArtifactFiles(const std::string& job_id,
                                     const std::vector<std::string>& paths) {
  const std::string job_root = JoinPath(artifacts_->root(), job_id);
  for (const std::string& path : paths) {
    auto file = artifacts_->PathOf(job_id, path);
    if (!file.ok()) continue;
    ::unlink(file->c_str());  // a file already gone is what we wanted
    RemoveEmptyDirectories(ParentDirectory(*file), job_root);  // the emptied step directory
  }
}

}  // namespace lora::server
