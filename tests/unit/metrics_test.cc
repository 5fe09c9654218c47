#include "server/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/process_stats.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/job_metrics.h"
#include "server/metrics/metrics_http.h"
#include "server/metrics/process_metrics.h"
#include "server/metrics/rpc_metrics.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(FormatMetricValueTest, SpellsValuesThePrometheusWay) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(-0.0), "0");
  EXPECT_EQ(FormatMetricValue(3), "3");
  EXPECT_EQ(FormatMetricValue(-42), "-42");
  EXPECT_EQ(FormatMetricValue(1e6), "1000000");
  EXPECT_EQ(FormatMetricValue(9007199254740991.0), "9007199254740991");
  EXPECT_EQ(FormatMetricValue(0.1), "0.1");
  EXPECT_EQ(FormatMetricValue(2.5), "2.5");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  // Everything else round-trips exactly.
  for (double v : {1.0 / 3, 1e-300, 1e300, 123456.789, -2.2250738585072014e-308, 1e20}) {
    std::string text = FormatMetricValue(v);
    EXPECT_EQ(std::strtod(text.c_str(), nullptr), v) << text;
  }
}

TEST(MetricsRegistryTest, RendersCountersSortedByNameAndLabels) {
  MetricsRegistry registry;
  Counter* rpcs =
      registry.AddCounter("lorad_rpcs_total", "RPCs handled.", {"method", "code"}).value();
  Counter* starts = registry.AddCounter("lorad_starts_total", "Process starts.", {}).value();
  rpcs->WithLabels({"SubmitJob", "OK"})->Increment();
  rpcs->WithLabels({"GetJob", "OK"})->Increment(2);
  rpcs->WithLabels({"GetJob", "NOT_FOUND"})->Increment(0.5);
  rpcs->WithLabels({"GetJob", "OK"})->Increment(-5);  // ignored: counters never go down
  EXPECT_EQ(registry.Render(),
            "# HELP lorad_rpcs_total RPCs handled.\n"
            "# TYPE lorad_rpcs_total counter\n"
            "lorad_rpcs_total{method=\"GetJob\",code=\"NOT_FOUND\"} 0.5\n"
            "lorad_rpcs_total{method=\"GetJob\",code=\"OK\"} 2\n"
            "lorad_rpcs_total{method=\"SubmitJob\",code=\"OK\"} 1\n"
            "# HELP lorad_starts_total Process starts.\n"
            "# TYPE lorad_starts_total counter\n"
            "lorad_starts_total 0\n");
  EXPECT_EQ(starts->WithLabels({})->Value(), 0);
}

TEST(MetricsRegistryTest, RendersGaugesAndCallbackGauges) {
  MetricsRegistry registry;
  Gauge* queued = registry.AddGauge("lorad_jobs", "Jobs by state.", {"state"}).value();
  queued->WithLabels({"running"})->Set(3);
  queued->WithLabels({"queued"})->Increment(5);
  queued->WithLabels({"queued"})->Decrement(2);
  queued->WithLabels({"failed"})->Set(-1.25);
  double workers = 2;
  ASSERT_TRUE(
      registry.AddCallbackGauge("lorad_workers", "Connected workers.", [&] { return workers; })
          .ok());
  workers = 7;  // read at scrape time, not registration time
  ASSERT_TRUE(registry.AddGauge("lorad_empty", "No child yet.", {"x"}).ok());
  EXPECT_EQ(registry.Render(),
            "# HELP lorad_jobs Jobs by state.\n"
            "# TYPE lorad_jobs gauge\n"
            "lorad_jobs{state=\"failed\"} -1.25\n"
            "lorad_jobs{state=\"queued\"} 3\n"
            "lorad_jobs{state=\"running\"} 3\n"
            "# HELP lorad_workers Connected workers.\n"
            "# TYPE lorad_workers gauge\n"
            "lorad_workers 7\n");
}

