// The process_* metrics every Prometheus client library exports, and a build-info gauge:
//   process_cpu_seconds_total           user + system CPU time (counter)
//   process_resident_memory_bytes       resident set size
//   process_virtual_memory_bytes        virtual memory size
//   process_open_fds                    open file descriptors
//   process_max_fds                     the descriptor limit (RLIMIT_NOFILE, soft)
//   process_start_time_seconds          when the process started, Unix time
//   <name>{version,revision,compiler,...} 1
//
//   LORA_RETURN_IF_ERROR(RegisterProcessMetrics(&registry));
//   LORA_RETURN_IF_ERROR(RegisterBuildInfo(&registry, "lorad_build_info",
//                                          {{"grpc_version", grpc::Version()}}));
//
// Values are read from /proc/self at scrape time (common/process_stats.h).
#ifndef LORA_SERVER_METRICS_PROCESS_METRICS_H_
#define LORA_SERVER_METRICS_PROCESS_METRICS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "server/metrics/metrics.h"

namespace lora {

// Unavailable (and nothing registered) where /proc/self cannot be read.
absl::Status RegisterProcessMetrics(MetricsRegistry* registry);

// What this binary was built from: the CMake project version, the git commit (`git rev-parse`
// at build time; "unknown" outside a git checkout, or -DLORA_REVISION=...), the compiler.
struct BuildInfo {
  std::string version;
  std::string revision;
  std::string compiler;
};
const BuildInfo& GetBuildInfo();

// A gauge `name` at 1 whose labels are version, revision, compiler and then `extra`.
absl::Status RegisterBuildInfo(MetricsRegistry* registry, const std::string& name,
                               const std::vector<std::pair<std::string, std::string>>& extra = {});

}  // namespace lora

#endif  // LORA_SERVER_METRICS_PROCESS_METRICS_H_
