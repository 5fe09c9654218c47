#include "server/metrics/job_metrics.h"

namespace lora {

const std::vector<std::string>& JobMetrics::Kinds() {
  static const auto* v = new std::vector<std::string>{"train", "convert", "merge"};
  return *v;
}

const std::vector<std::string>& JobMetrics::FinalStates() {
  static const auto* v = new std::vector<std::string>{"SUCCEEDED", "FAILED", "CANCELLED"};
  return *v;
}

const std::vector<std::string>& JobMetrics::RetryReasons() {
  static const auto* v =
      new std::vector<std::string>{"worker_lost", "killed", "unavailable", "planned_restart"};
  return *v;
}

const std::vector<std::string>& JobMetrics::WorkerLostReasons() {
  static const auto* v = new std::vector<std::string>{"missed_heartbeats", "disconnected"};
  return *v;
}

absl::StatusOr<std::unique_ptr<JobMetrics>> JobMetrics::Create(MetricsRegistry* registry) {
  absl::StatusOr<Counter*> finished =
      registry->AddCounter("lorad_jobs_finished_total",
                           "Jobs that reached a final state, by kind and state", {"kind", "state"});
  if (!finished.ok()) return finished.status();
  absl::StatusOr<Counter*> retries = registry->AddCounter(
      "lorad_job_retries_total",
      "Attempts given up with the job queued again (from its latest checkpoint), by reason",
      {"reason"});
  if (!retries.ok()) return retries.status();
  absl::StatusOr<Counter*> lost = registry->AddCounter(
      "lorad_workers_lost_total",
      "Workers given up on (their ranks are lost and their jobs retried), by reason", {"reason"});
  if (!lost.ok()) return lost.status();
  for (const std::string& kind : Kinds()) {
    for (const std::string& state : FinalStates()) (*finished)->WithLabels({kind, state});
  }
  for (const std::string& reason : RetryReasons()) (*retries)->WithLabels({reason});
  for (const std::string& reason : WorkerLostReasons()) (*lost)->WithLabels({reason});
  return std::unique_ptr<JobMetrics>(new JobMetrics(*finished, *retries, *lost));
}

void JobMetrics::JobFinished(const std::string& kind, const std::string& state) {
  finished_->WithLabels({kind, state})->Increment();
}

void JobMetrics::JobRetried(const std::string& reason) {
  retries_->WithLabels({reason})->Increment();
}

void JobMetrics::WorkerLost(const std::string& reason) { lost_->WithLabels({reason})->Increment(); }

}  // namespace lora
