// JobManager on a replica of a shared store: following the leader's writes for watchers, and
// taking over when elected.
#include "absl/strings/str_cat.h"
#include "common/not_leader.h"
#include "common/status_macros.h"
#include "server/core/job_manager.h"

namespace lora::server {

using lora::v1::JobEvent;

namespace {
// Events read per watched job per Tick: a job that logged more than this in one Tick catches
// up over the next ones instead of stalling the others.
constexpr int kFollowBatch = 500;
}  // namespace

bool JobManager::leading() {
  absl::MutexLock lock(&mu_);
  return leading_;
}

absl::Status JobManager::CheckWritable() {
  absl::MutexLock lock(&mu_);
  return CheckLeading();
}

void JobManager::SetLeaderHint(const std::string& leader) {
  absl::MutexLock lock(&mu_);
  leader_hint_ = leader;
}

absl::Status JobManager::CheckLeading() const {
  if (leading_) return absl::OkStatus();
  return NotLeaderError(
      absl::StrCat(
          "this lorad replica is a follower and serves reads only; writes and workers go "
          "to the leader",
          leader_hint_.empty() ? " (being elected; retry)" : absl::StrCat(" at ", leader_hint_)),
      leader_hint_);
}

absl::Status JobManager::Lead() {
  {
    absl::MutexLock lock(&mu_);
    if (leading_) return absl::OkStatus();
    // Their cursors came from the store; the leader's watchers start from its memory. Ending
    // them resumably keeps every watcher gapless across the switch.
    EndAllWatchers();
  }
  // Writes are still refused here (leading_ is false), so nothing changes the jobs between
  // reading them and serving them.
  LORA_RETURN_IF_ERROR(Recover());
  absl::MutexLock lock(&mu_);
  leading_ = true;
  leader_hint_.clear();
  return absl::OkStatus();
}

void JobManager::FollowWatched() {
  std::map<std::string, int64_t> followed;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_ || leading_) return;
    followed = followed_;
  }
  // Read without the lock: the store is remote, and Subscribe / GetJob must not wait on it.
  std::map<std::string, std::vector<JobEvent>> fresh;
  for (const auto& [id, after] : followed) {
    auto events = store_->ReadEvents(id, after, kFollowBatch);
    if (events.ok() && !events->empty()) fresh.emplace(id, std::move(*events));
  }
  absl::MutexLock lock(&mu_);
  for (auto& [id, events] : fresh) {
    auto cursor = followed_.find(id);
    if (cursor == followed_.end()) continue;  // unwatched since
    std::vector<JobEvent> unseen;             // an overlapping read may have delivered some already
    bool ended = false;
    for (JobEvent& e : events) {
      if (e.sequence() <= cursor->second) continue;
      cursor->second = e.sequence();
      if (e.has_state_change() && IsTerminal(e.state_change().to())) ended = true;
      unseen.push_back(std::move(e));
    }
    // published_at stays unset: lorad_watch_delivery_seconds measures from a commit in this
    // process, and this one happened in the leader.
    Deliver(id, std::move(unseen), std::nullopt);
    if (ended) CloseWatchers(id);
  }
}

}  // namespace lora::server
