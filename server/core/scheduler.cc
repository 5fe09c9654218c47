#include "server/core/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace lora::server {

std::map<std::string, DevicePool> PoolsOf(const std::vector<WorkerSlots>& workers) {
  std::map<std::string, DevicePool> pools;
  for (const WorkerSlots& w : workers) {
    DevicePool& pool = pools[w.device];
    ++pool.workers;
    pool.slots += w.slots;
  }
  return pools;
}

std::string QueueReason(const std::string& device, int ranks, const DevicePool& pool,
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

std::string TenantQuotaReason(const std::string& tenant, int running, int ranks, int limit) {
  if (limit <= 0 || running + ranks <= limit) return "";
  return absl::StrCat("tenant '", tenant, "' runs ", running, " of its ", limit,
                      " ranks; this job needs ", ranks, " (waits for the tenant's own jobs)");
}

bool Unschedulable(const QueuedJob& job, const std::map<std::string, DevicePool>& pools) {
  auto it = pools.find(job.device);
  return it == pools.end() || it->second.slots < job.ranks;
}

SchedulerOutput ScheduleJobs(const SchedulerInput& input) {
  SchedulerOutput out;
  out.queue_reasons.resize(input.queued.size());
  std::vector<size_t> order(input.queued.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const QueuedJob& x = input.queued[a];
    const QueuedJob& y = input.queued[b];
    if (x.priority != y.priority) return x.priority > y.priority;
    if (x.create_time_us != y.create_time_us) return x.create_time_us < y.create_time_us;
    return x.id < y.id;
  });
  std::vector<WorkerSlots> workers = input.workers;
  std::sort(workers.begin(), workers.end(),
            [](const WorkerSlots& a, const WorkerSlots& b) { return a.id < b.id; });
  const std::map<std::string, DevicePool> pools = PoolsOf(workers);
  const int connected = static_cast<int>(workers.size());
  std::map<std::string, int> running = input.running_ranks_by_tenant;
  std::map<std::string, const QueuedJob*> blocked_by;  // device -> the job holding its line
  for (size_t index : order) {
    const QueuedJob* job = &input.queued[index];
    std::string& reason = out.queue_reasons[index];
    const int n = std::max(1, job->ranks);
    if (std::string why = TenantQuotaReason(job->tenant, running[job->tenant], n,
                                            input.max_running_ranks_per_tenant);
        !why.empty()) {
      reason = std::move(why);
      continue;
    }
    if (auto it = blocked_by.find(job->device); it != blocked_by.end()) {
      reason = absl::StrCat("behind jobs/", it->second->id, " in the ", job->device,
                            " queue (FIFO within priority)");
      continue;
    }
    std::vector<WorkerSlots*> picked;
    for (WorkerSlots& w : workers) {
      if (w.device != job->device) continue;
      for (int free = w.slots - w.used; free > 0 && static_cast<int>(picked.size()) < n; --free)
        picked.push_back(&w);
    }
    if (static_cast<int>(picked.size()) < n) {
      blocked_by[job->device] = job;
      auto pool = pools.find(job->device);
      reason = QueueReason(job->device, n, pool == pools.end() ? DevicePool{} : pool->second,
                           static_cast<int>(picked.size()), connected);
      continue;
    }
    Placement p;
    p.job = index;
    for (WorkerSlots* w : picked) {
      ++w->used;
      p.workers.push_back(w->id);
    }
    running[job->tenant] += n;
    out.placements.push_back(std::move(p));
  }
  return out;
}

}  // namespace lora::server
