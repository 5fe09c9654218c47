// Callbacks the gRPC adapters report through (metrics), so they do not depend on a metrics
// library. Every member may be empty.
#ifndef LORA_SERVER_GRPC_SERVICE_HOOKS_H_
#define LORA_SERVER_GRPC_SERVICE_HOOKS_H_

#include <grpcpp/support/status.h>

#include <cstdint>
#include <functional>
#include <string>

namespace lora::server {

struct ServiceHooks {
  std::function<void(const std::string& method, grpc::StatusCode code, double seconds)> on_rpc;
  std::function<void(int64_t bytes)> on_artifact_bytes_sent;
  std::function<void(int64_t bytes)> on_artifact_bytes_received;
  std::function<void(int delta)> on_watch_streams;
  // A live event's time from its publication (after the store commit) to gRPC completing its
  // write to one WatchJob stream: the server's share of delivery latency.
  std::function<void(double seconds)> on_watch_delivery;

  void Rpc(const std::string& method, grpc::StatusCode code, double seconds) const {
    if (on_rpc) on_rpc(method, code, seconds);
  }
};

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_SERVICE_HOOKS_H_
