// The chaos test: ~20 small training jobs on lorad with two local workers and one separate
// worker, while a seeded injector kill -9s, SIGSTOPs and SIGTERM-restarts lorad, the workers and
// the ranks at random moments. Then every invariant the control plane promises is checked:
//   - every acknowledged job ends, and SUCCEEDS (planned restarts and single killed ranks never
//     fail a job; attempts are generous so only a bug exhausts them);
//   - no duplicate job from retried creates (request ids);
//   - no acknowledged checkpoint lost (a job's latest checkpoint step never goes back, and the
//     files of every listed checkpoint are on disk with their sha256);
//   - every SUCCEEDED job's adapter is bit-identical to a fault-free run of the same spec;
//   - no job runs two attempts at once for long (ranks of a replaced attempt stop within a
//     bounded time);
//   - after a clean stop: no leaked processes, no temp files, no descriptor growth in lorad.
//
// LORA_CHAOS_SEED (default below), LORA_CHAOS_SECONDS (fault phase, default 75) and
// LORA_CHAOS_JOBS (default 20) change the run; bench/chaos.sh runs it longer. The seed and a
// table of the faults injected are printed, so a failure can be replayed.
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/job_spec/job_spec.h"
#include "common/sha256.h"
#include "tests/integration/lorad_harness.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using lora::v1::Job;
using testing::BinaryPath;
using testing::Lorad;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The job specs of the run: a few variants, so each has a fault-free reference. Long enough
// (~15-20 s each) that the jobs run through the whole fault phase on three slots.
lora::v1::JobSpec Variant(int v) {
  lora::v1::JobSpec spec = testing::TinyTrainSpec(600 + 120 * v, 25);
  spec.mutable_training()->set_seed(100 + v);
  spec.mutable_training()->set_num_threads(1);
  spec.mutable_checkpoint()->set_keep_latest(2);
  return spec;
}
constexpr int kVariants = 3;

std::string AdapterSha(const Job& job) {
  for (const auto& f : job.outputs()) {
    if (f.path() == "final/adapter/adapter_model.safetensors") return f.sha256();
  }
  return "";
}

// A client with a short deadline: lorad may be gone for a moment.
absl::StatusOr<std::unique_ptr<LoraClient>> ClientFor(int port) {
  ClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.timeout = std::chrono::milliseconds(5000);
  return LoraClient::Create(o);
}

int OpenFds(pid_t pid) {
  int n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != fs::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

class Cluster {
 public:
  explicit Cluster(const std::string& dir) : dir_(dir), port_(testing::FreePort()) {}
  ~Cluster() {
    ResumeAll();
    if (remote_) remote_.reset();
    lorad_.reset();
  }

  bool StartLorad() {
    lorad_ = std::make_unique<Lorad>(
        Lorad::Options{dir_ + "/data",
                       2,
                       port_,
                       {"--heartbeat-timeout", "4", "--reattach-grace", "8", "--cancel-grace", "5",
                        "--drain-grace", "20", "--max-attempts", "30"}});
    return lorad_->Start();
  }
  void StartRemote() {
    remote_ = std::make_unique<testing::ChildProcess>(
        std::vector<std::string>{BinaryPath("worker/lora-worker"), "--controller",
                                 "127.0.0.1:" + std::to_string(port_), "--worker-id", "remote-0",
                                 "--work-dir", dir_ + "/remote", "--lora-train",
                                 BinaryPath("worker/lora-train"), "--threads-per-rank", "1"},
        dir_ + "/remote.out", dir_ + "/remote.err");
  }
  Lorad& lorad() { return *lorad_; }
  int port() const { return port_; }  // fixed across restarts: safe from any thread
  testing::ChildProcess* remote() { return remote_.get(); }
  void ResetLorad() { lorad_.reset(); }
  void ResetRemote() { remote_.reset(); }

  // lora-worker processes of this cluster (local and remote), lora-train ranks of this cluster.
  std::vector<pid_t> Workers() const {
    std::vector<pid_t> out;
    for (pid_t p : testing::FindProcesses("lora-worker")) {
      if (testing::ReadFile("/proc/" + std::to_string(p) + "/cmdline").find(dir_) !=
          std::string::npos)
        out.push_back(p);
    }
    return out;
  }
  std::vector<pid_t> Ranks() const {
    std::vector<pid_t> out;
    for (pid_t p : testing::FindProcesses("lora-train run")) {
      if (testing::ReadFile("/proc/" + std::to_string(p) + "/cmdline").find(dir_) !=
          std::string::npos)
        out.push_back(p);
    }
    return out;
  }
  // SIGSTOPped processes are always continued, whatever happens to the test.
  void Stopped(pid_t pid) {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_.insert(pid);
  }
  void Continued(pid_t pid) {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_.erase(pid);
  }
  void ResumeAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (pid_t p : stopped_) ::kill(p, SIGCONT);
    stopped_.clear();
  }

 private:
  std::string dir_;
  int port_;
  std::unique_ptr<Lorad> lorad_;
  std::unique_ptr<testing::ChildProcess> remote_;
  std::mutex mu_;
  std::set<pid_t> stopped_;
};

