// lora-worker as a real process between a real lorad and real lora-train ranks: what the
// controller learns when a rank is killed, draining on SIGTERM, falling back to an older
// checkpoint when the newest does not verify, what the worker leaves on its disk, and a network
// that stalls and breaks under a running rank.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using lora::v1::Job;
using lora::v1::JobEvent;
using ::testing::HasSubstr;
using testing::Lorad;
using testing::TinyTrainSpec;
using testing::WaitForJob;
namespace fs = std::filesystem;

bool Done(const Job& j) { return testing::JobEnded(j); }

std::vector<JobEvent> AllEvents(LoraClient& client, const std::string& name) {
  std::vector<JobEvent> events;
  EXPECT_TRUE(client
                  .Watch(name, 0,
                         [&](const JobEvent& e) {
                           events.push_back(e);
                           return true;
                         })
                  .ok());
  return events;
}

// The first step reported after the job went back to QUEUED (-1: it never did).
int64_t FirstStepAfterRequeue(const std::vector<JobEvent>& events) {
  bool requeued = false;
  for (const auto& e : events) {
    if (e.has_state_change() && e.state_change().to() == lora::v1::QUEUED &&
        e.state_change().from() != 0)
      requeued = true;
    if (requeued && e.has_metrics()) return e.metrics().step();
  }
  return -1;
}

// The job's state changes with their reasons, for failure messages.
using testing::StateChanges;

// Polls `pred` every 50 ms for up to `timeout_s`.
bool Eventually(const std::function<bool()>& pred, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pred();
}

class WorkerAgentTest : public ::testing::Test {
 protected:
  std::unique_ptr<Lorad> StartLorad(std::vector<std::string> extra = {}) {
    auto l = std::make_unique<Lorad>(Lorad::Options{dir_.Join("data"), 0, 0, std::move(extra)});
    EXPECT_TRUE(l->Start()) << l->log();
    return l;
  }
  // A remote lora-worker (not one of lorad's local workers): the test owns its process and
  // its work directory, <dir>/<id>.
  std::unique_ptr<testing::ChildProcess> StartWorker(const std::string& controller,
                                                     const std::string& id,
                                                     std::vector<std::string> extra = {},
                                                     const std::string& log_name = "") {
    const std::string log = log_name.empty() ? id : log_name;
    std::vector<std::string> argv = {testing::BinaryPath("worker/lora-worker"),
                                     "--controller",
                                     controller,
                                     "--worker-id",
                                     id,
                                     "--work-dir",
                                     dir_.Join(id),
                                     "--threads-per-rank",
                                     "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<testing::ChildProcess>(argv, dir_.Join(log + ".out"),
                                                   dir_.Join(log + ".err"));
  }
  std::string WorkerLog(const std::string& id) { return testing::ReadFile(dir_.Join(id + ".err")); }

  // Waits for the job's only rank to be running and returns its lora-train pid (-1: none).
  pid_t RankPid(const std::string& job_id) {
    pid_t pid = -1;
    Eventually(
        [&] {
          auto pids = testing::FindRankProcesses(job_id, 0);
          if (pids.size() == 1) pid = pids[0];
          return pid > 0;
        },
        60);
    return pid;
  }

  testing::TempDir dir_;
};

// ---------------------------------------------------------------- a rank killed by a signal

TEST_F(WorkerAgentTest, AKilledRankIsReportedWithItsSignalAndANonZeroExitCode) {
  auto lorad = StartLorad({"--max-attempts", "1"});
  auto worker = StartWorker(lorad->address(), "w1");
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(2000, 1000), "");
  ASSERT_TRUE(job.ok()) << job.status();
  WaitForJob(*client, job->name(), [](const Job& j) { return j.progress().step() >= 2; });
  const pid_t rank = RankPid(job->id());
  ASSERT_GT(rank, 0) << WorkerLog("w1");
  ::kill(rank, SIGKILL);
  Job done = WaitForJob(*client, job->name(), Done, 120);
  ASSERT_EQ(done.state(), lora::v1::FAILED) << lorad->log() << WorkerLog("w1");
  // What the worker reported is what lorad keeps for the rank: 128 + 9, signal 9.
  ASSERT_EQ(done.ranks_size(), 1);
  EXPECT_EQ(done.ranks(0).signal(), SIGKILL);
  EXPECT_EQ(done.ranks(0).exit_code(), 128 + SIGKILL);
  EXPECT_THAT(done.error().message(), HasSubstr("signal 9"));
  EXPECT_THAT(done.error().message(), ::testing::Not(HasSubstr("without reporting a result")));
}

