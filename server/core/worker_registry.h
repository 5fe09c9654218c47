// The workers lorad knows: their stream (while connected), capabilities and liveness. Not
// thread-safe: the JobManager holds its lock around every call. Slot usage is not kept here;
// it is derived from the jobs' ranks (JobManager::UsedSlots), so it cannot drift.
//
//   WorkerRegistry workers;
//   auto stale = workers.Connect(reg, channel, absl::Now());   // close `stale` if non-null
//   for (auto& [id, why] : workers.Expired(absl::Now(), absl::Seconds(15))) ...
//
// Invariants: a cuda worker never advertises more slots than GPUs; every worker has >= 1 slot.
#ifndef LORA_SERVER_CORE_WORKER_REGISTRY_H_
#define LORA_SERVER_CORE_WORKER_REGISTRY_H_

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "lora/worker/v1/worker_service.pb.h"
#include "server/core/scheduler.h"

namespace lora::server {

// The way to one connected worker. Send must not block (queue the message).
class WorkerChannel {
 public:
  virtual ~WorkerChannel() = default;
  virtual void Send(const lora::worker::v1::ControllerMessage& message) = 0;
  // Ends the stream (the worker reconnects and registers again).
  virtual void Close() = 0;
};

// What a worker may run: at least one slot; a cuda worker one rank per advertised GPU.
lora::worker::v1::Capabilities NormalizeCapabilities(lora::worker::v1::Capabilities caps);

class WorkerRegistry {
 public:
  struct Worker {
    std::shared_ptr<WorkerChannel> channel;  // null while disconnected
    lora::worker::v1::Capabilities capabilities;
    std::string address;
    absl::Time last_seen;
    bool draining = false;  // shutting down: no new ranks
  };

  // Registers (or re-registers) a worker on `channel`. Returns the worker's previous stream
  // when it was a different one (the caller closes it), else null.
  std::shared_ptr<WorkerChannel> Connect(const lora::worker::v1::Register& reg,
                                         std::shared_ptr<WorkerChannel> channel, absl::Time now);
  // The stream ended. Its ranks are kept: the worker may come back with them still running.
  // False when `channel` is not the worker's current stream (a stale one ended).
  bool Disconnect(const std::string& id, const WorkerChannel* channel, absl::Time now);
  void Heartbeat(const std::string& id, absl::Time now);
  void SetDraining(const std::string& id, bool draining);
  // Workers silent for longer than `timeout`, with why ("missed heartbeats", "disconnected").
  std::vector<std::pair<std::string, std::string>> Expired(absl::Time now,
                                                           absl::Duration timeout) const;
  // Forgets a worker; returns its stream (to close) or null.
  std::shared_ptr<WorkerChannel> Remove(const std::string& id);

  const Worker* Find(const std::string& id) const;
  // The stream of a connected worker, or null.
  WorkerChannel* Channel(const std::string& id) const;
  const std::map<std::string, Worker>& all() const { return workers_; }

 private:
  std::map<std::string, Worker> workers_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_WORKER_REGISTRY_H_
