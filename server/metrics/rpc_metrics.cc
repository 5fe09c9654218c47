#include "server/metrics/rpc_metrics.h"

namespace lora {
namespace {

constexpr const char* kCodeNames[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};
constexpr int kCodeCount = sizeof(kCodeNames) / sizeof(kCodeNames[0]);

}  // namespace

std::vector<double> StreamDurationBuckets() {
  return {0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400};
}

const char* RpcCodeName(int code) {
  return code >= 0 && code < kCodeCount ? kCodeNames[code] : "UNKNOWN";
}

absl::StatusOr<std::unique_ptr<RpcMetrics>> RpcMetrics::Create(MetricsRegistry* registry) {
  absl::StatusOr<Counter*> requests =
      registry->AddCounter("lorad_rpc_requests_total",
                           "gRPC calls finished, by method and status code", {"method", "code"});
  if (!requests.ok()) return requests.status();
  absl::StatusOr<Histogram*> unary = registry->AddHistogram(
      "lorad_rpc_duration_seconds", "Latency of unary gRPC calls (streams are not in it)",
      {"method"}, DefaultLatencyBuckets());
  if (!unary.ok()) return unary.status();
  absl::StatusOr<Histogram*> streams = registry->AddHistogram(
      "lorad_rpc_stream_duration_seconds",
      "How long streaming gRPC calls stayed open (WatchJob, downloads, uploads, worker streams)",
      {"method"}, StreamDurationBuckets());
  if (!streams.ok()) return streams.status();
  return std::unique_ptr<RpcMetrics>(new RpcMetrics(*requests, *unary, *streams));
}

void RpcMetrics::AddMethod(const std::string& method, bool streaming) {
  if (streaming) {
    absl::MutexLock lock(&mu_);
    streaming_.insert(method);
  }
  for (const char* code : kCodeNames) requests_->WithLabels({method, code});
  (streaming ? streams_ : unary_)->WithLabels({method});
}

bool RpcMetrics::IsStreaming(const std::string& method) const {
  absl::ReaderMutexLock lock(&mu_);
  return streaming_.count(method) > 0;
}

void RpcMetrics::Record(const std::string& method, int code, double seconds) {
  requests_->WithLabels({method, RpcCodeName(code)})->Increment();
  (IsStreaming(method) ? streams_ : unary_)->WithLabels({method})->Observe(seconds);
}

}  // namespace lora
