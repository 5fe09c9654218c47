#include "common/process_stats.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lora {
namespace {

absl::StatusOr<std::string> ReadProcFile(const char* path) {
  std::ifstream in(path);
  if (!in) return absl::UnavailableError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// /proc/stat's "btime" line: when the system booted, in Unix seconds. Constant, read once.
int64_t BootTimeSeconds() {
  static const int64_t boot = [] {
    auto text = ReadProcFile("/proc/stat");
    if (!text.ok()) return int64_t{0};
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      if (!absl::ConsumePrefix(&line, "btime ")) continue;
      int64_t value = 0;
      if (absl::SimpleAtoi(line, &value)) return value;
    }
    return int64_t{0};
  }();
  return boot;
}

int64_t CountOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int64_t n = 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // not the descriptor opendir itself holds
}

}  // namespace

int64_t PeakRssBytes() {
  struct rusage usage;
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

absl::StatusOr<ProcessStats> ParseProcStat(const std::string& stat, int64_t page_size,
                                           double ticks_per_second, int64_t boot_time_seconds) {
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so the fields start
  // after the last ')'. Numbered from 1 as in proc(5): state is field 3.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return absl::InternalError("/proc/self/stat: no ')'");
  std::vector<absl::string_view> f = absl::StrSplit(absl::string_view(stat).substr(close + 1),
                                                    absl::ByAnyChar(" \n"), absl::SkipEmpty());
  auto field = [&](int number, int64_t* out) {
    const size_t i = static_cast<size_t>(number - 3);
    return i < f.size() && absl::SimpleAtoi(f[i], out);
  };
  int64_t utime = 0, stime = 0, starttime = 0, vsize = 0, rss = 0;
  if (!field(14, &utime) || !field(15, &stime) || !field(22, &starttime) || !field(23, &vsize) ||
      !field(24, &rss)) {
    return absl::InternalError("/proc/self/stat: too few fields");
  }
  ProcessStats s;
  s.cpu_seconds = static_cast<double>(utime + stime) / ticks_per_second;
  s.virtual_memory_bytes = vsize;
  s.resident_memory_bytes = rss * page_size;
  s.start_time_seconds =
      static_cast<double>(boot_time_seconds) + static_cast<double>(starttime) / ticks_per_second;
  return s;
}

absl::StatusOr<ProcessStats> ReadProcessStats() {
  absl::StatusOr<std::string> stat = ReadProcFile("/proc/self/stat");
  if (!stat.ok()) return stat.status();
  static const int64_t page_size = ::sysconf(_SC_PAGESIZE);
  static const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  absl::StatusOr<ProcessStats> s = ParseProcStat(*stat, page_size, ticks, BootTimeSeconds());
  if (!s.ok()) return s.status();
  s->open_fds = CountOpenFds();
  struct rlimit limit;
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    s->max_fds = limit.rlim_cur == RLIM_INFINITY ? -1 : static_cast<int64_t>(limit.rlim_cur);
  }
  return s;
}

}  // namespace lora
