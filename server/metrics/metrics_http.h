// An HTTP endpoint for Prometheus scrapes, on civetweb:
//   GET /metrics  the registry in the text exposition format (0.0.4)
//   GET /healthz  "ok"
//   GET /leader   "leader" (200) while the `leading` callback says so, else "follower" (503):
//                 a readiness probe that routes a Service to the replica that leads
//
//   LORA_ASSIGN_OR_RETURN(auto server, MetricsHttpServer::Create(&registry, "0.0.0.0:9090"));
//   LOG << "metrics on port " << server->port();  // the bound port, also for "127.0.0.1:0"
//
// The registry must outlive the server; destroying the server stops it and waits for the
// requests in flight.
#ifndef LORA_SERVER_METRICS_METRICS_HTTP_H_
#define LORA_SERVER_METRICS_METRICS_HTTP_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/metrics/metrics.h"

struct mg_context;

namespace lora {

class MetricsHttpServer {
 public:
  // `listen`: "HOST:PORT" with a numeric IPv4 host ("127.0.0.1:9090", "0.0.0.0:0"), or
  // ":PORT" / "PORT" for every interface; a bracketed IPv6 host ("[::1]:0") only where
  // civetweb was built with IPv6 (Debian 12's was not). Port 0 picks a free port.
  // InvalidArgument for a malformed address, Unavailable when it cannot be bound.
  // `leading` answers /leader (unset: always the leader); it must be cheap and thread-safe.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Create(
      const MetricsRegistry* registry, const std::string& listen,
      std::function<bool()> leading = nullptr);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;

  mg_context* context_ = nullptr;
  int port_ = 0;
  std::string connect_host_;  // how the destructor reaches the listener to wake it
  std::function<bool()> leading_;
};

}  // namespace lora

#endif  // LORA_SERVER_METRICS_METRICS_HTTP_H_