TEST(MetricsRegistryTest, RendersHistogramsWithCumulativeBuckets) {
  MetricsRegistry registry;
  Histogram* latency = registry
                           .AddHistogram("lorad_rpc_duration_seconds", "RPC latency.", {"method"},
                                         {0.01, 0.1, 1, std::numeric_limits<double>::infinity()})
                           .value();
  EXPECT_EQ(latency->bounds(), (std::vector<double>{0.01, 0.1, 1}));
  HistogramChild* get = latency->WithLabels({"GetJob"});
  get->Observe(0.005);
  get->Observe(0.01);  // bounds are inclusive
  get->Observe(0.5);
  get->Observe(3);
  get->Observe(std::nan(""));  // ignored
  EXPECT_EQ(registry.Render(),
            "# HELP lorad_rpc_duration_seconds RPC latency.\n"
            "# TYPE lorad_rpc_duration_seconds histogram\n"
            "lorad_rpc_duration_seconds_bucket{method=\"GetJob\",le=\"0.01\"} 2\n"
            "lorad_rpc_duration_seconds_bucket{method=\"GetJob\",le=\"0.1\"} 2\n"
            "lorad_rpc_duration_seconds_bucket{method=\"GetJob\",le=\"1\"} 3\n"
            "lorad_rpc_duration_seconds_bucket{method=\"GetJob\",le=\"+Inf\"} 4\n"
            "lorad_rpc_duration_seconds_sum{method=\"GetJob\"} 3.515\n"
            "lorad_rpc_duration_seconds_count{method=\"GetJob\"} 4\n");

  MetricsRegistry unlabeled;
  Histogram* sizes = unlabeled.AddHistogram("lorad_batch_size", "Batch sizes.", {}, {}).value();
  sizes->WithLabels({})->Observe(4);
  EXPECT_EQ(unlabeled.Render(),
            "# HELP lorad_batch_size Batch sizes.\n"
            "# TYPE lorad_batch_size histogram\n"
            "lorad_batch_size_bucket{le=\"+Inf\"} 1\n"
            "lorad_batch_size_sum 4\n"
            "lorad_batch_size_count 1\n");
}

TEST(MetricsRegistryTest, EscapesHelpAndLabelValues) {
  MetricsRegistry registry;
  Counter* c =
      registry.AddCounter("errors_total", "Errors \"quoted\", back\\slash,\nnewline.", {"msg"})
          .value();
  c->WithLabels({"a \"b\" c\\d\ne"})->Increment();
  EXPECT_EQ(registry.Render(),
            "# HELP errors_total Errors \"quoted\", back\\\\slash,\\nnewline.\n"
            "# TYPE errors_total counter\n"
            "errors_total{msg=\"a \\\"b\\\" c\\\\d\\ne\"} 1\n");
}

TEST(MetricsRegistryTest, ReplacesInvalidUtf8InLabelValues) {
  MetricsRegistry registry;
  Counter* c = registry.AddCounter("jobs_total", "Jobs.", {"name"}).value();
  CounterChild* bad = c->WithLabels({"caf\xc3"});  // truncated sequence
  EXPECT_EQ(bad, c->WithLabels({"caf\xef\xbf\xbd"}));
  bad->Increment();
  c->WithLabels({"caf\xc3\xa9"})->Increment();  // valid UTF-8 is kept as is
  EXPECT_THAT(registry.Render(), HasSubstr("jobs_total{name=\"caf\xef\xbf\xbd\"} 1\n"));
  EXPECT_THAT(registry.Render(), HasSubstr("jobs_total{name=\"caf\xc3\xa9\"} 1\n"));
}

TEST(MetricsRegistryTest, ChildrenAreStableAndWrongArityIsNotExported) {
  MetricsRegistry registry;
  Counter* c = registry.AddCounter("rpcs_total", "RPCs.", {"method", "code"}).value();
  CounterChild* first = c->WithLabels({"GetJob", "OK"});
  for (int i = 0; i < 100; ++i) c->WithLabels({"M" + std::to_string(i), "OK"});
  EXPECT_EQ(first, c->WithLabels({"GetJob", "OK"}));

  MetricsRegistry small;
  Counter* s = small.AddCounter("rpcs_total", "RPCs.", {"method"}).value();
  CounterChild* detached = s->WithLabels({"GetJob", "extra"});
  ASSERT_NE(detached, nullptr);
  detached->Increment();
  EXPECT_EQ(small.Render(), "");
}