// Needs lorad's retry policy too (a rank killed by a signal is retried from the latest
// checkpoint).
TEST_F(WorkerAgentTest, AKilledRankIsRetriedFromTheLatestCheckpointAndTheJobSucceeds) {
  auto lorad = StartLorad();
  auto worker = StartWorker(lorad->address(), "w1");
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(300, 20), "");
  ASSERT_TRUE(job.ok()) << job.status();
  Job first = WaitForJob(*client, job->name(),
                         [](const Job& j) { return j.latest_checkpoint_step() >= 20; });
  ASSERT_GE(first.latest_checkpoint_step(), 20) << lorad->log();
  const pid_t rank = RankPid(job->id());
  ASSERT_GT(rank, 0);
  ::kill(rank, SIGKILL);
  Job done = WaitForJob(*client, job->name(), Done, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED)
      << done.error().message() << lorad->log() << WorkerLog("w1");
  EXPECT_EQ(done.attempt(), 2);
  EXPECT_EQ(done.progress().step(), 300);
  EXPECT_GT(FirstStepAfterRequeue(AllEvents(*client, job->name())), 20)
      << "the retry resumed from a checkpoint, not from step 0";
}

// ---------------------------------------------------------------- drain on SIGTERM

// Needs lorad's planned-stop handling too (exit 75 requeues without spending an attempt).
TEST_F(WorkerAgentTest, SigtermDrainsTheRanksCheckpointToLoradBeforeTheWorkerExits) {
  constexpr int kInterval = 20;
  auto lorad = StartLorad();
  auto first = StartWorker(lorad->address(), "w1");  // the default grace, 60 s
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(1000, kInterval), "");
  ASSERT_TRUE(job.ok()) << job.status();
  Job running = WaitForJob(*client, job->name(), [](const Job& j) {
    return j.latest_checkpoint_step() >= kInterval &&
           j.progress().step() >= j.latest_checkpoint_step() + 3;
  });
  ASSERT_GE(running.latest_checkpoint_step(), kInterval) << lorad->log();
  const int64_t reached = running.progress().step();
  first->Signal(SIGTERM);
  EXPECT_EQ(first->Wait(90), 0) << WorkerLog("w1");
  // lorad has recorded the drain checkpoint: newer than every periodic one before SIGTERM.
  auto checkpoints = client->ListCheckpoints(job->name());
  ASSERT_TRUE(checkpoints.ok()) << checkpoints.status();
  ASSERT_FALSE(checkpoints->empty());
  const int64_t drained = checkpoints->back().step();
  EXPECT_GE(drained, reached) << lorad->log() << WorkerLog("w1");
  EXPECT_NE(drained % kInterval, 0) << "a periodic checkpoint, not the drain one";
  EXPECT_THAT(WorkerLog("w1"), HasSubstr("rank 0 exited: code 75"));
  // A planned stop: back in the queue without spending an attempt.
  Job queued = WaitForJob(
      *client, job->name(), [](const Job& j) { return j.state() == lora::v1::QUEUED; }, 30);
  EXPECT_EQ(queued.state(), lora::v1::QUEUED) << lorad->log();
  EXPECT_EQ(queued.latest_checkpoint_step(), drained);
  EXPECT_EQ(queued.restarts(), 1);
  // The next worker goes on from the drain checkpoint.
  auto second = StartWorker(lorad->address(), "w2");
  Job done = WaitForJob(*client, job->name(), Done, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED)
      << done.error().message() << lorad->log() << WorkerLog("w2");
  const std::vector<JobEvent> events = AllEvents(*client, job->name());
  EXPECT_EQ(done.attempt(), 2) << StateChanges(events);
  EXPECT_EQ(done.restarts(), 1);
  EXPECT_EQ(FirstStepAfterRequeue(events), drained + 1) << StateChanges(events) << WorkerLog("w2");
}

