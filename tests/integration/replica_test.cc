// lorad replicas on one PostgreSQL database (a real server on loopback), a remote worker that
// names both, and real training: the leader is killed mid-job and the follower finishes it.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/postgres_server.h"
#include "tests/integration/subprocess.h"

namespace lora {
namespace {

using lora::testing::Lorad;
using lora::testing::PostgresServer;
using lora::v1::Job;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

bool Done(const Job& j) { return testing::JobEnded(j); }

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

class ReplicaTest : public testing::LoradTest {
 protected:
  void SetUp() override {
    if (!PostgresServer::Available()) GTEST_SKIP() << PostgresServer::MissingReason();
    auto pg = PostgresServer::Start();
    ASSERT_TRUE(pg.ok()) << pg.status();
    pg_ = std::move(*pg);
    url_file_ = dir_.Join("store-url");
    ASSERT_TRUE(WriteFileAtomically(url_file_, pg_->conninfo() + "\n").ok());
  }

  // A replica named `name` on `port`; all share one data directory (artifacts and uploads).
  std::unique_ptr<Lorad> Replica(const std::string& name, int port) {
    auto l = std::make_unique<Lorad>(Lorad::Options{
        dir_.Join("shared"),
        0,
        port,
        {"--store-url-file", url_file_, "--advertise", absl::StrCat("127.0.0.1:", port),
         "--leader-lease-ttl", "2", "--reattach-grace", "60"},
        name});
    EXPECT_TRUE(l->Start()) << l->log();
    return l;
  }

