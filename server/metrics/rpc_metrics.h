// Per-method gRPC metrics, unary calls and streams kept apart:
//   lorad_rpc_requests_total{method,code}             every finished call
//   lorad_rpc_duration_seconds{method}                unary calls only: a latency
//   lorad_rpc_stream_duration_seconds{method}         streaming calls: how long a stream stayed
//                                                     open (a 111 s WatchJob is not a latency)
//
//   LORA_ASSIGN_OR_RETURN(auto rpc, RpcMetrics::Create(&registry));
//   rpc->AddMethod("GetJob", /*streaming=*/false);   // series at zero from the start
//   rpc->AddMethod("WatchJob", /*streaming=*/true);
//   rpc->Record("WatchJob", /*code=*/0, 111.0);      // -> the stream histogram
//
// Every method added gets a requests_total series for each of the 17 status codes and its
// duration histogram at zero (as go-grpc-prometheus' InitializeMetrics does), so rates and
// ratios exist before the first call. A method recorded without being added counts as unary.
#ifndef LORA_SERVER_METRICS_RPC_METRICS_H_
#define LORA_SERVER_METRICS_RPC_METRICS_H_

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/metrics/metrics.h"

namespace lora {

// Stream durations: 100 ms to a day (a worker's Connect stream lives as long as the worker).
std::vector<double> StreamDurationBuckets();

// The canonical status code name ("OK", "INVALID_ARGUMENT", ...), "UNKNOWN" outside 0..16.
const char* RpcCodeName(int code);

class RpcMetrics {
 public:
  static absl::StatusOr<std::unique_ptr<RpcMetrics>> Create(MetricsRegistry* registry);

  // Thread-safe; adding a method twice is harmless.
  void AddMethod(const std::string& method, bool streaming);
  // One finished call: `code` is a gRPC status code (0..16), `seconds` how long it ran.
  void Record(const std::string& method, int code, double seconds);
  bool IsStreaming(const std::string& method) const;

 private:
  RpcMetrics(Counter* requests, Histogram* unary, Histogram* streams)
      : requests_(requests), unary_(unary), streams_(streams) {}

  Counter* const requests_;
  Histogram* const unary_;
  Histogram* const streams_;
  mutable absl::Mutex mu_;
  std::set<std::string> streaming_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lora

#endif  // LORA_SERVER_METRICS_RPC_METRICS_H_