TEST_F(WorkerAgentTest, ADrainThatOutlastsItsGraceKillsTheRankAndReportsIt) {
  auto lorad = StartLorad({"--max-attempts", "1"});
  // The grace is too short for lora-train to start up, let alone checkpoint.
  auto worker = StartWorker(lorad->address(), "w1", {"--drain-grace", "0"});
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(3000, 1000), "");
  ASSERT_TRUE(job.ok()) << job.status();
  WaitForJob(*client, job->name(), [](const Job& j) { return j.progress().step() >= 1; });
  ASSERT_GT(RankPid(job->id()), 0);
  worker->Signal(SIGTERM);
  EXPECT_EQ(worker->Wait(30), 0) << WorkerLog("w1");
  EXPECT_TRUE(testing::FindRankProcesses(job->id(), 0).empty());
  EXPECT_THAT(WorkerLog("w1"), HasSubstr("rank 0 exited: code 137, signal 9"));
  Job done = WaitForJob(*client, job->name(), Done, 60);
  EXPECT_EQ(done.state(), lora::v1::FAILED) << lorad->log();
  ASSERT_EQ(done.ranks_size(), 1);
  EXPECT_EQ(done.ranks(0).signal(), SIGKILL);
}

// ---------------------------------------------------------------- resume fallback

// Needs lorad to send the older checkpoints (Assignment.fallback_resume).
TEST_F(WorkerAgentTest, ACheckpointThatFailsVerificationIsSkippedForTheNextOlderOne) {
  auto lorad = StartLorad();
  auto worker = StartWorker(lorad->address(), "w1");
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(150, 10), "");
  ASSERT_TRUE(job.ok()) << job.status();
  WaitForJob(*client, job->name(), [](const Job& j) { return j.latest_checkpoint_step() >= 30; });
  const pid_t rank = RankPid(job->id());
  ASSERT_GT(rank, 0);
  // Frozen, so that no newer checkpoint lands between choosing the victim and the kill.
  ::kill(rank, SIGSTOP);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // uploads and events in flight land
  auto checkpoints = client->ListCheckpoints(job->name());
  ASSERT_TRUE(checkpoints.ok() && checkpoints->size() >= 2) << checkpoints.status();
  const lora::v1::Checkpoint& latest = checkpoints->back();
  const lora::v1::Checkpoint& older = (*checkpoints)[checkpoints->size() - 2];
  ASSERT_FALSE(latest.files().empty());
  // Same size, different bytes: only the digest can tell.
  const std::string stored =
      dir_.Join("data/artifacts/" + job->id() + "/" + latest.files(0).path());
  {
    std::fstream f(stored, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.is_open()) << stored;
    char c = 0;
    f.seekg(0);
    f.read(&c, 1);
    f.seekp(0);
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  ::kill(rank, SIGKILL);
  Job done = WaitForJob(*client, job->name(), Done, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED)
      << done.error().message() << lorad->log() << WorkerLog("w1");
  const std::vector<JobEvent> events = AllEvents(*client, job->name());
  EXPECT_EQ(FirstStepAfterRequeue(events), older.step() + 1) << WorkerLog("w1");
  bool warned = false;
  for (const auto& e : events) {
    if (e.has_log() && e.log().level() == "warning" &&
        absl::StrContains(e.log().message(), absl::StrCat("checkpoint step ", latest.step())) &&
        absl::StrContains(e.log().message(), "failed verification"))
      warned = true;
  }
  EXPECT_TRUE(warned) << "the job's log names the checkpoint that was skipped";
}

// ---------------------------------------------------------------- the worker's disk