  static bool Leads(Lorad& l) {
    return absl::StrContains(testing::HttpGet(l.metrics_port(), "/metrics"), "\nlorad_leader 1");
  }
  static bool WaitLeading(Lorad& l, double timeout_s) {
    const auto start = Clock::now();
    while (SecondsSince(start) < timeout_s) {
      if (Leads(l)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  std::unique_ptr<PostgresServer> pg_;
  std::string url_file_;
};

TEST_F(ReplicaTest, KillingTheLeaderMidJobHandsItToTheFollowerWhichFinishesItWithoutAGap) {
  const int port_a = testing::FreePort(), port_b = testing::FreePort();
  auto a = Replica("a", port_a);
  ASSERT_TRUE(WaitLeading(*a, 20)) << a->log();
  auto b = Replica("b", port_b);
  auto client_a = a->Client();
  auto client_b = b->Client();

  // The follower refuses writes, naming the leader.
  absl::StatusOr<Job> refused = absl::UnknownError("not tried");
  const auto hint_deadline = Clock::now() + std::chrono::seconds(10);
  do {  // until its first campaign has seen the leader
    refused = client_b->CreateJob(testing::TinyTrainSpec(5), "");
    if (!refused.ok() && absl::StrContains(refused.status().message(), a->address())) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (Clock::now() < hint_deadline);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr(a->address()));

  testing::ChildProcess worker(
      {testing::BinaryPath("worker/lora-worker"), "--controller",
       absl::StrCat(a->address(), ",", b->address()), "--worker-id", "remote-1", "--work-dir",
       dir_.Join("remote"), "--threads-per-rank", "1"},
      dir_.Join("worker.out"), dir_.Join("worker.err"));
  auto job = client_a->CreateJob(testing::TinyTrainSpec(600, 50), "sweep-1");
  ASSERT_TRUE(job.ok()) << job.status();
  testing::WaitForJob(*client_a, job->name(),
                      [](const Job& j) { return j.progress().step() >= 5; });

  // The follower serves reads of what the leader wrote, and follows it for a watcher.
  auto read = client_b->GetJob(job->name());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->state(), lora::v1::RUNNING);
  auto listed = client_b->ListJobs(lora::v1::ListJobsRequest());
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->jobs_size(), 1);
  EXPECT_EQ(listed->jobs(0).name(), job->name());
  // A client given every replica moves on from the follower's refusal to the leader.
  ClientOptions both;
  both.address = absl::StrCat(b->address(), ",", a->address());
  auto either = LoraClient::Create(both);
  ASSERT_TRUE(either.ok()) << either.status();
  auto via_either = (*either)->CreateJob(testing::TinyTrainSpec(5), "via-either");
  ASSERT_TRUE(via_either.ok()) << via_either.status();

  std::vector<lora::v1::JobEvent> watched;
  std::atomic<bool> stop_watch{false};
  absl::Status watch_status;
  std::thread watcher([&] {
    watch_status = client_b->Watch(
        job->name(), 0,
        [&](const lora::v1::JobEvent& e) {
          watched.push_back(e);
          return true;
        },
        &stop_watch);
  });

  // Leader dies (kill -9: no handover; the follower waits out the lease).
  const auto killed = Clock::now();
  a->Kill(SIGKILL);
  ASSERT_EQ(a->WaitExit(10), 128 + SIGKILL);
  double failover_s = -1;
  while (SecondsSince(killed) < 30) {
    // The retried request id makes the probe idempotent across tries.
    auto probe = client_b->CreateJob(testing::TinyTrainSpec(5), "failover-probe");
    if (probe.ok()) {
      failover_s = SecondsSince(killed);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GT(failover_s, 0) << "the follower never took over\n" << b->log();
  std::cout << "failover: the follower accepted writes " << failover_s
            << " s after the leader was killed (lease ttl 2 s)\n";
  RecordProperty("failover_ms", static_cast<int>(failover_s * 1000));
  EXPECT_LT(failover_s, 10);

  // The same client, its first address now the leader and its second dead.
  auto after = (*either)->GetJob(via_either->name());
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE((*either)->CreateJob(testing::TinyTrainSpec(5), "after-failover").ok());

  // The worker finds the new leader and the running rank is taken over, not restarted.
  Job done = testing::WaitForJob(*client_b, job->name(), Done, 240);
  EXPECT_EQ(done.state(), lora::v1::SUCCEEDED)
      << done.error().message() << b->log() << testing::ReadFile(dir_.Join("worker.err"));
  EXPECT_EQ(done.attempt(), 1) << "the running rank should have been re-attached";
  EXPECT_EQ(done.progress().step(), 600);
  auto checkpoints = client_b->ListCheckpoints(job->name());
  ASSERT_TRUE(checkpoints.ok()) << checkpoints.status();
  EXPECT_FALSE(checkpoints->empty());

  // The watcher on the follower saw every event once, in order, across the switch.
  watcher.join();
  EXPECT_TRUE(watch_status.ok()) << watch_status;
  ASSERT_FALSE(watched.empty());
  for (size_t i = 0; i < watched.size(); ++i) {
    ASSERT_EQ(watched[i].sequence(), static_cast<int64_t>(i) + 1) << "gap or repeat at " << i;
  }
  EXPECT_EQ(watched.back().sequence(), done.last_sequence());
  EXPECT_EQ(watched.back().state_change().to(), lora::v1::SUCCEEDED);

  EXPECT_EQ(testing::WaitForJob(*client_b, via_either->name(), Done, 120).state(),
            lora::v1::SUCCEEDED);

  // The old leader comes back as a follower of the new one.
  auto a2 = Replica("a", port_a);
  auto client_a2 = a2->Client();
  EXPECT_EQ(client_a2->GetJob(job->name())->state(), lora::v1::SUCCEEDED);
  EXPECT_FALSE(Leads(*a2));
  // A call that is not idempotent, sent to the follower first: its NOT_LEADER refusal is typed,
  // so the client sends it to the leader, once.
  ClientOptions follower_first;
  follower_first.address = absl::StrCat(a2->address(), ",", b->address());
  auto client_ab = LoraClient::Create(follower_first);
  ASSERT_TRUE(client_ab.ok());
  absl::Status deleted;
  for (int i = 0; i < 50; ++i) {  // until a2's first campaign has seen the leader
    deleted = (*client_ab)->DeleteJob(via_either->name());
    if (deleted.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(deleted.ok()) << deleted;
  EXPECT_EQ(client_b->GetJob(via_either->name()).status().code(), absl::StatusCode::kNotFound);
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(30), 0);
}

// A leader that can no longer renew its lease stops acting on it: it exits (status 3) before
// the lease can expire in the database, so no two replicas ever write in the same term.
TEST_F(ReplicaTest, ALeaderCutOffFromTheDatabaseExitsBeforeItsLeaseExpires) {
  auto a = Replica("a", testing::FreePort());
  ASSERT_TRUE(WaitLeading(*a, 20)) << a->log();
  const auto paused = Clock::now();
  pg_->Pause();
  const int code = a->WaitExit(10);
  const double exited_s = SecondsSince(paused);
  pg_->Resume();
  EXPECT_EQ(code, 3) << a->log();
  EXPECT_LT(exited_s, 2.5) << "a ttl of 2 s: it must be gone before the lease could expire";
  EXPECT_THAT(a->log(), HasSubstr("lost the leader lease"));
}

// A watch given every replica, none of which answers: it moves on from one to the next, backs
// off once all have failed, and gives up when its policy says (no spinning between them).
TEST(ReplicaClientTest, AWatchOverReplicasThatAreAllDownBacksOffAndGivesUp) {
  ClientOptions o;
  o.address = absl::StrCat("127.0.0.1:", testing::FreePort(), ",127.0.0.1:", testing::FreePort());
  o.connect_timeout = std::chrono::milliseconds(500);
  auto client = LoraClient::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  ReconnectPolicy policy;
  policy.initial_backoff = std::chrono::milliseconds(100);
  policy.max_backoff = std::chrono::milliseconds(400);
  policy.give_up_after = std::chrono::seconds(3);
  int retries = 0;
  policy.on_retry = [&](const absl::Status&, int, std::chrono::milliseconds, int64_t) {
    ++retries;
  };
  const auto start = Clock::now();
  absl::Status s = (*client)->Watch(
      "jobs/x", 0, [](const lora::v1::JobEvent&) { return true; }, nullptr, policy);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_GE(SecondsSince(start), 2.5);
  EXPECT_GE(retries, 2);   // both addresses tried
  EXPECT_LE(retries, 30);  // and backed off: 3 s at >= 100 ms a round
}

}  // namespace
}  // namespace lora
