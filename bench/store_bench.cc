// The store's write path without gRPC: a bare single-thread SQLite insert (WAL, synchronous=FULL,
// one transaction and fsync per row) against JobStore::InsertJob from 1 and from N threads, on
// the same disk in the same run. The N-thread rate over the bare rate is what group commit buys
// (each caller still answered only after its batch's fsync); the mean batch says how much
// grouping the run saw.
//
//   store_bench [--rows 4000] [--threads 8] [--dir /var/tmp]
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/job_spec/job_spec.h"
#include "server/store/sqlite_job_store.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Result {
  double rate = 0;
  double p50_ms = 0;
  double p99_ms = 0;
};

Result Summarize(std::vector<double> latencies_ms, double seconds) {
  Result r;
  r.rate = static_cast<double>(latencies_ms.size()) / seconds;
  std::sort(latencies_ms.begin(), latencies_ms.end());
  if (!latencies_ms.empty()) {
    r.p50_ms = latencies_ms[latencies_ms.size() / 2];
    r.p99_ms = latencies_ms[std::min(latencies_ms.size() - 1, latencies_ms.size() * 99 / 100)];
  }
  return r;
}

void Row(const std::string& what, const Result& r, const std::string& extra = "") {
  std::cout << absl::StrFormat("%-58s %8.0f rows/s  p50 %6.2f ms  p99 %6.2f ms%s\n", what, r.rate,
                               r.p50_ms, r.p99_ms, extra);
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// A job record of the size lorad writes (a defaulted train spec).
lora::v1::Job SampleJob() {
  lora::v1::JobSpec spec;
  spec.mutable_job()->set_name("bench");
  spec.mutable_job()->set_kind(lora::v1::JOB_KIND_TRAIN);
  spec.mutable_model()->set_path("/models/llama");
  spec.mutable_dataset()->set_path("/data/train.jsonl");
  ApplyJobSpecDefaults(&spec);
  lora::v1::Job job;
  *job.mutable_spec() = spec;
  job.set_state(lora::v1::QUEUED);
  job.set_attempt(1);
  return job;
}

Result BareInsert(const std::string& path, int rows, size_t blob_size) {
  sqlite3* db = nullptr;
  sqlite3_open(path.c_str(), &db);
  sqlite3_exec(db, "PRAGMA journal_mode=WAL", nullptr, nullptr, nullptr);
  sqlite3_exec(db, "PRAGMA synchronous=FULL", nullptr, nullptr, nullptr);
  sqlite3_exec(db, "CREATE TABLE t (id TEXT PRIMARY KEY, proto BLOB NOT NULL)", nullptr, nullptr,
               nullptr);
  sqlite3_stmt* insert = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO t VALUES (?, ?)", -1, &insert, nullptr);
  const std::string blob(blob_size, 'x');
  std::vector<double> latencies;
  const auto start = Clock::now();
  for (int i = 0; i < rows; ++i) {
    const auto t0 = Clock::now();
    const std::string id = absl::StrCat("row-", i);
    sqlite3_bind_text(insert, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(insert, 2, blob.data(), static_cast<int>(blob.size()), SQLITE_STATIC);
    if (sqlite3_step(insert) != SQLITE_DONE) std::cerr << "insert: " << sqlite3_errmsg(db) << "\n";
    sqlite3_reset(insert);
    latencies.push_back(Ms(Clock::now() - t0));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  sqlite3_finalize(insert);
  sqlite3_close(db);
  return Summarize(std::move(latencies), seconds);
}

Result StoreInserts(const std::string& path, int rows, int threads, double* mean_batch) {
  auto store = server::SqliteJobStore::Open({path});
  if (!store.ok()) {
    std::cerr << store.status() << "\n";
    std::exit(1);
  }
  const lora::v1::Job sample = SampleJob();
  std::vector<std::vector<double>> latencies(static_cast<size_t>(threads));
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = next++; i < rows; i = next++) {
        lora::v1::Job job = sample;
        job.set_id(absl::StrCat("job-", i));
        job.set_name("jobs/" + job.id());
        *job.mutable_create_time() = server::FromMicros(server::NowMicros());
        job.set_last_sequence(1);
        lora::v1::JobEvent first;
        first.set_sequence(1);
        first.mutable_state_change()->set_to(lora::v1::QUEUED);
        const auto t0 = Clock::now();
        absl::Status s = (*store)->InsertJob(job, first, nullptr);
        if (!s.ok()) std::cerr << s << "\n";
        latencies[static_cast<size_t>(t)].push_back(Ms(Clock::now() - t0));
      }
    });
  }
  for (auto& th : pool) th.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  const auto [batches, writes] = (*store)->GroupCommitStats();
  *mean_batch = batches > 0 ? static_cast<double>(writes) / static_cast<double>(batches) : 0;
  return Summarize(std::move(all), seconds);
}

}  // namespace
}  // namespace lora

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  CLI::App app{"JobStore write benchmark"};
  int rows = 4000;
  int threads = 8;
  std::string dir = fs::temp_directory_path().string();
  app.add_option("--rows", rows, "Rows per measurement");
  app.add_option("--threads", threads, "Concurrent writers for the grouped measurement");
  app.add_option("--dir", dir, "Where the databases go (the disk measured)");
  CLI11_PARSE(app, argc, argv);
  const fs::path root = fs::path(dir) / absl::StrCat("store_bench-", ::getpid());
  fs::create_directories(root);
  const size_t blob = lora::SampleJob().ByteSizeLong();
  std::cout << "store_bench: " << rows << " rows each, job record " << blob << " bytes, in " << root
            << "\n";
  const lora::Result bare = lora::BareInsert((root / "bare.db").string(), rows, blob);
  lora::Row("bare SQLite insert, 1 thread (WAL, synchronous=FULL)", bare);
  double batch = 0;
  const lora::Result one = lora::StoreInserts((root / "one.db").string(), rows, 1, &batch);
  lora::Row("JobStore::InsertJob, 1 thread", one,
            absl::StrFormat("  (%.2fx bare)", one.rate / bare.rate));
  const lora::Result many = lora::StoreInserts((root / "many.db").string(), rows, threads, &batch);
  lora::Row(absl::StrCat("JobStore::InsertJob, ", threads, " threads (group commit)"), many,
            absl::StrFormat("  (%.2fx bare; %.1f writes per fsync)", many.rate / bare.rate, batch));
  fs::remove_all(root);
  return 0;
}