TEST(ChaosTest, JobsSurviveRandomKillsStopsAndRestartsWithEveryInvariantIntact) {
  const uint64_t seed = static_cast<uint64_t>(EnvInt("LORA_CHAOS_SEED", 20261130));
  const double fault_seconds = EnvInt("LORA_CHAOS_SECONDS", 75);
  const int jobs = EnvInt("LORA_CHAOS_JOBS", 20);
  std::cout << "chaos: seed " << seed << ", " << fault_seconds << " s of faults, " << jobs
            << " jobs (replay with LORA_CHAOS_SEED=" << seed << ")" << std::endl;
  std::mt19937_64 rng(seed);
  auto uniform = [&](double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
  testing::TempDir tmp;
  const std::string dir = tmp.path();

  // Fault-free references: each variant trained once by lora-train alone.
  std::map<int, std::string> reference_sha;
  for (int v = 0; v < kVariants; ++v) {
    const std::string job_file = dir + "/ref-" + std::to_string(v) + ".toml";
    std::ofstream(job_file) << JobSpecToToml(Variant(v));
    const std::string out = dir + "/ref-" + std::to_string(v);
    auto r = testing::RunProcess(
        {BinaryPath("worker/lora-train"), "run", "--job", job_file, "--out", out, "--quiet"}, 300);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto sha = Sha256File(out + "/final/adapter/adapter_model.safetensors");
    ASSERT_TRUE(sha.ok()) << sha.status();
    reference_sha[v] = *sha;
  }

  Cluster cluster(dir);
  ASSERT_TRUE(cluster.StartLorad()) << cluster.lorad().log();
  cluster.StartRemote();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const int baseline_fds = OpenFds(cluster.lorad().pid());

  // --- the creator: every job's create retried until acknowledged, some acknowledged twice.
  std::mutex mu;
  std::map<std::string, std::string> job_of_request;  // request id -> job name
  std::map<std::string, int> variant_of_request;
  std::atomic<bool> creates_done{false};
  std::atomic<int> duplicate_creates{0};
  std::atomic<bool> cluster_busy{false};  // lorad restarting: clients wait
  std::thread creator([&] {
    std::mt19937_64 crng(seed + 1);
    for (int i = 0; i < jobs; ++i) {
      const std::string request = "chaos-" + std::to_string(i);
      const int variant = i % kVariants;
      const int sends = (crng() % 4 == 0) ? 2 : 1;  // a client that retries after success
      for (int send = 0; send < sends; ++send) {
        const auto deadline = Clock::now() + std::chrono::seconds(120);
        while (Clock::now() < deadline) {
          if (!cluster_busy) {
            auto client = ClientFor(cluster.port());
            if (client.ok()) {
              auto job = (*client)->CreateJob(Variant(variant), request);
              if (job.ok()) {
                std::lock_guard<std::mutex> lock(mu);
                auto [it, fresh] = job_of_request.emplace(request, job->name());
                if (!fresh && it->second != job->name()) ++duplicate_creates;
                variant_of_request[request] = variant;
                break;
              }
            }
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100 + crng() % 1500));
    }
    creates_done = true;
  });

  // --- the watcher of invariants that need sampling over time.
  std::atomic<bool> sampling{true};
  std::map<std::string, int64_t> latest_checkpoint;  // job name -> highest step seen
  int checkpoint_regressions = 0;
  double max_overlap_seconds = 0;
  std::thread sampler([&] {
    std::map<std::string, Clock::time_point> overlap_since;
    auto last_poll = Clock::now();
    while (sampling) {
      // Attempts of one job alive at once (a replaced attempt's ranks still stopping).
      std::map<std::string, std::set<std::string>> attempts;
      for (pid_t p : cluster.Ranks()) {
        const std::string job = testing::ProcessEnv(p, "LORA_JOB_ID");
        if (!job.empty()) attempts[job].insert(testing::ProcessEnv(p, "LORA_ATTEMPT"));
      }
      const auto now = Clock::now();
      for (auto it = overlap_since.begin(); it != overlap_since.end();) {
        it = attempts[it->first].size() > 1 ? std::next(it) : overlap_since.erase(it);
      }
      for (const auto& [job, set] : attempts) {
        if (set.size() < 2) continue;
        auto [it, fresh] = overlap_since.emplace(job, now);
        max_overlap_seconds = std::max(max_overlap_seconds, Seconds(now - it->second));
      }
      if (now - last_poll > std::chrono::seconds(1) && !cluster_busy) {
        last_poll = now;
        auto client = ClientFor(cluster.port());
        std::map<std::string, std::string> known;
        {
          std::lock_guard<std::mutex> lock(mu);
          known = job_of_request;
        }
        for (const auto& [request, name] : known) {
          if (!client.ok()) break;
          auto job = (*client)->GetJob(name);
          if (!job.ok()) break;  // lorad went away meanwhile
          int64_t& seen = latest_checkpoint[name];
          if (job->latest_checkpoint_step() < seen) ++checkpoint_regressions;
          seen = std::max(seen, job->latest_checkpoint_step());
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  });

  // --- the injector.
  enum Fault {
    kLoradKill,
    kLoradTerm,
    kLoradStop,
    kWorkerKill,
    kWorkerTerm,
    kWorkerStop,
    kRankKill,
    kRankStop,
    kFaultKinds
  };
  const char* kFaultNames[] = {"lorad kill -9",  "lorad SIGTERM restart", "lorad SIGSTOP",
                               "worker kill -9", "worker SIGTERM",        "worker SIGSTOP",
                               "rank kill -9",   "rank SIGSTOP"};
  const double kWeights[] = {1, 1.5, 1, 1, 1, 1, 2, 1.5};
  std::map<int, int> injected;
  std::vector<double> recovery_seconds;  // lorad restart -> serving again
  auto restart_lorad = [&] {
    cluster.ResetLorad();
    const auto t0 = Clock::now();
    ASSERT_TRUE(cluster.StartLorad()) << cluster.lorad().log();
    recovery_seconds.push_back(Seconds(Clock::now() - t0));
    cluster_busy = false;
  };
  auto pause_and_resume = [&](pid_t pid, double seconds) {
    ::kill(pid, SIGSTOP);
    cluster.Stopped(pid);
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    ::kill(pid, SIGCONT);
    cluster.Continued(pid);
  };
  const auto fault_end = Clock::now() + std::chrono::duration<double>(fault_seconds);
  while (Clock::now() < fault_end || !creates_done) {
    std::this_thread::sleep_for(std::chrono::duration<double>(uniform(1.0, 3.0)));
    if (Clock::now() >= fault_end) continue;  // let the creator finish
    const int kind = static_cast<int>(
        std::discrete_distribution<int>(std::begin(kWeights), std::end(kWeights))(rng));
    switch (kind) {
      case kLoradKill:
        cluster_busy = true;
        cluster.lorad().Kill(SIGKILL);
        cluster.lorad().WaitExit(10);
        restart_lorad();
        break;
      case kLoradTerm:
        cluster_busy = true;
        cluster.lorad().Kill(SIGTERM);
        if (int code = cluster.lorad().WaitExit(60); code != 0) {
          const std::string log = cluster.lorad().log();
          ADD_FAILURE() << "lorad did not stop cleanly on SIGTERM (exit " << code
                        << "); the end of its log:\n"
                        << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
        }
        restart_lorad();
        break;
      case kLoradStop:
        pause_and_resume(cluster.lorad().pid(), uniform(0.5, 3));
        break;
      case kWorkerKill:
      case kWorkerTerm:
      case kWorkerStop: {
        std::vector<pid_t> workers = cluster.Workers();
        if (workers.empty()) continue;
        const pid_t victim = workers[rng() % workers.size()];
        const bool remote = cluster.remote() != nullptr && victim == cluster.remote()->pid();
        if (kind == kWorkerStop) {
          pause_and_resume(victim, uniform(1, 7));
        } else if (remote) {
          cluster.remote()->Signal(kind == kWorkerKill ? SIGKILL : SIGTERM);
          cluster.remote()->Wait(40);
          cluster.ResetRemote();
          cluster.StartRemote();
        } else {
          ::kill(victim, kind == kWorkerKill ? SIGKILL : SIGTERM);  // lorad restarts it
        }
        break;
      }
      case kRankKill:
      case kRankStop: {
        std::vector<pid_t> ranks = cluster.Ranks();
        if (ranks.empty()) continue;
        const pid_t victim = ranks[rng() % ranks.size()];
        if (kind == kRankKill) {
          ::kill(victim, SIGKILL);
        } else {
          pause_and_resume(victim, uniform(0.5, 3));
        }
        break;
      }
    }
    ++injected[kind];
  }
  creator.join();
  cluster.ResumeAll();

  // --- every acknowledged job ends.
  std::map<std::string, std::string> requests;
  {
    std::lock_guard<std::mutex> lock(mu);
    requests = job_of_request;
  }
  ASSERT_EQ(static_cast<int>(requests.size()), jobs);
  auto client = cluster.lorad().Client();
  std::map<std::string, Job> final_jobs;
  const auto settle_start = Clock::now();
  for (const auto& [request, name] : requests) {
    final_jobs[name] = testing::WaitForJob(*client, name, testing::JobEnded, 300);
  }
  const double settle_seconds = Seconds(Clock::now() - settle_start);
  sampling = false;
  sampler.join();

  int violations = 0;
  auto violation = [&](bool ok, const std::string& what) {
    if (!ok) ++violations;
    EXPECT_TRUE(ok) << what;
  };
  int succeeded = 0, attempts_spent = 0, restarts = 0;
  for (const auto& [request, name] : requests) {
    const Job& job = final_jobs[name];
    violation(job.state() == lora::v1::SUCCEEDED, name + " (" + request + ") ended " +
                                                      lora::v1::JobState_Name(job.state()) + ": " +
                                                      job.error().message());
    if (job.state() != lora::v1::SUCCEEDED) continue;
    ++succeeded;
    attempts_spent += job.attempt() - job.restarts();
    restarts += job.restarts();
    if (AdapterSha(job) != reference_sha[variant_of_request[request]]) {
      // The job's history, to replay what happened to it.
      std::string history;
      (void)client->Watch(name, 0, [&](const lora::v1::JobEvent& e) {
        if (e.has_state_change()) {
          history += "\n  " + lora::v1::JobState_Name(e.state_change().to()) + ": " +
                     e.state_change().reason();
        } else if (e.has_checkpoint()) {
          history += "\n  checkpoint " + std::to_string(e.checkpoint().step()) + " (attempt " +
                     std::to_string(e.checkpoint().attempt()) + ")";
        } else if (e.has_log() && e.log().level() != "info") {
          history += "\n  " + e.log().level() + ": " + e.log().message();
        } else if (e.has_log() && e.log().message().find("started") != std::string::npos) {
          history += "\n  " + e.log().message();
        }
        return true;
      });
      violation(false, name + ": adapter differs from the fault-free run; its history:" + history);
    }
  }
  // No duplicate jobs: one job per request id, as the store sees it.
  lora::v1::ListJobsRequest list;
  list.set_page_size(1000);
  auto listed = client->ListJobs(list);
  ASSERT_TRUE(listed.ok());
  violation(listed->jobs_size() == jobs, "ListJobs shows " + std::to_string(listed->jobs_size()) +
                                             " jobs for " + std::to_string(jobs) + " request ids");
  violation(duplicate_creates == 0, "a retried create returned a different job");
  violation(checkpoint_regressions == 0, "a job's latest checkpoint step went back");
  // Every listed checkpoint's files are on disk, intact.
  for (const auto& [request, name] : requests) {
    auto checkpoints = client->ListCheckpoints(name);
    ASSERT_TRUE(checkpoints.ok());
    for (const auto& c : *checkpoints) {
      for (const auto& f : c.files()) {
        auto sha = Sha256File(dir + "/data/artifacts/" + name.substr(5) + "/" + f.path());
        violation(sha.ok() && *sha == f.sha256(),
                  name + ": checkpoint file " + f.path() + " missing or corrupt");
      }
    }
  }
  violation(max_overlap_seconds < 30, "two attempts of one job ran together for " +
                                          std::to_string(max_overlap_seconds) + " s");
  // Idle lorad: descriptors back near where a fresh one starts.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const int final_fds = OpenFds(cluster.lorad().pid());
  violation(final_fds <= baseline_fds + 16, "lorad holds " + std::to_string(final_fds) +
                                                " descriptors, a fresh one " +
                                                std::to_string(baseline_fds));

  // --- a clean stop leaves nothing behind.
  cluster.remote()->Signal(SIGTERM);
  violation(cluster.remote()->Wait(40) == 0, "the remote worker did not stop cleanly");
  cluster.ResetRemote();
  cluster.lorad().Kill(SIGTERM);
  violation(cluster.lorad().WaitExit(60) == 0, "lorad did not stop cleanly");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  violation(cluster.Workers().empty() && cluster.Ranks().empty(),
            "lora-worker or lora-train processes outlived the cluster");
  int temp_files = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n.find(".tmp-") != std::string::npos || n.find(".staging-") != std::string::npos) {
      ++temp_files;
      ADD_FAILURE() << "left behind: " << it->path();
    }
  }
  violation(temp_files == 0, "temp files left behind");

  std::sort(recovery_seconds.begin(), recovery_seconds.end());
  std::cout << "\nchaos: faults injected (seed " << seed << ")\n";
  int total = 0;
  for (int k = 0; k < kFaultKinds; ++k) {
    std::cout << "  " << kFaultNames[k] << ": " << injected[k] << "\n";
    total += injected[k];
  }
  std::cout << "  total: " << total << "\n"
            << "chaos: " << succeeded << "/" << jobs << " jobs SUCCEEDED, attempts spent "
            << attempts_spent << ", planned restarts " << restarts << ", invariant violations "
            << violations << "\n"
            << "chaos: lorad restarts " << recovery_seconds.size() << ", restart-to-serving "
            << (recovery_seconds.empty() ? 0 : recovery_seconds[recovery_seconds.size() / 2])
            << " s median, " << (recovery_seconds.empty() ? 0 : recovery_seconds.back())
            << " s max; jobs settled " << settle_seconds
            << " s after the faults; two attempts overlapped at most " << max_overlap_seconds
            << " s" << std::endl;
}

}  // namespace
}  // namespace lora
