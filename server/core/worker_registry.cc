#include "server/core/worker_registry.h"

namespace lora::server {

lora::worker::v1::Capabilities NormalizeCapabilities(lora::worker::v1::Capabilities caps) {
  if (caps.slots() <= 0) caps.set_slots(1);
  // One rank per GPU: a cuda worker never gets more ranks than the GPUs it advertised.
  if (caps.device() == "cuda" && caps.gpus_size() > 0 && caps.slots() > caps.gpus_size())
    caps.set_slots(caps.gpus_size());
  return caps;
}

std::shared_ptr<WorkerChannel> WorkerRegistry::Connect(const lora::worker::v1::Register& reg,
                                                       std::shared_ptr<WorkerChannel> channel,
                                                       absl::Time now) {
  Worker& w = workers_[reg.worker_id()];
  std::shared_ptr<WorkerChannel> stale;
  if (w.channel && w.channel != channel) stale = std::move(w.channel);
  w.channel = std::move(channel);
  w.capabilities = NormalizeCapabilities(reg.capabilities());
  w.address = reg.address();
  w.last_seen = now;
  w.draining = reg.draining();
  return stale;
}

bool WorkerRegistry::Disconnect(const std::string& id, const WorkerChannel* channel,
                                absl::Time now) {
  auto it = workers_.find(id);
  if (it == workers_.end() || it->second.channel.get() != channel) return false;
  it->second.channel.reset();
  it->second.last_seen = now;
  return true;
}

void WorkerRegistry::Heartbeat(const std::string& id, absl::Time now) {
  auto it = workers_.find(id);
  if (it != workers_.end()) it->second.last_seen = now;
}

void WorkerRegistry::SetDraining(const std::string& id, bool draining) {
  auto it = workers_.find(id);
  if (it != workers_.end()) it->second.draining = draining;
}

std::vector<std::pair<std::string, std::string>> WorkerRegistry::Expired(
    absl::Time now, absl::Duration timeout) const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [id, w] : workers_) {
    if (now - w.last_seen > timeout)
      out.emplace_back(id, w.channel ? "missed heartbeats" : "disconnected");
  }
  return out;
}

std::shared_ptr<WorkerChannel> WorkerRegistry::Remove(const std::string& id) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return nullptr;
  std::shared_ptr<WorkerChannel> channel = std::move(it->second.channel);
  workers_.erase(it);
  return channel;
}

const WorkerRegistry::Worker* WorkerRegistry::Find(const std::string& id) const {
  auto it = workers_.find(id);
  return it == workers_.end() ? nullptr : &it->second;
}

WorkerChannel* WorkerRegistry::Channel(const std::string& id) const {
  auto it = workers_.find(id);
  return it == workers_.end() ? nullptr : it->second.channel.get();
}

}  // namespace lora::server
