// What happened to jobs and workers since lorad started, as counters:
//   lorad_jobs_finished_total{kind,state}   kind train|convert|merge, state SUCCEEDED|FAILED|
//                                           CANCELLED
//   lorad_job_retries_total{reason}         an attempt given up and the job queued again:
//                                           worker_lost, killed (a rank died by a signal),
//                                           unavailable (a peer or outputs lost in transit),
//                                           planned_restart (a drain; costs no attempt)
//   lorad_workers_lost_total{reason}        missed_heartbeats, disconnected (did not come back
//                                           within --heartbeat-timeout)
// Every combination above exists at zero from the start; other values (a future kind) appear
// when first counted.
//
//   LORA_ASSIGN_OR_RETURN(auto jobs, JobMetrics::Create(&registry));
//   jobs->JobFinished("train", "SUCCEEDED");
#ifndef LORA_SERVER_METRICS_JOB_METRICS_H_
#define LORA_SERVER_METRICS_JOB_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/metrics/metrics.h"

namespace lora {

class JobMetrics {
 public:
  static const std::vector<std::string>& Kinds();
  static const std::vector<std::string>& FinalStates();
  static const std::vector<std::string>& RetryReasons();
  static const std::vector<std::string>& WorkerLostReasons();

  static absl::StatusOr<std::unique_ptr<JobMetrics>> Create(MetricsRegistry* registry);

  void JobFinished(const std::string& kind, const std::string& state);
  void JobRetried(const std::string& reason);
  void WorkerLost(const std::string& reason);

 private:
  JobMetrics(Counter* finished, Counter* retries, Counter* lost)
      : finished_(finished), retries_(retries), lost_(lost) {}
  Counter* const finished_;
  Counter* const retries_;
  Counter* const lost_;
};

}  // namespace lora

#endif  // LORA_SERVER_METRICS_JOB_METRICS_H_
