// Gang scheduling as a pure function: a snapshot of the queue and the connected workers in,
// placements and queue reasons out. No locks, no I/O: the JobManager builds the snapshot under
// its lock and applies the decision (each placement is committed before its slots count).
//
//   SchedulerInput in;
//   in.queued = {{.id = "a", .device = "cpu", .ranks = 2, ...}};
//   in.workers = {{.id = "w1", .device = "cpu", .slots = 2, .used = 0}};
//   SchedulerOutput out = ScheduleJobs(in);   // out.placements[0]: job 0 on {"w1", "w1"}
//
// Policy (each rule has a test in tests/unit/scheduler_test.cc):
// - Order: priority (higher first), then create time, then id (FIFO within priority).
// - Gang: a job starts with all its ranks at once or not at all.
// - Device pools (cpu, cuda) are separate queues: a job waiting for GPUs never holds up CPU jobs.
// - Within a pool the first job that cannot start holds the line (no starvation of large jobs).
// - A tenant over its running-ranks quota waits for its own jobs and does not hold the line.
// - Ranks fill workers in id order, lowest-numbered free slots first.
#ifndef LORA_SERVER_CORE_SCHEDULER_H_
#define LORA_SERVER_CORE_SCHEDULER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lora::server {

struct QueuedJob {
  std::string id;  // reasons name it as jobs/{id}
  std::string tenant;
  std::string device;  // cpu | cuda
  int priority = 0;
  int64_t create_time_us = 0;
  int ranks = 1;
};

struct WorkerSlots {
  std::string id;
  std::string device;
  int slots = 1;
  int used = 0;  // held by running or still-stopping ranks
};

struct SchedulerInput {
  std::vector<QueuedJob> queued;     // any order
  std::vector<WorkerSlots> workers;  // connected workers only
  std::map<std::string, int> running_ranks_by_tenant;
  int max_running_ranks_per_tenant = 0;  // 0 = no quota
};

struct Placement {
  size_t job = 0;                    // index into SchedulerInput::queued
  std::vector<std::string> workers;  // by rank
};

struct SchedulerOutput {
  std::vector<Placement> placements;  // in the order they were decided
  // By index into SchedulerInput::queued: why that job waits ("" for a placed job). A vector,
  // not a map: this runs on every create and event, over the whole queue.
  std::vector<std::string> queue_reasons;
};

SchedulerOutput ScheduleJobs(const SchedulerInput& input);

// The connected workers of one device: jobs of that device share their slots.
struct DevicePool {
  int workers = 0;
  int slots = 0;
};
std::map<std::string, DevicePool> PoolsOf(const std::vector<WorkerSlots>& workers);

// Why a job of `ranks` ranks on `device` cannot start now (Job.queue_reason).
std::string QueueReason(const std::string& device, int ranks, const DevicePool& pool,
                        int free_slots, int connected_workers);

// Why a job of `ranks` more ranks of `tenant` must wait for the tenant's own jobs, or "" when
// its quota allows it (limit 0: none).
std::string TenantQuotaReason(const std::string& tenant, int running, int ranks, int limit);

// Whether no amount of waiting lets the job start with the workers connected now (no worker
// has its device, or all of them together have fewer slots than its ranks).
bool Unschedulable(const QueuedJob& job, const std::map<std::string, DevicePool>& pools);

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_SCHEDULER_H_
