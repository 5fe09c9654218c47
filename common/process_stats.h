// What this process has used so far, for reports, health events and the process_* metrics.
//
//   auto stats = lora::ReadProcessStats();   // /proc/self: one read of stat, a walk of fd/
//   if (stats.ok()) registry gauge = stats->resident_memory_bytes;
#ifndef LORA_COMMON_PROCESS_STATS_H_
#define LORA_COMMON_PROCESS_STATS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace lora {

// Peak resident set size of this process, in bytes (getrusage's ru_maxrss).
int64_t PeakRssBytes();

// The figures Prometheus clients export as process_* (client_golang's procfs collector reads
// the same files): Linux only.
struct ProcessStats {
  double cpu_seconds = 0;             // user + system time (/proc/self/stat utime + stime)
  int64_t resident_memory_bytes = 0;  // rss pages * page size
  int64_t virtual_memory_bytes = 0;   // vsize
  double start_time_seconds = 0;      // Unix time the process started (boot time + starttime)
  int64_t open_fds = 0;               // entries of /proc/self/fd
  int64_t max_fds = 0;                // RLIMIT_NOFILE's soft limit
};

// Unavailable when /proc cannot be read (no procfs mounted), Internal when it does not parse.
absl::StatusOr<ProcessStats> ReadProcessStats();

// Parses the text of /proc/<pid>/stat (exposed for tests): fills cpu, memory and start time.
// `boot_time_seconds` is /proc/stat's btime, `ticks_per_second` sysconf(_SC_CLK_TCK).
absl::StatusOr<ProcessStats> ParseProcStat(const std::string& stat, int64_t page_size,
                                           double ticks_per_second, int64_t boot_time_seconds);

}  // namespace lora

#endif  // LORA_COMMON_PROCESS_STATS_H_
