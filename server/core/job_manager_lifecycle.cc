// JobManager: pausing, resuming and deleting jobs, and retention of finished ones.
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "server/core/job_manager.h"

namespace lora::server {

using lora::v1::Job;

absl::StatusOr<Job> JobManager::PauseJob(const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  absl::MutexLock lock(&mu_);
  LORA_RETURN_IF_ERROR(CheckLeading());
  ActiveJob* found = FindActive(id);
  if (found == nullptr) {
    LORA_ASSIGN_OR_RETURN(Job job, store_->GetJob(id));
    return absl::FailedPreconditionError(
        absl::StrCat(name, " has ended (", lora::v1::JobState_Name(job.state()), ")"));
  }
  ActiveJob& a = *found;
  switch (a.job.state()) {
    case lora::v1::QUEUED:
      LORA_RETURN_IF_ERROR(Transition(a, a.job, lora::v1::PAUSED, "paused before it started"));
      return a.job;
    case lora::v1::STARTING:
    case lora::v1::RUNNING:
      LORA_RETURN_IF_ERROR(Transition(a, a.job, lora::v1::PAUSING, "pause requested"));
      // The ranks stop as for a drain: a checkpoint, its upload, exit 75.
      SendCancel(a, "pause requested");
      a.rt.cancel_deadline = absl::Now() + options_.cancel_grace + absl::Seconds(5);
      return a.job;
    case lora::v1::CANCELLING:
      return absl::FailedPreconditionError(absl::StrCat(name, " is being cancelled"));
    default:
      return a.job;  // PAUSING or PAUSED already
  }
}

absl::StatusOr<Job> JobManager::ResumeJob(const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  absl::MutexLock lock(&mu_);
  LORA_RETURN_IF_ERROR(CheckLeading());
  ActiveJob* found = FindActive(id);
  lora::v1::JobState state;
  if (found != nullptr) {
    state = found->job.state();
  } else {
    LORA_ASSIGN_OR_RETURN(Job ended, store_->GetJob(id));
    state = ended.state();
  }
  if (found == nullptr || state != lora::v1::PAUSED) {
    return absl::FailedPreconditionError(absl::StrCat(name, " is ", lora::v1::JobState_Name(state),
                                                      "; only a PAUSED job can be resumed"));
  }
  ActiveJob& a = *found;
  const std::string reason =
      a.job.latest_checkpoint_step() > 0
          ? absl::StrCat("resumed; continues from step ", a.job.latest_checkpoint_step())
          : "resumed";
  LORA_RETURN_IF_ERROR(Transition(a, a.job, lora::v1::QUEUED, reason));
  Schedule();
  auto it = active_.find(id);
  return it != active_.end() ? it->second.job : store_->GetJob(id);
}

absl::Status JobManager::DeleteJob(const std::string& name) {
  LORA_ASSIGN_OR_RETURN(std::string id, JobId(name));
  {
    absl::MutexLock lock(&mu_);
    LORA_RETURN_IF_ERROR(CheckLeading());
    if (ActiveJob* a = FindActive(id)) {
      return absl::FailedPreconditionError(
          absl::StrCat(name, " is ", lora::v1::JobState_Name(a->job.state()),
                       "; only a job that has ended can be deleted (cancel it first)"));
    }
  }
  // Records first: once they are gone nothing names the files, and a crash before the files go
  // leaves only bytes that the next delete of this directory, or an operator, can remove.
  LORA_RETURN_IF_ERROR(store_->DeleteJob(id));
  return RemoveAll(JoinPath(artifacts_->root(), id));
}

int JobManager::DeleteFinishedBefore(absl::Time cutoff, int limit) {
  if (!leading()) return 0;
  absl::StatusOr<std::vector<std::string>> ids =
      store_->JobsEndedBefore(absl::ToUnixMicros(cutoff), limit);
  if (!ids.ok()) return 0;
  int deleted = 0;
  for (const std::string& id : *ids) {
    if (DeleteJob("jobs/" + id).ok()) ++deleted;
  }
  return deleted;
}

}  // namespace lora::server
