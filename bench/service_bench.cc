// lorad figures: CreateJob throughput and latency with durable writes, plaintext and over TLS
// in the same run, submit-to-first-step latency, event delivery to 500 concurrent watchers (and
// lorad's RSS), artifact download rate. Starts its own lorad (and workers) on 127.0.0.1; prints
// a table. The TLS certificates are made with the openssl CLI at run time.
//
//   service_bench [--jobs 1000] [--clients 8] [--watchers 500] [--only create]
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include <cmath>
#include <limits>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "lora/v1/job_service.grpc.pb.h"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/postgres_server.h"
#include "tests/integration/subprocess.h"
#include "tests/integration/test_pki.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1,
                    static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

int64_t RssKb(pid_t pid, const char* field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::atoll(line.c_str() + std::strlen(field) + 1);
  }
  return 0;
}

double WallSeconds(const google::protobuf::Timestamp& t) {
  return static_cast<double>(t.seconds()) + t.nanos() * 1e-9;
}
double NowWall() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void Row(const std::string& what, const std::string& value) {
  std::cout << absl::StrFormat("%-58s %s\n", what, value);
}

// `tls_ca` empty: plaintext; otherwise lorad serves `tls` and clients trust `tls_ca`. Each
// client opens one connection (its handshake counts in its first call) and reuses it.
void CreateJobs(testing::TempDir& dir, int jobs, int clients, const testing::CertFiles* tls,
                const std::string& tls_ca, const std::string& store_url_file = "") {
  const std::string name = tls ? "create-tls" : "create";
  std::vector<std::string> args;
  if (tls) args = {"--tls-cert", tls->cert, "--tls-key", tls->key};
  if (!store_url_file.empty()) args.insert(args.end(), {"--store-url-file", store_url_file});
  testing::Lorad lorad({dir.Join(name), 0, 0, args});
  if (!lorad.Start()) {
    Row(absl::StrCat("CreateJob (", tls ? "TLS" : "plaintext", ")"), "lorad did not start");
    return;
  }
  // A replica on PostgreSQL follows until its first campaign elects it.
  for (int i = 0; i < 200 && !store_url_file.empty(); ++i) {
    if (absl::StrContains(testing::HttpGet(lorad.metrics_port(), "/leader"), " 200 ")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::vector<std::vector<double>> latencies(static_cast<size_t>(clients));
  std::vector<double> first(static_cast<size_t>(clients), 0.0);  // includes connect/handshake
  std::atomic<int> next{0}, errors{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      ClientOptions o;
      o.address = lorad.address();
      o.tls_ca = tls_ca;
      auto client = std::move(*LoraClient::Create(o));
      while (true) {
        const int i = next++;
        if (i >= jobs) break;
        auto spec = testing::TinyTrainSpec(10);
        const auto s = Clock::now();
        auto job = client->CreateJob(spec, "bench-" + std::to_string(i));
        const double ms = Ms(Clock::now() - s);
        auto& mine = latencies[static_cast<size_t>(c)];
        if (mine.empty()) first[static_cast<size_t>(c)] = ms;
        mine.push_back(ms);
        if (!job.ok()) ++errors;
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> all;
  for (auto& v : latencies) all.insert(all.end(), v.begin(), v.end());
  Row(absl::StrFormat("CreateJob %s, %d jobs, %d concurrent clients (durable when answered)",
                      tls ? "TLS      " : "plaintext", jobs, clients),
      absl::StrFormat("%.0f jobs/s; p50 %.2f ms, p99 %.2f ms; first call (connect%s) median "
                      "%.2f ms; %d errors",
                      jobs / seconds, Percentile(all, 0.5), Percentile(all, 0.99),
                      tls ? " + TLS handshake" : "", Percentile(first, 0.5), errors.load()));
}

// A growing backlog: `jobs` creates with no worker connected (every job stays queued), rate
// and p99 per tenth, so the cost of a create with a long queue shows against a short one.
// With `store_url_file` (PostgreSQL), lorad is a replica, and the end measures a failover
// instead of a restart: a second replica takes over from a leader killed with the backlog.
bool WaitLeading(testing::Lorad& lorad) {
  for (int i = 0; i < 400; ++i) {
    if (absl::StrContains(testing::HttpGet(lorad.metrics_port(), "/leader"), " 200 ")) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::vector<std::string> ReplicaArgs(const std::string& store_url_file, int port) {
  if (store_url_file.empty()) return {};
  return {"--store-url-file",   store_url_file,
          "--advertise",        absl::StrCat("127.0.0.1:", port),
          "--leader-lease-ttl", "2"};
}

void Backlog(testing::TempDir& dir, int jobs, int clients, const std::string& store_url_file = "") {
  const int port_a = testing::FreePort();
  testing::Lorad lorad({dir.Join("backlog"), 0, port_a, ReplicaArgs(store_url_file, port_a)});
  if (!lorad.Start()) return;
  if (!store_url_file.empty() && !WaitLeading(lorad)) {
    Row("backlog on PostgreSQL", "lorad was never elected");
    return;
  }
  const int tenth = std::max(1, jobs / 10);
  std::vector<std::vector<double>> latency(10);  // by tenth
  std::vector<double> tenth_end(10, 0);          // seconds since start when the tenth was done
  std::mutex mu;
  std::atomic<int> next{0}, done{0}, errors{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&] {
      ClientOptions o;
      o.address = lorad.address();
      auto client = std::move(*LoraClient::Create(o));
      while (true) {
        const int i = next++;
        if (i >= jobs) break;
        const auto s = Clock::now();
        auto job = client->CreateJob(testing::TinyTrainSpec(10), "");
        const double ms = Ms(Clock::now() - s);
        if (!job.ok()) ++errors;
        const int n = ++done;
        std::lock_guard<std::mutex> lock(mu);
        const int t = std::min(9, i / tenth);
        latency[static_cast<size_t>(t)].push_back(ms);
        if (n % tenth == 0 && n / tenth <= 10)
          tenth_end[static_cast<size_t>(n / tenth - 1)] =
              std::chrono::duration<double>(Clock::now() - t0).count();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int t = 0; t < 10; ++t) {
    const double start = t == 0 ? 0 : tenth_end[static_cast<size_t>(t - 1)];
    const double secs = tenth_end[static_cast<size_t>(t)] - start;
    Row(absl::StrFormat("CreateJob, queue %6d..%6d (%d clients)", t * tenth, (t + 1) * tenth,
                        clients),
        absl::StrFormat("%6.0f jobs/s; p50 %.2f ms, p99 %.2f ms", secs > 0 ? tenth / secs : 0,
                        Percentile(latency[static_cast<size_t>(t)], 0.5),
                        Percentile(latency[static_cast<size_t>(t)], 0.99)));
  }
  Row("errors", std::to_string(errors.load()));

  // Reading the backlog: pages of 50, newest first, from the start and from deep in the list.
  auto client = lorad.Client();
  std::vector<double> first_page, deep_page;
  std::string deep_token;
  {
    lora::v1::ListJobsRequest r;
    r.set_page_size(1000);
    for (int i = 0; i < 20; ++i) {  // 20,000 jobs in
      auto page = client->ListJobs(r);
      if (!page.ok() || page->next_page_token().empty()) break;
      r.set_page_token(page->next_page_token());
    }
    deep_token = r.page_token();
  }
  for (int i = 0; i < 200; ++i) {
    lora::v1::ListJobsRequest r;
    r.set_page_size(50);
    auto s = Clock::now();
    (void)client->ListJobs(r);
    first_page.push_back(Ms(Clock::now() - s));
    r.set_page_token(deep_token);
    s = Clock::now();
    (void)client->ListJobs(r);
    deep_page.push_back(Ms(Clock::now() - s));
  }
  Row(absl::StrFormat("ListJobs, 50 per page, over %d jobs: first page", jobs),
      absl::StrFormat("p50 %.2f ms, p99 %.2f ms", Percentile(first_page, 0.5),
                      Percentile(first_page, 0.99)));
  Row("ListJobs, 50 per page: a page 20,000 jobs deep",
      absl::StrFormat("p50 %.2f ms, p99 %.2f ms", Percentile(deep_page, 0.5),
                      Percentile(deep_page, 0.99)));
  if (!store_url_file.empty()) {
    const int port_b = testing::FreePort();
    testing::Lorad follower(
        {dir.Join("backlog"), 0, port_b, ReplicaArgs(store_url_file, port_b), "follower"});
    if (!follower.Start()) return;
    std::this_thread::sleep_for(std::chrono::seconds(2));  // following, its campaigns running
    auto c2 = follower.Client();
    const auto killed = Clock::now();
    lorad.Kill(SIGKILL);
    lorad.WaitExit(10);
    double took = -1;
    while (std::chrono::duration<double>(Clock::now() - killed).count() < 120) {
      if (c2->CreateJob(testing::TinyTrainSpec(10), "failover-probe").ok()) {
        took = std::chrono::duration<double>(Clock::now() - killed).count();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::string recovered = "?";
    const std::string log = follower.log();
    if (size_t at = log.find("took over in "); at != std::string::npos) {
      recovered = log.substr(at + 13, log.find(')', at) - at - 13);
    }
    Row(absl::StrFormat("failover with %d jobs queued (lease ttl 2 s): kill -9 of the leader -> "
                        "the follower accepts writes",
                        jobs),
        took < 0 ? "never" : absl::StrFormat("%.2f s (taking the jobs over: %s)", took, recovered));
    return;
  }
  // A restart with the whole backlog queued: from exec to serving (the harness waits for the
  // port) and to the first answer.
  lorad.Kill(SIGTERM);
  lorad.WaitExit(60);
  const int port = lorad.port();
  const auto t0r = Clock::now();
  testing::Lorad again({dir.Join("backlog"), 0, port, {}});
  if (!again.Start()) return;
  auto c2 = again.Client();
  auto any = c2->ListJobs(lora::v1::ListJobsRequest());
  Row(absl::StrFormat("lorad restart with %d jobs queued: start -> first ListJobs answered", jobs),
      absl::StrFormat("%.2f s%s", std::chrono::duration<double>(Clock::now() - t0r).count(),
                      any.ok() ? "" : " (the call failed)"));
}

void SubmitToFirstStep(testing::TempDir& dir) {
  testing::Lorad lorad({dir.Join("first"), 1, 0, {}});
  if (!lorad.Start()) return;
  auto client = lorad.Client();
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the local worker registers
  std::vector<double> ms;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    auto job = client->CreateJob(testing::TinyTrainSpec(3, 100), "");
    double first = -1;
    (void)client->Watch(job->name(), 0, [&](const lora::v1::JobEvent& e) {
      if (e.has_metrics() && first < 0) first = Ms(Clock::now() - t0);
      return true;
    });
    ms.push_back(first);
  }
  Row("submit -> first step event (tiny job, warm worker), 5 runs",
      absl::StrFormat("median %.0f ms, best %.0f ms", Percentile(ms, 0.5), Percentile(ms, 0.0)));
}

// Delivery delays in 1 ms bins up to 10 s (the last bin holds the rest), shared by many
// streams' callbacks.
class DelayBins {
 public:
  static constexpr int kBins = 10001;
  DelayBins() : bins_(kBins) {}
  void Add(double ms) {
    const int bin = std::clamp(static_cast<int>(ms), 0, kBins - 1);
    bins_[static_cast<size_t>(bin)].fetch_add(1, std::memory_order_relaxed);
  }
  // "bin:count bin:count ..." for the non-empty bins.
  std::string Format() const {
    std::string out;
    for (int b = 0; b < kBins; ++b) {
      const int64_t n = bins_[static_cast<size_t>(b)].load();
      if (n > 0) absl::StrAppend(&out, b, ":", n, " ");
    }
    return out;
  }

 private:
  std::vector<std::atomic<int64_t>> bins_;
};

// One WatchJob stream on the callback API (no thread of its own): counts the live step
// events' delivery delays (event time to arrival; history replayed at connect is skipped).
class WatchStream : public grpc::ClientReadReactor<lora::v1::JobEvent> {
 public:
  WatchStream(lora::v1::JobService::Stub* stub, const std::string& job, DelayBins* bins,
              std::atomic<int>* open, std::atomic<int>* failed)
      : bins_(bins), open_(open), failed_(failed), since_(NowWall()) {
    request_.set_name(job);
    ++*open_;
    stub->async()->WatchJob(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    const double at = WallSeconds(event_.time());
    if (event_.has_metrics() && at >= since_) bins_->Add((NowWall() - at) * 1000);
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& status) override {
    if (!status.ok()) ++*failed_;
    --*open_;
  }

 private:
  grpc::ClientContext context_;
  lora::v1::WatchJobRequest request_;
  lora::v1::JobEvent event_;
  DelayBins* bins_;
  std::atomic<int>* open_;
  std::atomic<int>* failed_;
  double since_;
};

// The body of one watcher process: `streams` streams spread over `jobs`, 100 per connection.
// Prints "failed N" and "bins ..." when every stream has ended.
int WatchChild(const std::string& address, const std::vector<std::string>& jobs, int streams) {
  DelayBins bins;
  std::atomic<int> open{0}, failed{0};
  std::vector<std::unique_ptr<lora::v1::JobService::Stub>> stubs;
  std::vector<std::unique_ptr<WatchStream>> all;
  for (int i = 0; i < streams; ++i) {
    if (i % 100 == 0) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
      stubs.push_back(lora::v1::JobService::NewStub(
          grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args)));
    }
    all.push_back(std::make_unique<WatchStream>(
        stubs.back().get(), jobs[static_cast<size_t>(i) % jobs.size()], &bins, &open, &failed));
  }
  while (open.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::cout << "failed " << failed.load() << "\nbins " << bins.Format() << "\n";
  return 0;
}

// Quantiles of merged "bin:count" lists.
struct Merged {
  std::vector<int64_t> bins = std::vector<int64_t>(DelayBins::kBins);
  int64_t total = 0;
  void Add(const std::string& line) {
    for (absl::string_view pair : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
      std::vector<std::string> kv = absl::StrSplit(pair, ':');
      int b = 0;
      int64_t n = 0;
      if (kv.size() == 2 && absl::SimpleAtoi(kv[0], &b) && absl::SimpleAtoi(kv[1], &n) && b >= 0 &&
          b < DelayBins::kBins) {
        bins[static_cast<size_t>(b)] += n;
        total += n;
      }
    }
  }
  // The upper edge of the bin holding quantile p, in ms.
  double Quantile(double p) const {
    int64_t seen = 0;
    for (int b = 0; b < DelayBins::kBins; ++b) {
      seen += bins[static_cast<size_t>(b)];
      if (seen > 0 && static_cast<double>(seen) >= p * static_cast<double>(total)) return b + 1;
    }
    return DelayBins::kBins;
  }
};

// lorad's own view: lorad_watch_delivery_seconds buckets -> the bucket bound holding p (ms).
std::string ServerDelivery(int metrics_port) {
  const std::string page = testing::HttpGet(metrics_port, "/metrics");
  std::vector<std::pair<double, double>> buckets;  // le, cumulative count
  for (absl::string_view line : absl::StrSplit(page, '\n')) {
    constexpr absl::string_view kPrefix = "lorad_watch_delivery_seconds_bucket{le=\"";
    if (!absl::StartsWith(line, kPrefix)) continue;
    line.remove_prefix(kPrefix.size());
    const size_t quote = line.find('"');
    const size_t space = line.rfind(' ');
    double le = 0, count = 0;
    const std::string bound(line.substr(0, quote));
    if (bound == "+Inf") {
      le = std::numeric_limits<double>::infinity();
    } else if (!absl::SimpleAtod(bound, &le)) {
      continue;
    }
    if (!absl::SimpleAtod(line.substr(space + 1), &count)) continue;
    buckets.emplace_back(le, count);
  }
  if (buckets.empty() || buckets.back().second == 0) return "no samples";
  auto bound_of = [&](double p) {
    for (const auto& [le, n] : buckets) {
      if (n >= p * buckets.back().second)
        return std::isinf(le) ? std::string(">5 s") : absl::StrFormat("<= %g ms", le * 1000);
    }
    return std::string("?");
  };
  return absl::StrFormat("%.0f writes; p50 %s, p99 %s", buckets.back().second, bound_of(0.5),
                         bound_of(0.99));
}

// `watchers` WatchJob streams over `jobs` training jobs (`steps` each), held by `processes`
// client processes on the callback API.
void ManyWatchers(testing::TempDir& dir, int watchers, int jobs, int processes, int steps) {
  testing::Lorad lorad({dir.Join(absl::StrCat("watch-", jobs)), std::min(jobs, 2), 0, {}});
  if (!lorad.Start()) return;
  auto client = lorad.Client();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const int64_t rss_before = RssKb(lorad.pid(), "VmRSS:");
  std::vector<std::string> names;
  for (int j = 0; j < jobs; ++j) {
    auto job = client->CreateJob(testing::TinyTrainSpec(steps, steps), "");
    if (!job.ok()) {
      Row("CreateJob", job.status().ToString());
      return;
    }
    names.push_back(job->name());
  }
  std::vector<std::unique_ptr<testing::ChildProcess>> children;
  for (int p = 0; p < processes; ++p) {
    const int streams = watchers / processes + (p < watchers % processes ? 1 : 0);
    children.push_back(std::make_unique<testing::ChildProcess>(
        std::vector<std::string>{"/proc/self/exe", "--watch-child", "--address", lorad.address(),
                                 "--streams", std::to_string(streams), "--watch-jobs",
                                 absl::StrJoin(names, ",")},
        dir.Join(absl::StrCat("watch-child-", jobs, "-", p, ".out")),
        dir.Join(absl::StrCat("watch-child-", jobs, "-", p, ".err"))));
  }
  int64_t peak = 0;
  const auto start = Clock::now();
  for (const std::string& name : names) {
    while (true) {
      peak = std::max(peak, RssKb(lorad.pid(), "VmRSS:"));
      auto j = client->GetJob(name);
      if (!j.ok() || testing::JobEnded(*j)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Merged merged;
  int64_t failed = 0;
  for (size_t p = 0; p < children.size(); ++p) {
    children[p]->Wait(120);
    const std::string out =
        testing::ReadFile(dir.Join(absl::StrCat("watch-child-", jobs, "-", p, ".out")));
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      if (absl::ConsumePrefix(&line, "bins ")) merged.Add(std::string(line));
      int64_t n = 0;
      if (absl::ConsumePrefix(&line, "failed ") && absl::SimpleAtoi(line, &n)) failed += n;
    }
  }
  const std::string what = absl::StrFormat("%d WatchJob streams on %d job%s, %d client processes",
                                           watchers, jobs, jobs == 1 ? "" : "s", processes);
  Row(what + ": client-side delivery",
      absl::StrFormat("%lld events; p50 %.0f ms, p99 %.0f ms, max %.0f ms; %lld streams failed; "
                      "%.0f s",
                      static_cast<long long>(merged.total), merged.Quantile(0.5),
                      merged.Quantile(0.99), merged.Quantile(1.0), static_cast<long long>(failed),
                      seconds));
  Row(what + ": lorad commit -> write done", ServerDelivery(lorad.metrics_port()));
  Row("lorad RSS: idle -> peak with the watchers",
      absl::StrFormat("%.1f MiB -> %.1f MiB (%.1f KiB per stream)", rss_before / 1024.0,
                      peak / 1024.0,
                      static_cast<double>(peak - rss_before) / std::max(1, watchers)));
}

void Downloads(testing::TempDir& dir) {
  testing::Lorad lorad({dir.Join("dl"), 1, 0, {}});
  if (!lorad.Start()) return;
  auto client = lorad.Client();
  lora::v1::JobSpec spec;
  spec.mutable_job()->set_kind(lora::v1::JOB_KIND_CONVERT);
  spec.mutable_model()->set_flavor("llama3.2-1b");
  spec.mutable_lora()->set_rank(64);
  auto job = client->CreateJob(spec, "");
  auto done = testing::WaitForJob(
      *client, job->name(),
      [](const lora::v1::Job& j) {
        return j.state() == lora::v1::SUCCEEDED || j.state() == lora::v1::FAILED;
      },
      600);
  const lora::v1::ArtifactFile* big = nullptr;
  for (const auto& f : done.outputs()) {
    if (!big || f.size() > big->size()) big = &f;
  }
  if (big == nullptr) {
    Row("artifact download", "job failed: " + done.error().message());
    return;
  }
  const std::string stored = dir.Join("dl/artifacts/" + done.id() + "/" + big->path());
  double best_dl = 1e30, best_local = 1e30;
  for (int i = 0; i < 3; ++i) {
    std::remove(dir.Join("copy.bin").c_str());
    auto t0 = Clock::now();
    auto d = client->Download(job->name(), big->path(), dir.Join("copy.bin"));
    if (!d.ok()) return;
    best_dl = std::min(best_dl, std::chrono::duration<double>(Clock::now() - t0).count());
    t0 = Clock::now();
    // Reading the same file locally (page cache warm), plus the sha256 the client also checks.
    (void)Sha256File(stored);
    best_local = std::min(best_local, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const double mb = static_cast<double>(big->size()) / 1e6;
  Row(absl::StrFormat("artifact download, %.0f MB adapter (sha256 verified)", mb),
      absl::StrFormat("%.0f MB/s vs local read + sha256 %.0f MB/s (%.2fx)", mb / best_dl,
                      mb / best_local, best_local / best_dl));
}

}  // namespace
}  // namespace lora

int main(int argc, char** argv) {
  int jobs = 1000, clients = 8, watchers = 500;
  std::string only;
  CLI::App app{"lorad service benchmark"};
  app.add_option("--jobs", jobs);
  app.add_option("--clients", clients);
  app.add_option("--watchers", watchers);
  app.add_option("--only", only,
                 "Run one part: create (CreateJob, plaintext and TLS), backlog (CreateJob "
                 "rate as the queue grows to --jobs) or watch (--watchers streams over "
                 "--watch-jobs-count jobs)");
  int watch_jobs_count = 1, processes = 4, watch_steps = 400;
  app.add_option("--watch-jobs-count", watch_jobs_count, "Jobs the watchers spread over");
  app.add_option("--watch-processes", processes, "Client processes holding the watchers");
  app.add_option("--watch-steps", watch_steps, "Training steps of each watched job");
  // The watcher processes run this program again in this mode.
  bool watch_child = false;
  std::string address, watch_jobs;
  int streams = 0;
  app.add_flag("--watch-child", watch_child)->group("");
  app.add_option("--address", address)->group("");
  app.add_option("--watch-jobs", watch_jobs)->group("");
  app.add_option("--streams", streams)->group("");
  bool postgres = false;
  app.add_flag("--postgres", postgres,
               "With --only create or backlog: lorad on a PostgreSQL 15 server this starts on "
               "loopback (fsync and full-page writes on, the same disk) instead of SQLite; "
               "backlog then ends with a failover to a second replica instead of a restart");
  CLI11_PARSE(app, argc, argv);
  lora::testing::TempDir dir;
  if (only == "backlog" && !postgres) {
    lora::Backlog(dir, jobs, clients);
    return 0;
  }
  if (watch_child) return lora::WatchChild(address, absl::StrSplit(watch_jobs, ','), streams);
  if (only == "watch") {
    lora::ManyWatchers(dir, watchers, watch_jobs_count, processes, watch_steps);
    return 0;
  }
  if (postgres) {
    auto pg = lora::testing::PostgresServer::Start(/*durable=*/true);
    if (!pg.ok()) {
      lora::Row("CreateJob on PostgreSQL", std::string(pg.status().message()));
      return 1;
    }
    const std::string url_file = dir.Join("store-url");
    if (!lora::WriteFileAtomically(url_file, (*pg)->conninfo() + "\n").ok()) return 1;
    if (only == "backlog") {
      lora::Backlog(dir, jobs, clients, url_file);
    } else {
      lora::CreateJobs(dir, jobs, clients, nullptr, "", url_file);
    }
    return 0;
  }
  lora::testing::TestPki pki(dir.Join("pki"));
  auto ca = pki.MakeCa("ca");
  auto server = ca ? pki.MakeLeaf(*ca, "server", "lorad", true) : std::nullopt;
  lora::CreateJobs(dir, jobs, clients, nullptr, "");
  if (server) {
    lora::CreateJobs(dir, jobs, clients, &*server, ca->cert);
  } else {
    lora::Row("CreateJob TLS", "no certificates: " + pki.error());
  }
  if (only == "create") return 0;
  lora::SubmitToFirstStep(dir);
  lora::ManyWatchers(dir, watchers, 1, processes, 400);
  lora::Downloads(dir);
  return 0;
}