TEST_F(WorkerAgentTest, ReportedRanksLeaveNoRunDirectoryAndFailedOnesKeepTheirLogTail) {
  auto lorad = StartLorad();
  auto worker = StartWorker(lorad->address(), "w1");
  auto client = lorad->Client();
  auto ok = client->CreateJob(TinyTrainSpec(6, 3), "");
  ASSERT_TRUE(ok.ok()) << ok.status();
  auto bad_spec = TinyTrainSpec(5);
  bad_spec.mutable_dataset()->clear_name();
  bad_spec.mutable_dataset()->set_path(dir_.Join("missing.jsonl"));
  auto bad = client->CreateJob(bad_spec, "");
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(WaitForJob(*client, ok->name(), Done, 120).state(), lora::v1::SUCCEEDED);
  EXPECT_EQ(WaitForJob(*client, bad->name(), Done, 120).state(), lora::v1::FAILED);
  const std::string work = dir_.Join("w1");
  EXPECT_TRUE(Eventually([&] { return !fs::exists(work + "/jobs/" + ok->id()); }, 15))
      << "a finished rank's run directory goes once its exit is reported";
  EXPECT_TRUE(Eventually([&] { return !fs::exists(work + "/jobs/" + bad->id()); }, 15));
  const std::string kept = work + "/logs/" + bad->id() + "-attempt-1-rank-0.engine.log";
  ASSERT_TRUE(fs::exists(kept));
  EXPECT_LE(fs::file_size(kept), 64u << 10);
  EXPECT_THAT(testing::ReadFile(kept), HasSubstr("missing.jsonl"));
  EXPECT_FALSE(fs::exists(work + "/logs/" + ok->id() + "-attempt-1-rank-0.engine.log"))
      << "only failed ranks keep a log";
}

TEST_F(WorkerAgentTest, AWorkerStartingOnACrashedWorkersDirectoryRemovesItsLeftovers) {
  const std::string work = dir_.Join("w1");
  auto write = [](const std::string& path, const std::string& contents) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path) << contents;
  };
  write(work + "/jobs/old/attempt-1/rank-0/engine.log", "the crashed rank's last words\n");
  write(work + "/jobs/old/attempt-1/rank-0/checkpoints/step-00000010/adapter.safetensors", "w");
  write(work + "/jobs/old/attempt-2/rank-1/summary.json.tmp-4242-aBc123", "{");
  write(work + "/logs/j-attempt-1-rank-0.engine.log.tmp-4242-XyZ789", "half");
  write(work + "/notes.txt", "not the worker's");
  // Nothing listens there: the clean-up does not wait for a controller.
  auto worker = StartWorker("127.0.0.1:" + std::to_string(testing::FreePort()), "w1");
  EXPECT_TRUE(Eventually([&] { return !fs::exists(work + "/jobs/old"); }, 20)) << WorkerLog("w1");
  EXPECT_TRUE(Eventually(
      [&] { return !fs::exists(work + "/logs/j-attempt-1-rank-0.engine.log.tmp-4242-XyZ789"); },
      5));
  EXPECT_TRUE(fs::exists(work + "/notes.txt"));
  EXPECT_EQ(testing::ReadFile(work + "/logs/old-attempt-1-rank-0.engine.log"),
            "the crashed rank's last words\n");
  // A second worker on the same directory waits for the first instead of deleting its runs.
  auto second = StartWorker("127.0.0.1:1", "w1", {}, "second");
  EXPECT_TRUE(Eventually([&] { return absl::StrContains(WorkerLog("second"), "waiting"); }, 20))
      << WorkerLog("second");
  second->Signal(SIGTERM);
  EXPECT_EQ(second->Wait(10), 0);
  // With nothing running, a SIGTERM'd worker exits at once, controller or not.
  worker->Signal(SIGTERM);
  EXPECT_EQ(worker->Wait(10), 0) << WorkerLog("w1");
}

// ---------------------------------------------------------------- a bad network

