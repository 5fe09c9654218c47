#include "server/metrics/process_metrics.h"

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/process_stats.h"
#include "server/metrics/build_revision.h"  // generated at build time: LORA_REVISION

namespace lora {
namespace {

// One read of /proc serves a whole scrape: the figures are rendered one after another, so a
// read younger than 100 ms is reused (and a walk of /proc/self/fd is not repeated per figure).
class CachedStats {
 public:
  absl::StatusOr<ProcessStats> Get() {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = std::chrono::steady_clock::now();
    if (!have_ || now - at_ > std::chrono::milliseconds(100)) {
      last_ = ReadProcessStats();
      at_ = now;
      have_ = true;
    }
    return last_;
  }

 private:
  std::mutex mu_;
  bool have_ = false;
  std::chrono::steady_clock::time_point at_;
  absl::StatusOr<ProcessStats> last_;
};

// One figure; NaN when /proc stopped answering (the scrape still succeeds).
template <typename Field>
std::function<double()> Reader(std::shared_ptr<CachedStats> cache, Field field) {
  return [cache, field] {
    absl::StatusOr<ProcessStats> s = cache->Get();
    return s.ok() ? static_cast<double>((*s).*field) : std::nan("");
  };
}

}  // namespace

absl::Status RegisterProcessMetrics(MetricsRegistry* registry) {
  absl::StatusOr<ProcessStats> first = ReadProcessStats();
  if (!first.ok()) return first.status();
  const double start = first->start_time_seconds;  // constant
  auto cache = std::make_shared<CachedStats>();
  struct Spec {
    const char* name;
    const char* help;
    std::function<double()> fn;
    bool counter;
  };
  const Spec specs[] = {
      {"process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
       Reader(cache, &ProcessStats::cpu_seconds), true},
      {"process_resident_memory_bytes", "Resident memory size in bytes.",
       Reader(cache, &ProcessStats::resident_memory_bytes), false},
      {"process_virtual_memory_bytes", "Virtual memory size in bytes.",
       Reader(cache, &ProcessStats::virtual_memory_bytes), false},
      {"process_open_fds", "Number of open file descriptors.",
       Reader(cache, &ProcessStats::open_fds), false},
      {"process_max_fds", "Maximum number of open file descriptors.",
       Reader(cache, &ProcessStats::max_fds), false},
      {"process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
       [start] { return start; }, false},
  };
  for (const Spec& spec : specs) {
    absl::Status s = spec.counter ? registry->AddCallbackCounter(spec.name, spec.help, spec.fn)
                                  : registry->AddCallbackGauge(spec.name, spec.help, spec.fn);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

const BuildInfo& GetBuildInfo() {
  static const BuildInfo* info = new BuildInfo {
    LORA_VERSION, LORA_REVISION,
#if defined(__clang__)
        absl::StrCat("clang ", __clang_major__, ".", __clang_minor__, ".", __clang_patchlevel__),
#elif defined(__GNUC__)
        absl::StrCat("gcc ", __GNUC__, ".", __GNUC_MINOR__, ".", __GNUC_PATCHLEVEL__),
#else
        "unknown",
#endif
  };
  return *info;
}

absl::Status RegisterBuildInfo(MetricsRegistry* registry, const std::string& name,
                               const std::vector<std::pair<std::string, std::string>>& extra) {
  const BuildInfo& info = GetBuildInfo();
  std::vector<std::string> labels = {"version", "revision", "compiler"};
  std::vector<std::string> values = {info.version, info.revision, info.compiler};
  for (const auto& [label, value] : extra) {
    labels.push_back(label);
    values.push_back(value);
  }
  absl::StatusOr<Gauge*> gauge = registry->AddGauge(
      name, "What this binary was built from (labels); the value is always 1", labels);
  if (!gauge.ok()) return gauge.status();
  (*gauge)->WithLabels(values)->Set(1);
  return absl::OkStatus();
}

}  // namespace lora