TEST(MetricsRegistryTest, RejectsInvalidNames) {
  MetricsRegistry registry;
  auto code = [](const absl::Status& status) { return status.code(); };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(registry.AddGauge("", "h", {}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("1abc", "h", {}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("a-b", "h", {}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("a b", "h", {}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("caf\xc3\xa9", "h", {}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("g", "h", {"1x"}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("g", "h", {"a:b"}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("g", "h", {"__name"}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("g", "h", {"x", "x"}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("g", "h", {""}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddCounter("requests", "h", {}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("requests_total", "h", {}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h_seconds", "h", {"le"}, {1}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h_seconds", "h", {}, {2, 1}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h_seconds", "h", {}, {1, 1}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h_seconds", "h", {}, {std::nan("")}).status()), kInvalid);
  EXPECT_EQ(code(registry.AddCallbackGauge("cb", "h", nullptr)), kInvalid);
  // None of the failures took the names.
  EXPECT_TRUE(registry.AddGauge("g", "h", {"_ok", "a1"}).ok());
  EXPECT_TRUE(registry.AddGauge("ns:sub_name", "h", {}).ok());
  EXPECT_TRUE(registry.AddHistogram("h_seconds", "h", {}, {1, 2}).ok());
  EXPECT_EQ(registry.Render().find("__"), std::string::npos);
}

TEST(MetricsRegistryTest, RejectsDuplicateNamesAndSeriesCollisions) {
  MetricsRegistry registry;
  const auto kExists = absl::StatusCode::kAlreadyExists;
  ASSERT_TRUE(registry.AddCounter("x_total", "h", {}).ok());
  EXPECT_EQ(registry.AddCounter("x_total", "h", {"a"}).status().code(), kExists);
  ASSERT_TRUE(registry.AddGauge("depth", "h", {}).ok());
  EXPECT_EQ(registry.AddGauge("depth", "h", {}).status().code(), kExists);
  EXPECT_EQ(registry.AddCallbackGauge("depth", "h", [] { return 1.0; }).code(), kExists);
  ASSERT_TRUE(registry.AddHistogram("latency_seconds", "h", {}, {1}).ok());
  EXPECT_EQ(registry.AddGauge("latency_seconds_count", "h", {}).status().code(), kExists);
  EXPECT_EQ(registry.AddGauge("latency_seconds_bucket", "h", {}).status().code(), kExists);
  ASSERT_TRUE(registry.AddGauge("size_sum", "h", {}).ok());
  EXPECT_EQ(registry.AddHistogram("size", "h", {}, {1}).status().code(), kExists);
}

TEST(MetricsRegistryTest, ConcurrentUpdatesSumExactly) {
  MetricsRegistry registry;
  Counter* c = registry.AddCounter("ops_total", "Ops.", {"worker"}).value();
  Gauge* g = registry.AddGauge("level", "Level.", {}).value();
  Histogram* h = registry.AddHistogram("value_seconds", "Values.", {"worker"}, {1, 2}).value();
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  std::atomic<bool> done{false};
  // A scraper and a registrar run alongside: neither may block or corrupt the updates.
  std::thread scraper([&] {
    while (!done.load()) EXPECT_THAT(registry.Render(), HasSubstr("# TYPE level gauge"));
  });
  std::thread registrar([&] {
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(registry.AddGauge(absl::StrCat("extra_", i), "x", {}).ok());
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        // Half the threads share one child, the others resolve their own every time.
        c->WithLabels({t % 2 == 0 ? "shared" : absl::StrCat("w", t)})->Increment();
        g->WithLabels({})->Increment(0.5);
        h->WithLabels({"shared"})->Observe(i % 3);  // 0, 1, 2: one per bucket
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done = true;
  scraper.join();
  registrar.join();

  EXPECT_EQ(c->WithLabels({"shared"})->Value(), kThreads / 2 * kIterations);
  for (int t = 1; t < kThreads; t += 2) {
    EXPECT_EQ(c->WithLabels({absl::StrCat("w", t)})->Value(), kIterations);
  }
  EXPECT_EQ(g->WithLabels({})->Value(), kThreads * kIterations * 0.5);
  HistogramChild::Snapshot snapshot = h->WithLabels({"shared"})->Read();
  const uint64_t total = uint64_t{kThreads} * kIterations;
  EXPECT_EQ(snapshot.cumulative.back(), total);
  uint64_t ones = 0, twos = 0;  // observations per thread; zeros and ones land in le="1"
  for (int i = 0; i < kIterations; ++i) {
    if (i % 3 == 1) ++ones;
    if (i % 3 == 2) ++twos;
  }
  EXPECT_EQ(snapshot.cumulative[0], total - kThreads * twos);
  EXPECT_EQ(snapshot.cumulative[1], total);
  EXPECT_EQ(snapshot.sum, static_cast<double>(kThreads * (ones + 2 * twos)));
}

// --- process_*, build info, per-method RPCs, jobs

TEST(ProcessStatsTest, ValuesArePlausible) {
  auto stats = ReadProcessStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->resident_memory_bytes, 1 << 20);
  EXPECT_GE(stats->virtual_memory_bytes, stats->resident_memory_bytes);
  EXPECT_GE(stats->cpu_seconds, 0);
  EXPECT_GT(stats->open_fds, 2);  // stdin, stdout, stderr at least
  EXPECT_TRUE(stats->max_fds == -1 || stats->max_fds >= stats->open_fds) << stats->max_fds;
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  // This test process started moments ago (boot time and clock ticks round to ~1 s).
  EXPECT_LT(stats->start_time_seconds, now + 2);
  EXPECT_GT(stats->start_time_seconds, now - 3600);
  EXPECT_LE(stats->resident_memory_bytes, PeakRssBytes() + (64 << 20));

  // Descriptors are counted live, without the one the count itself opens.
  std::vector<int> fds;
  for (int i = 0; i < 10; ++i) fds.push_back(::dup(2));
  auto more = ReadProcessStats();
  ASSERT_TRUE(more.ok());
  EXPECT_EQ(more->open_fds, stats->open_fds + 10);
  for (int fd : fds) ::close(fd);

  // CPU time moves with work.
  volatile double sink = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (std::chrono::steady_clock::now() < until) sink = sink + std::sqrt(sink + 1);
  EXPECT_GT(ReadProcessStats()->cpu_seconds, stats->cpu_seconds);
}

TEST(ProcessStatsTest, ParsesStatWithSpacesAndParenthesesInTheName) {
  // Fields after the name: state(3) ppid ... utime(14) stime(15) ... starttime(22) vsize(23)
  // rss(24). The name "(a) b)" has a space and a ')' of its own.
  std::string stat =
      "4242 ((a) b)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 1 0 "
      "5000 1048576000 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0\n";
  auto s = ParseProcStat(stat, 4096, 100, 1700000000);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->cpu_seconds, 4.0);  // (250 + 150) / 100
  EXPECT_EQ(s->virtual_memory_bytes, 1048576000);
  EXPECT_EQ(s->resident_memory_bytes, 2560 * 4096);
  EXPECT_DOUBLE_EQ(s->start_time_seconds, 1700000050.0);  // boot + 5000 / 100
  EXPECT_EQ(ParseProcStat("4242 (x) S 1 2", 4096, 100, 0).status().code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(ParseProcStat("garbage", 4096, 100, 0).status().code(), absl::StatusCode::kInternal);
}

// The names, types and help every Prometheus client uses, so dashboards work unchanged.
TEST(ProcessMetricsTest, ExportsTheClientConventions) {
  MetricsRegistry registry;
  ASSERT_TRUE(RegisterProcessMetrics(&registry).ok());
  const std::string text = registry.Render();
  for (const char* line :
       {"# TYPE process_cpu_seconds_total counter\n",
        "# TYPE process_resident_memory_bytes gauge\n",
        "# TYPE process_virtual_memory_bytes gauge\n", "# TYPE process_open_fds gauge\n",
        "# TYPE process_max_fds gauge\n", "# TYPE process_start_time_seconds gauge\n"}) {
    EXPECT_THAT(text, HasSubstr(line));
  }
  auto value = [&](const std::string& name) {
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (absl::ConsumePrefix(&line, name + " "))
        return std::strtod(std::string(line).c_str(), nullptr);
    }
    return std::nan("");
  };
  EXPECT_GT(value("process_resident_memory_bytes"), 0);
  EXPECT_GT(value("process_open_fds"), 0);
  EXPECT_GE(value("process_cpu_seconds_total"), 0);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_GT(value("process_start_time_seconds"), now - 3600);
  EXPECT_LT(value("process_start_time_seconds"), now + 2);
  // Registered twice is a name clash, not a second set.
  EXPECT_EQ(RegisterProcessMetrics(&registry).code(), absl::StatusCode::kAlreadyExists);
}

TEST(ProcessMetricsTest, CallbackCountersAreCountersAndNamedLikeThem) {
  MetricsRegistry registry;
  EXPECT_TRUE(registry.AddCallbackCounter("x_seconds_total", "X.", [] { return 2.5; }).ok());
  EXPECT_EQ(registry.AddCallbackCounter("x_seconds", "X.", [] { return 1.0; }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddCallbackCounter("y_total", "Y.", nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Render(),
            "# HELP x_seconds_total X.\n# TYPE x_seconds_total counter\n"
            "x_seconds_total 2.5\n");
}

TEST(BuildInfoTest, NamesVersionRevisionAndCompiler) {
  const BuildInfo& info = GetBuildInfo();
  EXPECT_EQ(info.version, "0.1.0");
  EXPECT_FALSE(info.revision.empty());  // a commit, or "unknown" outside git
  EXPECT_THAT(info.compiler, ::testing::MatchesRegex("(gcc|clang) [0-9]+\\.[0-9]+\\.[0-9]+"));
  MetricsRegistry registry;
  ASSERT_TRUE(RegisterBuildInfo(&registry, "lorad_build_info", {{"grpc_version", "1.51.1"}}).ok());
  EXPECT_THAT(
      registry.Render(),
      HasSubstr(absl::StrCat("lorad_build_info{version=\"0.1.0\",revision=\"", info.revision,
                             "\",compiler=\"", info.compiler, "\",grpc_version=\"1.51.1\"} 1\n")));
}

// Every method's series exist at zero from the start, and streams are not latencies.
TEST(RpcMetricsTest, StreamsHaveTheirOwnHistogram) {
  MetricsRegistry registry;
  auto rpc = RpcMetrics::Create(&registry).value();
  rpc->AddMethod("GetJob", /*streaming=*/false);
  rpc->AddMethod("WatchJob", /*streaming=*/true);
  rpc->AddMethod("WatchJob", /*streaming=*/true);  // harmless
  std::string text = registry.Render();
  for (int code = 0; code <= 16; ++code) {
    for (const char* method : {"GetJob", "WatchJob"}) {
      EXPECT_THAT(text, HasSubstr(absl::StrCat("lorad_rpc_requests_total{method=\"", method,
                                               "\",code=\"", RpcCodeName(code), "\"} 0\n")));
    }
  }
  EXPECT_THAT(text, HasSubstr("lorad_rpc_duration_seconds_count{method=\"GetJob\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("lorad_rpc_stream_duration_seconds_count{method=\"WatchJob\"} 0\n"));
  EXPECT_THAT(text, Not(HasSubstr("lorad_rpc_duration_seconds_count{method=\"WatchJob\"}")));
  EXPECT_THAT(text, Not(HasSubstr("lorad_rpc_stream_duration_seconds_count{method=\"GetJob\"}")));

  rpc->Record("WatchJob", 0, 111.0);  // a watch that followed a job for 111 s
  rpc->Record("GetJob", 5, 0.003);
  rpc->Record("NotListed", 14, 0.2);  // a method nobody added counts as unary
  rpc->Record("GetJob", 99, 0.003);   // an out-of-range code is UNKNOWN
  text = registry.Render();
  EXPECT_THAT(text, HasSubstr("lorad_rpc_requests_total{method=\"WatchJob\",code=\"OK\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("lorad_rpc_stream_duration_seconds_bucket{method=\"WatchJob\",le=\"60\"} "
                        "0\n"));
  EXPECT_THAT(text,
              HasSubstr("lorad_rpc_stream_duration_seconds_bucket{method=\"WatchJob\",le=\"300\"} "
                        "1\n"));
  EXPECT_THAT(text, HasSubstr("lorad_rpc_stream_duration_seconds_sum{method=\"WatchJob\"} 111\n"));
  EXPECT_THAT(text, Not(HasSubstr("lorad_rpc_duration_seconds_count{method=\"WatchJob\"}")));
  EXPECT_THAT(text,
              HasSubstr("lorad_rpc_requests_total{method=\"GetJob\",code=\"NOT_FOUND\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("lorad_rpc_requests_total{method=\"GetJob\",code=\"UNKNOWN\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("lorad_rpc_duration_seconds_count{method=\"GetJob\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("lorad_rpc_duration_seconds_count{method=\"NotListed\"} 1\n"));
  EXPECT_TRUE(rpc->IsStreaming("WatchJob"));
  EXPECT_FALSE(rpc->IsStreaming("GetJob"));
}

TEST(JobMetricsTest, EveryKnownCombinationStartsAtZero) {
  MetricsRegistry registry;
  auto jobs = JobMetrics::Create(&registry).value();
  std::string text = registry.Render();
  for (const std::string& kind : JobMetrics::Kinds()) {
    for (const std::string& state : JobMetrics::FinalStates()) {
      EXPECT_THAT(text, HasSubstr(absl::StrCat("lorad_jobs_finished_total{kind=\"", kind,
                                               "\",state=\"", state, "\"} 0\n")));
    }
  }
  for (const std::string& reason : JobMetrics::RetryReasons()) {
    EXPECT_THAT(text,
                HasSubstr(absl::StrCat("lorad_job_retries_total{reason=\"", reason, "\"} 0\n")));
  }
  for (const std::string& reason : JobMetrics::WorkerLostReasons()) {
    EXPECT_THAT(text,
                HasSubstr(absl::StrCat("lorad_workers_lost_total{reason=\"", reason, "\"} 0\n")));
  }
  jobs->JobFinished("merge", "FAILED");
  jobs->JobRetried("worker_lost");
  jobs->JobRetried("worker_lost");
  jobs->WorkerLost("missed_heartbeats");
  text = registry.Render();
  EXPECT_THAT(text, HasSubstr("lorad_jobs_finished_total{kind=\"merge\",state=\"FAILED\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("lorad_job_retries_total{reason=\"worker_lost\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("lorad_workers_lost_total{reason=\"missed_heartbeats\"} 1\n"));
}

// --- promtool

// A registry with every metric type, labels, escapes and special values.
std::string RenderEverything() {
  MetricsRegistry registry;
  Counter* rpcs =
      registry
          .AddCounter("lorad_rpcs_total", "RPCs handled, by method and code.", {"method", "code"})
          .value();
  rpcs->WithLabels({"GetJob", "OK"})->Increment(12);
  rpcs->WithLabels({"SubmitJob", "INVALID_ARGUMENT"})->Increment();
  registry.AddCounter("lorad_restarts_total", "Restarts.\nSecond line \\ with backslash.", {})
      .value();
  Gauge* jobs = registry.AddGauge("lorad_jobs", "Jobs by state.", {"state", "note"}).value();
  jobs->WithLabels({"running", "quote \" back \\ nl \n end"})->Set(2);
  jobs->WithLabels({"queued", "caf\xc3\xa9 \xff"})->Set(std::nan(""));
  jobs->WithLabels({"failed", ""})->Set(-std::numeric_limits<double>::infinity());
  Histogram* latency = registry
                           .AddHistogram("lorad_call_duration_seconds", "Call latency.", {"method"},
                                         DefaultLatencyBuckets())
                           .value();
  for (double v : {0.001, 0.02, 0.3, 4.0, 50.0}) latency->WithLabels({"GetJob"})->Observe(v);
  latency->WithLabels({"SubmitJob"});
  registry.AddCallbackGauge("lorad_uptime_seconds", "Seconds since start.", [] { return 1234.5; })
      .IgnoreError();
  // What lorad registers besides: process_*, build info, per-method RPCs, job counters.
  MetricsRegistry lorad;
  EXPECT_TRUE(RegisterProcessMetrics(&lorad).ok());
  EXPECT_TRUE(RegisterBuildInfo(&lorad, "lorad_build_info", {{"grpc_version", "1.51.1"}}).ok());
  auto rpc = RpcMetrics::Create(&lorad).value();
  rpc->AddMethod("CreateJob", false);
  rpc->AddMethod("WatchJob", true);
  rpc->Record("WatchJob", 0, 111);
  rpc->Record("CreateJob", 3, 0.002);
  auto job_metrics = JobMetrics::Create(&lorad).value();
  job_metrics->JobFinished("train", "SUCCEEDED");
  return registry.Render() + lorad.Render();
}

std::string FindPromtool() {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "", ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/promtool");
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return ::access("/usr/bin/promtool", X_OK) == 0 ? "/usr/bin/promtool" : "";
}

TEST(MetricsRegistryTest, PromtoolAcceptsTheExposition) {
  std::string promtool = FindPromtool();
  ASSERT_FALSE(promtool.empty())
      << "promtool not found (Debian package `prometheus`, see scripts/install-deps.sh)";
  testing::TempDir dir;
  std::string input = dir.Join("metrics.txt");
  std::string text = RenderEverything();
  std::ofstream(input) << text;
  std::string command = absl::StrCat(promtool, " check metrics < ", input, " 2>&1");
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) output.append(buf, n);
  int status = ::pclose(pipe);
  // promtool exits 1 for parse errors and for lint problems (naming, missing HELP) alike.
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "promtool said:\n"
                                                             << output << "\non:\n"
                                                             << text;
}

// --- HTTP

struct HttpResponse {
  int status = 0;
  std::string headers;  // lower-cased
  std::string body;
};

// A one-shot HTTP/1.0 client: the server closes the connection after the response.
HttpResponse HttpRequest(int port, const std::string& method, const std::string& path) {
  HttpResponse response;
  const std::string raw = testing::RawHttpRequest(port, method, path);
  size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos || raw.size() < 12) return response;
  response.status = std::atoi(raw.substr(9, 3).c_str());  // "HTTP/1.1 200 OK"
  response.headers = absl::AsciiStrToLower(raw.substr(0, end));
  response.body = raw.substr(end + 4);
  return response;
}

TEST(MetricsHttpServerTest, ServesMetricsAndHealthOnAnEphemeralPort) {
  MetricsRegistry registry;
  Counter* c = registry.AddCounter("lorad_rpcs_total", "RPCs.", {"method"}).value();
  c->WithLabels({"GetJob"})->Increment(3);
  auto server = MetricsHttpServer::Create(&registry, "127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status();
  int port = (*server)->port();
  ASSERT_GT(port, 0);

  HttpResponse metrics = HttpRequest(port, "GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_THAT(metrics.headers, HasSubstr("content-type: text/plain; version=0.0.4; charset=utf-8"));
  EXPECT_EQ(metrics.body, registry.Render());
  EXPECT_THAT(metrics.body, HasSubstr("lorad_rpcs_total{method=\"GetJob\"} 3\n"));

  c->WithLabels({"GetJob"})->Increment();  // every scrape renders afresh
  EXPECT_THAT(HttpRequest(port, "GET", "/metrics").body,
              HasSubstr("lorad_rpcs_total{method=\"GetJob\"} 4\n"));

  HttpResponse health = HttpRequest(port, "GET", "/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "ok");

  HttpResponse head = HttpRequest(port, "HEAD", "/metrics");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");

  EXPECT_EQ(HttpRequest(port, "POST", "/metrics").status, 405);
  EXPECT_EQ(HttpRequest(port, "GET", "/").status, 404);
  EXPECT_EQ(HttpRequest(port, "GET", "/metricsx").status, 404);
}

TEST(MetricsHttpServerTest, LeaderAnswersOkOnlyWhileThisReplicaLeads) {
  MetricsRegistry registry;
  std::atomic<bool> leading{false};
  auto server = MetricsHttpServer::Create(&registry, "127.0.0.1:0", [&] { return leading.load(); });
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  EXPECT_EQ(HttpRequest(port, "GET", "/leader").status, 503);
  EXPECT_EQ(HttpRequest(port, "GET", "/healthz").status, 200);  // alive all the same
  leading = true;
  HttpResponse leader = HttpRequest(port, "GET", "/leader");
  EXPECT_EQ(leader.status, 200);
  EXPECT_EQ(leader.body, "leader");
  // Without replicas there is no one else to route to.
  auto single = MetricsHttpServer::Create(&registry, "127.0.0.1:0");
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(HttpRequest((*single)->port(), "GET", "/leader").status, 200);
}

// Issue 12, finding 6: 40 connections that send nothing starved /healthz (the liveness probe)
// for minutes: 2 threads, each held 10 s per idle client. Health answers within 3 s now.
TEST(MetricsHttpServerTest, IdleConnectionsDoNotStarveHealth) {
  MetricsRegistry registry;
  auto server = MetricsHttpServer::Create(&registry, "127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    idle.push_back(fd);
  }
  const auto start = std::chrono::steady_clock::now();
  HttpResponse health = HttpRequest(port, "GET", "/healthz");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(health.status, 200);
  EXPECT_LT(seconds, 3.0);
  for (int fd : idle) ::close(fd);
}

TEST(MetricsHttpServerTest, StopsOnDestructionAndReportsBindFailures) {
  MetricsRegistry registry;
  auto first = MetricsHttpServer::Create(&registry, "127.0.0.1:0");
  ASSERT_TRUE(first.ok()) << first.status();
  int port = (*first)->port();
  auto second = MetricsHttpServer::Create(&registry, absl::StrCat("127.0.0.1:", port));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  first->reset();
  EXPECT_EQ(HttpRequest(port, "GET", "/healthz").status, 0);  // connection refused
}

TEST(MetricsHttpServerTest, StopsPromptlyAfterServing) {
  MetricsRegistry registry;
  // Wildcard addresses too: the destructor must find its way back to the listener.
  for (const char* listen : {"127.0.0.1:0", "0.0.0.0:0", ":0", "0"}) {
    auto server = MetricsHttpServer::Create(&registry, listen);
    ASSERT_TRUE(server.ok()) << server.status();
    EXPECT_EQ(HttpRequest((*server)->port(), "GET", "/healthz").body, "ok") << listen;
    auto start = std::chrono::steady_clock::now();
    server->reset();
    // civetweb alone would sit out its 2 s accept poll here.
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1000)) << listen;
  }
}

TEST(MetricsHttpServerTest, RejectsMalformedListenAddresses) {
  MetricsRegistry registry;
  for (const char* listen : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:70000",
                             "127.0.0.1:80,127.0.0.1:443s", "127.0.0.1:443s", "localhost:0"}) {
    EXPECT_EQ(MetricsHttpServer::Create(&registry, listen).status().code(),
              absl::StatusCode::kInvalidArgument)
        << listen;
  }
  EXPECT_EQ(MetricsHttpServer::Create(nullptr, "127.0.0.1:0").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MetricsHttpServerTest, LeavesSigchldAlone) {
  struct sigaction before;
  ::sigaction(SIGCHLD, nullptr, &before);
  MetricsRegistry registry;
  auto server = MetricsHttpServer::Create(&registry, "127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status();
  struct sigaction after;
  ::sigaction(SIGCHLD, nullptr, &after);
  EXPECT_EQ(before.sa_handler, after.sa_handler);
}

}  // namespace
}  // namespace lora