// A TCP relay between lora-worker and lorad that can stall (stop relaying, keep the
// connections) and cut every connection, standing in for a bad network.
class Relay {
 public:
  explicit Relay(int target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::listen(listen_fd_, 16);
    thread_ = std::thread([this] { Loop(); });
  }
  ~Relay() {
    stop_ = true;
    thread_.join();
    CutAll();
    ::close(listen_fd_);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  void Stall(bool stalled) { stalled_ = stalled; }
  void CutAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [a, b] : pairs_) {
      ::close(a);
      ::close(b);
    }
    pairs_.clear();
  }

 private:
  void Loop() {
    while (!stop_) {
      std::vector<pollfd> fds = {{listen_fd_, POLLIN, 0}};
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!stalled_) {
          for (auto& [a, b] : pairs_) {
            fds.push_back({a, POLLIN, 0});
            fds.push_back({b, POLLIN, 0});
          }
        }
      }
      if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
      if (fds[0].revents & POLLIN) Accept();
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 1; i < fds.size(); ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        auto it = std::find_if(pairs_.begin(), pairs_.end(), [&](const auto& p) {
          return p.first == fds[i].fd || p.second == fds[i].fd;
        });
        if (it == pairs_.end()) continue;  // cut meanwhile
        const int to = it->first == fds[i].fd ? it->second : it->first;
        char buf[1 << 16];
        const ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
        if (n <= 0 || !WriteAll(to, buf, static_cast<size_t>(n))) {
          ::close(it->first);
          ::close(it->second);
          pairs_.erase(it);
        }
      }
    }
  }
  void Accept() {
    const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) return;
    const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(target_port_));
    if (stalled_ || ::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(client);
      ::close(server);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    pairs_.emplace_back(client, server);
  }
  static bool WriteAll(int fd, const char* data, size_t size) {
    while (size > 0) {
      const ssize_t n = ::write(fd, data, size);
      if (n <= 0) return false;
      data += n;
      size -= static_cast<size_t>(n);
    }
    return true;
  }

  const int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false}, stalled_{false};
  std::mutex mu_;
  std::vector<std::pair<int, int>> pairs_;
  std::thread thread_;
};

TEST_F(WorkerAgentTest, AStalledThenBrokenNetworkLosesNoEventAndRepeatsNone) {
  auto lorad = StartLorad();
  Relay relay(lorad->port());
  auto worker = StartWorker(relay.address(), "w1");
  auto client = lorad->Client();
  // Long enough to outlast the stall; no checkpoint on the way (an upload waits for the network
  // by design: the checkpoint event must follow its files).
  constexpr int kSteps = 1500;
  auto job = client->CreateJob(TinyTrainSpec(kSteps, 100 * kSteps), "");
  ASSERT_TRUE(job.ok()) << job.status();
  WaitForJob(*client, job->name(), [](const Job& j) { return j.progress().step() >= 5; });
  const std::string events_file =
      dir_.Join("w1/jobs/" + job->id() + "/attempt-1/rank-0/events.jsonl");
  // lora-train's own copy of its events: how far it got, whatever lorad has heard.
  auto steps_on_disk = [&] {
    const std::string text = testing::ReadFile(events_file);
    return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
  };
  // Stalled: nothing reaches lorad, yet the rank trains on (its events wait in the worker).
  relay.Stall(true);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int64_t lorad_saw = client->GetJob(job->name())->progress().step();
  const size_t before = steps_on_disk();
  std::this_thread::sleep_for(std::chrono::seconds(4));
  EXPECT_GT(steps_on_disk(), before + 5) << "training stalled with the network";
  EXPECT_LE(client->GetJob(job->name())->progress().step(), lorad_saw + 1);
  // Broken: the worker reconnects and sends what lorad has not seen, once.
  relay.CutAll();
  relay.Stall(false);
  Job done = WaitForJob(*client, job->name(), Done, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED)
      << done.error().message() << lorad->log() << WorkerLog("w1");
  EXPECT_EQ(done.attempt(), 1) << "the rank was re-attached, not restarted";
  std::vector<int64_t> steps;
  for (const auto& e : AllEvents(*client, job->name()))
    if (e.has_metrics()) steps.push_back(e.metrics().step());
  std::vector<int64_t> expected(kSteps);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(steps, expected);
}

}  // namespace
}  // namespace lora
