// Uploaded files: upload throughput against a local copy of the same file (same run, same
// disk), a repeated upload (deduplicated), the client's sha256 pass alone; then a job whose data
// lives only on the client, end to end (upload + queue + fetch + train), against the same job
// reading a shared-disk path, and how often its ranks found the data in the worker's cache.
// Starts its own lorad and one worker on 127.0.0.1 (the worker's data roots exclude the
// client's directory, as a remote worker's would); prints tables.
//
//   files_bench [--size-mib 256] [--ranks 4] [--steps 4]
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "client/file_upload.h"
#include "common/sha256.h"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void Row(const std::string& what, const std::string& value) {
  std::cout << absl::StrFormat("%-62s %s\n", what, value);
}

std::string Rate(int64_t bytes, double seconds) {
  return absl::StrFormat("%8.1f MiB/s  (%.2f s)", static_cast<double>(bytes) / (1 << 20) / seconds,
                         seconds);
}

// Copies and fsyncs, as the server does before it acknowledges an upload.
double CopyWithFsync(const std::string& from, const std::string& to) {
  const auto start = Clock::now();
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  const int fd = ::open(to.c_str(), O_RDONLY);
  ::fsync(fd);
  ::close(fd);
  return Seconds(Clock::now() - start);
}

int CountOf(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

lora::v1::JobSpec Spec(const std::string& dataset, int ranks, int steps) {
  lora::v1::JobSpec spec;
  spec.mutable_job()->set_name("files-bench");
  spec.mutable_model()->set_flavor("tiny");
  spec.mutable_lora()->set_rank(4);
  spec.mutable_lora()->add_target_modules("q_proj");
  spec.mutable_lora()->add_target_modules("v_proj");
  spec.mutable_training()->set_steps(steps);
  spec.mutable_training()->set_seq_len(64);
  spec.mutable_training()->set_local_batch_size(2);
  spec.mutable_dataset()->set_path(dataset);
  spec.mutable_dataset()->set_format("text");
  spec.mutable_dataset()->set_validation_fraction(0.01);
  spec.mutable_resources()->set_world_size(ranks);
  return spec;
}

int Run(int size_mib, int ranks, int steps) {
  testing::TempDir dir;
  fs::create_directories(dir.Join("client"));
  fs::create_directories(dir.Join("shared"));
  testing::Lorad lorad(testing::Lorad::Options{dir.Join("lorad"), 0});
  if (!lorad.Start()) {
    std::cerr << lorad.log();
    return 1;
  }
  auto client = lorad.Client();
  FileUploader uploader(client.get());

  // --- raw transfer
  const std::string big = dir.Join("client/blob.bin");
  {
    std::mt19937_64 rng(7);
    std::ofstream out(big, std::ios::binary);
    std::vector<uint64_t> block(1 << 17);
    for (int mib = 0; mib < size_mib; ++mib) {
      for (auto& v : block) v = rng();
      out.write(reinterpret_cast<const char*>(block.data()), 1 << 20);
    }
  }
  const int64_t bytes = static_cast<int64_t>(size_mib) << 20;
  std::cout << "\n== transfer of one " << size_mib << " MiB file (127.0.0.1, plaintext) ==\n";
  const double copy_s = CopyWithFsync(big, dir.Join("client/copy.bin"));
  Row("local copy + fsync (cp)", Rate(bytes, copy_s));
  auto t0 = Clock::now();
  {
    std::ifstream in(big, std::ios::binary);
    Sha256 h;
    std::string buffer(1 << 20, '\0');
    while (in.read(buffer.data(), buffer.size()) || in.gcount() > 0)
      h.Update(buffer.data(), static_cast<size_t>(in.gcount()));
    (void)h.HexDigest();
  }
  const double hash_s = Seconds(Clock::now() - t0);
  Row("sha256 of the file alone (the client's first pass)", Rate(bytes, hash_s));
  t0 = Clock::now();
  auto file = uploader.Upload(big, nullptr);
  const double upload_s = Seconds(Clock::now() - t0);
  if (!file.ok()) {
    std::cerr << file.status() << "\n";
    return 1;
  }
  Row("upload: hash + send + server verify + fsync + publish", Rate(bytes, upload_s));
  Row("  upload / local copy (rate ratio)", absl::StrFormat("%.2f", copy_s / upload_s));
  t0 = Clock::now();
  auto again = uploader.Upload(big, nullptr);
  const double dedup_s = Seconds(Clock::now() - t0);
  Row("upload of the same bytes again (hash only, nothing sent)", Rate(bytes, dedup_s));

  // --- a job whose data lives only on the client
  const std::string dataset = dir.Join("client/train.jsonl");
  {
    std::ofstream out(dataset);
    for (int i = 0; i < 20000; ++i)
      out << "{\"text\": \"line " << i << ": the quick brown fox jumps over the lazy dog\"}\n";
  }
  fs::copy_file(dataset, dir.Join("shared/train.jsonl"));
  testing::ChildProcess worker(
      {testing::BinaryPath("worker/lora-worker"), "--controller", lorad.address(), "--worker-id",
       "bench", "--work-dir", dir.Join("worker"), "--slots", std::to_string(ranks),
       "--threads-per-rank", "1", "--data-root", dir.Join("shared")},
      dir.Join("worker.out"), dir.Join("worker.err"));
  auto run_job = [&](const std::string& path, bool upload) -> double {
    const auto start = Clock::now();
    lora::v1::JobSpec spec = Spec(path, ranks, steps);
    if (upload) {
      std::vector<SpecRewrite> rewrites;
      if (absl::Status s =
              UploadSpecFiles(&spec, dir.Join("client"), &uploader, nullptr, &rewrites);
          !s.ok()) {
        std::cerr << s << "\n";
        return -1;
      }
    }
    auto job = client->CreateJob(spec, "");
    if (!job.ok()) return -1;
    lora::v1::Job done = testing::WaitForJob(*client, job->name(), testing::JobEnded, 600);
    if (done.state() != lora::v1::SUCCEEDED) {
      std::cerr << done.error().message() << "\n";
      return -1;
    }
    return Seconds(Clock::now() - start);
  };
  std::cout << "\n== a " << ranks << "-rank job, " << steps
            << " steps, on one worker whose data roots exclude the client ==\n";
  const double shared_s = run_job(dir.Join("shared/train.jsonl"), false);
  const double fresh_s = run_job("train.jsonl", true);
  const std::string log1 = testing::ReadFile(dir.Join("worker.err"));
  const int fetched_first = CountOf(log1, "fetched blob");
  const double warm_s = run_job("train.jsonl", true);
  const std::string log2 = testing::ReadFile(dir.Join("worker.err"));
  const int fetched_second = CountOf(log2, "fetched blob") - fetched_first;
  Row("data on a shared disk (path), submit -> SUCCEEDED", absl::StrFormat("%.2f s", shared_s));
  Row("data only on the client: upload + submit -> SUCCEEDED (cold)",
      absl::StrFormat("%.2f s", fresh_s));
  Row("the same again (uploaded and cached already)", absl::StrFormat("%.2f s", warm_s));
  Row(absl::StrFormat("worker cache, cold job: fetches for %d ranks", ranks),
      absl::StrFormat("%d  (hit ratio %.2f)", fetched_first,
                      1.0 - static_cast<double>(fetched_first) / ranks));
  Row(absl::StrFormat("worker cache, warm job: fetches for %d ranks", ranks),
      absl::StrFormat("%d  (hit ratio %.2f)", fetched_second,
                      1.0 - static_cast<double>(fetched_second) / ranks));
  worker.Signal(SIGTERM);
  worker.Wait(30);
  return 0;
}

}  // namespace
}  // namespace lora

int main(int argc, char** argv) {
  CLI::App app{"files_bench: upload throughput, cache hits, end-to-end time of uploaded data"};
  int size_mib = 256, ranks = 4, steps = 4;
  app.add_option("--size-mib", size_mib)->capture_default_str();
  app.add_option("--ranks", ranks)->capture_default_str();
  app.add_option("--steps", steps)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return lora::Run(size_mib, ranks, steps);
}
