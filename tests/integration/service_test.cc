// lorad + lora-worker + lora-train as real processes on 127.0.0.1: the whole service path.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <google/protobuf/util/json_util.h>
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <set>
#include <sstream>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lora/v1/job_service.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using lora::v1::Job;
using lora::v1::JobEvent;
using ::testing::HasSubstr;
using testing::Lorad;
using ::testing::Not;
using testing::ProcessResult;
using testing::RunProcess;
using testing::TinyTrainSpec;
using testing::WaitForJob;
namespace fs = std::filesystem;

// GET `path` from 127.0.0.1:`port`; the raw HTTP response (defined below).
// Whether a job's event stream shows a retry (re-queued after running; the reason must say
// where it resumes) and the first step reported after it (-1: none).
struct Retry {
  bool happened = false;
  int64_t first_step_after = -1;
};
Retry FindRetry(const std::vector<JobEvent>& events) {
  Retry r;
  for (const auto& e : events) {
    if (e.has_state_change() && e.state_change().to() == lora::v1::QUEUED &&
        e.state_change().from() != 0) {
      r.happened = true;
      EXPECT_THAT(e.state_change().reason(), HasSubstr("resuming from step"));
    }
    if (r.happened && e.has_metrics() && r.first_step_after < 0)
      r.first_step_after = e.metrics().step();
  }
  return r;
}

bool Done(const Job& j) { return testing::JobEnded(j); }

class ServiceTest : public testing::LoradTest {};

TEST_F(ServiceTest, SubmitWatchSucceedDownloadAndVerify) {
  auto lorad = StartLorad(1);
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(12, 4), "submit-1");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_THAT(job->name(), ::testing::StartsWith("jobs/"));
  std::vector<JobEvent> events;
  absl::Status watched = client->Watch(job->name(), 0, [&](const JobEvent& e) {
    events.push_back(e);
    return true;
  });
  ASSERT_TRUE(watched.ok()) << watched << lorad->log();
  Job done = *client->GetJob(job->name());
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  // Sequences are 1..n without gaps; the stream covers the whole life of the job.
  for (size_t i = 0; i < events.size(); ++i)
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i) + 1);
  std::vector<lora::v1::JobState> states;
  int metrics = 0, checkpoints = 0, evals = 0;
  for (const auto& e : events) {
    if (e.has_state_change()) states.push_back(e.state_change().to());
    metrics += e.has_metrics();
    checkpoints += e.has_checkpoint();
    evals += e.has_eval();
  }
  EXPECT_THAT(states, ::testing::ElementsAre(lora::v1::QUEUED, lora::v1::STARTING,
                                             lora::v1::RUNNING, lora::v1::SUCCEEDED));
  EXPECT_EQ(metrics, 12);
  EXPECT_EQ(checkpoints, 3);
  EXPECT_GE(evals, 2);
  EXPECT_EQ(done.progress().step(), 12);
  EXPECT_EQ(done.latest_checkpoint_step(), 12);
  auto ckpts = client->ListCheckpoints(job->name());
  ASSERT_TRUE(ckpts.ok());
  ASSERT_EQ(ckpts->size(), 3u);
  EXPECT_EQ(ckpts->back().step(), 12);

  // Download the final adapter, check the digests, and load it with lora-train.
  ASSERT_FALSE(done.outputs().empty());
  for (const auto& f : done.outputs()) {
    const std::string local = dir_.Join("dl/" + f.path());
    auto d = client->Download(job->name(), f.path(), local);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->bytes, f.size());
    EXPECT_EQ(*Sha256File(local), f.sha256());
  }
  const std::string spec_path = dir_.Join("job.json");
  {
    std::string json;
    google::protobuf::util::MessageToJsonString(done.spec(), &json);
    std::ofstream(spec_path) << json;
  }
  auto ev = testing::RunProcess({testing::BinaryPath("worker/lora-train"), "eval", "--job",
                                 spec_path, "--adapter", dir_.Join("dl/final/adapter"), "--json"});
  ASSERT_EQ(ev.exit_code, 0) << ev.err;
  EXPECT_NEAR(nlohmann::json::parse(ev.out)["loss"].get<double>(), done.progress().eval_loss(),
              1e-6);
}

TEST_F(ServiceTest, DownloadResumesFromAPartialFile) {
  auto lorad = StartLorad(1);
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(4, 4), "");
  ASSERT_TRUE(job.ok());
  Job done = WaitForJob(*client, job->name(), Done);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED);
  const lora::v1::ArtifactFile* weights = nullptr;
  for (const auto& f : done.outputs()) {
    if (f.path() == "final/adapter/adapter_model.safetensors") weights = &f;
  }
  ASSERT_NE(weights, nullptr);
  const std::string full = dir_.Join("full.safetensors");
  ASSERT_TRUE(client->Download(job->name(), weights->path(), full).ok());
  // A partial download (first 1000 bytes) is completed, not restarted.
  const std::string resumed = dir_.Join("resumed.safetensors");
  std::ofstream(resumed + ".partial", std::ios::binary) << testing::ReadFile(full).substr(0, 1000);
  auto d = client->Download(job->name(), weights->path(), resumed);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->transferred, weights->size() - 1000);
  EXPECT_EQ(testing::ReadFile(full), testing::ReadFile(resumed));
  // A corrupt partial is detected by the digest.
  std::ofstream(dir_.Join("bad.safetensors.partial"), std::ios::binary) << std::string(1000, 'x');
  auto bad = client->Download(job->name(), weights->path(), dir_.Join("bad.safetensors"));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  auto missing = client->Download(job->name(), "final/nope.bin", dir_.Join("nope"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  auto escape = client->Download(job->name(), "../../lorad.db", dir_.Join("x"));
  EXPECT_EQ(escape.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServiceTest, CreateJobIsIdempotentOnRequestId) {
  auto lorad = StartLorad(0);
  auto client = lorad->Client();
  auto a = client->CreateJob(TinyTrainSpec(5), "same-id");
  auto b = client->CreateJob(TinyTrainSpec(5), "same-id");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->name(), b->name());
  // Eight clients racing with one id still make one job.
  std::vector<std::string> names(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto c = lorad->Client();
      auto j = c->CreateJob(TinyTrainSpec(5), "raced-id");
      names[static_cast<size_t>(i)] = j.ok() ? j->name() : "error";
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()).size(), 1u);
  EXPECT_NE(names[0], "error");
  lora::v1::ListJobsRequest all;
  EXPECT_EQ(client->ListJobs(all)->jobs_size(), 2);
}

TEST_F(ServiceTest, InvalidRequestsGetCanonicalCodesNamingTheField) {
  auto lorad = StartLorad(0);
  auto client = lorad->Client();
  auto bad_rank = TinyTrainSpec(5);
  bad_rank.mutable_lora()->set_rank(0);
  auto r = client->CreateJob(bad_rank, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("lora.rank: must be in [1, 4096]"));
  auto bad_par = TinyTrainSpec(5);
  bad_par.mutable_parallelism()->set_tensor_parallel_degree(3);
  bad_par.mutable_resources()->set_world_size(4);
  r = client->CreateJob(bad_par, "");
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("parallelism: replicate x tp x pp x cp = 3"));
  auto no_data = TinyTrainSpec(5);
  no_data.mutable_dataset()->clear_name();
  r = client->CreateJob(no_data, "");
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("dataset.path"));
  EXPECT_EQ(client->GetJob("jobs/doesnotexist").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->GetJob("job/x").status().code(), absl::StatusCode::kInvalidArgument);
  lora::v1::ListJobsRequest bad_page;
  bad_page.set_page_token("garbage!");
  EXPECT_EQ(client->ListJobs(bad_page).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->ListCheckpoints("jobs/nope").status().code(), absl::StatusCode::kNotFound);
}

// Issue 12, finding 1: a 40 KB CreateJob whose patterns nest 20,000 groups crashed lorad
// (std::regex recursion). Now each pattern is INVALID_ARGUMENT naming its field, and lorad
// keeps serving.
TEST_F(ServiceTest, HostilePatternsAreRefusedAndLoradKeepsServing) {
  auto lorad = StartLorad(0);
  auto client = lorad->Client();
  const std::string deep = std::string(20000, '(') + std::string(20000, ')');
  auto target = TinyTrainSpec(5);
  target.mutable_lora()->clear_target_modules();
  target.mutable_lora()->set_target_modules_regex(deep);
  auto r = client->CreateJob(target, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("lora.target_modules"));
  auto exclude = TinyTrainSpec(5);
  exclude.mutable_lora()->set_exclude_modules_regex(deep);
  EXPECT_EQ(client->CreateJob(exclude, "").status().code(), absl::StatusCode::kInvalidArgument);
  auto patterns = TinyTrainSpec(5);
  (*patterns.mutable_lora()->mutable_rank_pattern())[deep] = 4;
  (*patterns.mutable_lora()->mutable_alpha_pattern())[deep] = 2.0;
  r = client->CreateJob(patterns, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("lora.rank_pattern."));
  EXPECT_LT(r.status().message().size(), 2000u) << "violations do not echo the patterns";
  auto ok = client->CreateJob(TinyTrainSpec(2), "");
  EXPECT_TRUE(ok.ok()) << ok.status();
}

// Issue 12, finding 6: once jobs with large specs existed, `loractl list` failed for everyone
// (a page over the client's receive limit). A page now also ends at a byte cap.
TEST_F(ServiceTest, ListJobsPagesStayUnderTheClientsReceiveLimit) {
  auto lorad = StartLorad(0);
  auto client = lorad->Client();
  auto big = TinyTrainSpec(2);
  for (int i = 0; i < 220; ++i) {
    (*big.mutable_lora()->mutable_rank_pattern())[absl::StrCat("k", i, std::string(4000, 'x'))] = 4;
  }
  ASSERT_LT(big.ByteSizeLong(), size_t{1} << 20);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(client->CreateJob(big, "").ok());
  lora::v1::ListJobsRequest request;
  request.set_page_size(100);
  int seen = 0, pages = 0;
  do {
    auto page = client->ListJobs(request);
    ASSERT_TRUE(page.ok()) << page.status();
    seen += page->jobs_size();
    ++pages;
    request.set_page_token(page->next_page_token());
  } while (!request.page_token().empty());
  EXPECT_EQ(seen, 6);
  EXPECT_GT(pages, 1);
}

TEST_F(ServiceTest, ListJobsPagesNewestFirstAndFilters) {
  auto lorad = StartLorad(0);
  auto client = lorad->Client();
  std::vector<std::string> created;
  for (int i = 0; i < 7; ++i) {
    auto spec = TinyTrainSpec(5);
    if (i % 2) spec.mutable_job()->set_kind(lora::v1::JOB_KIND_CONVERT);
    created.push_back(client->CreateJob(spec, "")->name());
  }
  lora::v1::ListJobsRequest req;
  req.set_page_size(3);
  std::vector<std::string> seen;
  do {
    auto page = client->ListJobs(req);
    ASSERT_TRUE(page.ok());
    EXPECT_LE(page->jobs_size(), 3);
    for (const auto& j : page->jobs()) seen.push_back(j.name());
    req.set_page_token(page->next_page_token());
  } while (!req.page_token().empty());
  std::vector<std::string> expected(created.rbegin(), created.rend());
  EXPECT_EQ(seen, expected);
  lora::v1::ListJobsRequest converts;
  converts.add_kinds(lora::v1::JOB_KIND_CONVERT);
  EXPECT_EQ(client->ListJobs(converts)->jobs_size(), 3);
  lora::v1::ListJobsRequest running;
  running.add_states(lora::v1::RUNNING);
  EXPECT_EQ(client->ListJobs(running)->jobs_size(), 0);
}

TEST_F(ServiceTest, CancelQueuedAndRunningJobs) {
  auto lorad = StartLorad(1, {"--cancel-grace", "3"});
  auto client = lorad->Client();
  // Occupies the only worker for a long time.
  auto running = client->CreateJob(TinyTrainSpec(100000, 1000), "");
  auto queued = client->CreateJob(TinyTrainSpec(5), "");
  ASSERT_TRUE(running.ok() && queued.ok());
  Job r =
      WaitForJob(*client, running->name(), [](const Job& j) { return j.progress().step() >= 2; });
  ASSERT_EQ(r.state(), lora::v1::RUNNING) << lorad->log();
  EXPECT_EQ(client->GetJob(queued->name())->state(), lora::v1::QUEUED);
  auto q = client->CancelJob(queued->name());
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->state(), lora::v1::CANCELLED);
  const std::string id = running->id();
  ASSERT_FALSE(testing::FindProcesses("lora-train run --job").empty());
  const auto t0 = std::chrono::steady_clock::now();
  auto c = client->CancelJob(running->name());
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->state() == lora::v1::CANCELLING || c->state() == lora::v1::CANCELLED);
  Job end = WaitForJob(*client, running->name(), Done, 30);
  EXPECT_EQ(end.state(), lora::v1::CANCELLED) << end.ShortDebugString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(8));
  // The engine process is gone.
  for (int i = 0; i < 100 && !testing::FindProcesses("jobs/" + id).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(testing::FindProcesses("jobs/" + id).empty());
  EXPECT_EQ(client->CancelJob(running->name()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ServiceTest, KilledWorkerIsRetriedFromTheLatestCheckpoint) {
  auto lorad = StartLorad(1, {"--heartbeat-timeout", "2"});
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(300, 25), "");
  ASSERT_TRUE(job.ok());
  Job first = WaitForJob(*client, job->name(),
                         [](const Job& j) { return j.latest_checkpoint_step() >= 25; });
  ASSERT_GE(first.latest_checkpoint_step(), 25) << lorad->log();
  auto workers = testing::FindProcesses("--worker-id local-0");
  ASSERT_FALSE(workers.empty());
  for (pid_t p : workers) ::kill(p, SIGKILL);
  Job done = WaitForJob(*client, job->name(), Done, 180);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  EXPECT_EQ(done.attempt(), 2);
  // The second attempt started from a checkpoint, not from step 0.
  std::vector<JobEvent> events;
  ASSERT_TRUE(client
                  ->Watch(job->name(), 0,
                          [&](const JobEvent& e) {
                            events.push_back(e);
                            return true;
                          })
                  .ok());
  const Retry retry = FindRetry(events);
  EXPECT_TRUE(retry.happened);
  EXPECT_GT(retry.first_step_after, 25);
}

lora::v1::JobSpec MultiRankSpec(int steps, int checkpoint_interval, int world,
                                std::initializer_list<std::pair<const char*, int>> degrees) {
  auto spec = TinyTrainSpec(steps, checkpoint_interval);
  spec.mutable_training()->set_num_threads(1);
  spec.mutable_resources()->set_world_size(world);
  spec.mutable_resources()->set_collective_timeout_seconds(30);
  auto* par = spec.mutable_parallelism();
  for (const auto& [name, degree] : degrees) {
    const auto* field = par->GetDescriptor()->FindFieldByName(name);
    par->GetReflection()->SetInt32(par, field, degree);
  }
  return spec;
}

TEST_F(ServiceTest, MultiRankJobTrainsAsOneAndReportsEveryRank) {
  auto lorad = StartLorad(2);
  auto client = lorad->Client();
  auto job = client->CreateJob(MultiRankSpec(20, 10, 2, {{"data_parallel_shard_degree", 2}}), "");
  ASSERT_TRUE(job.ok()) << job.status();
  Job done = WaitForJob(*client, job->name(), Done, 180);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  EXPECT_EQ(done.workers_size(), 2);
  // Per-rank health: both ranks reported, reached the last step and exited cleanly.
  ASSERT_EQ(done.ranks_size(), 2);
  for (const auto& r : done.ranks()) {
    EXPECT_EQ(r.state(), lora::v1::RANK_EXITED) << r.rank();
    EXPECT_EQ(r.exit_code(), 0) << r.rank();
    EXPECT_EQ(r.step(), 20) << r.rank();
    EXPECT_GT(r.bytes_sent(), 0) << r.rank();
    EXPECT_GT(r.parameter_bytes(), 0) << r.rank();
    EXPECT_TRUE(r.has_last_seen_time()) << r.rank();
  }
  EXPECT_NE(done.ranks(0).worker_id(), done.ranks(1).worker_id());
  // One merged progress stream (rank 0): each step exactly once.
  std::vector<int64_t> steps;
  ASSERT_TRUE(client
                  ->Watch(job->name(), 0,
                          [&](const JobEvent& e) {
                            if (e.has_metrics()) steps.push_back(e.metrics().step());
                            return true;
                          })
                  .ok());
  std::vector<int64_t> expected(20);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(steps, expected);
  // One adapter, uploaded once.
  int adapters = 0;
  for (const auto& f : done.outputs())
    adapters += f.path() == "final/adapter/adapter_model.safetensors";
  EXPECT_EQ(adapters, 1);
}

TEST_F(ServiceTest, LosingOneRankRestartsAllRanksFromTheLatestCheckpoint) {
  auto lorad = StartLorad(4);
  auto client = lorad->Client();
  auto job = client->CreateJob(
      MultiRankSpec(150, 20, 4,
                    {{"data_parallel_shard_degree", 2}, {"pipeline_parallel_degree", 2}}),
      "");
  ASSERT_TRUE(job.ok()) << job.status();
  Job first = WaitForJob(
      *client, job->name(), [](const Job& j) { return j.latest_checkpoint_step() >= 20; }, 180);
  ASSERT_GE(first.latest_checkpoint_step(), 20) << lorad->log();
  auto victims = testing::FindRankProcesses(job->id(), 2);
  ASSERT_FALSE(victims.empty());
  for (pid_t p : victims) ::kill(p, SIGKILL);
  Job done = WaitForJob(*client, job->name(), Done, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  EXPECT_TRUE(done.error().message().empty()) << done.error().message();
  std::vector<JobEvent> events;
  ASSERT_TRUE(client
                  ->Watch(job->name(), 0,
                          [&](const JobEvent& e) {
                            events.push_back(e);
                            return true;
                          })
                  .ok());
  bool named = false;
  for (const auto& e : events) {
    if (e.has_log() && e.log().level() == "error" &&
        e.log().message().find("rank 2") != std::string::npos)
      named = true;
  }
  EXPECT_EQ(done.attempt(), 2) << testing::StateChanges(events);
  const Retry retry = FindRetry(events);
  EXPECT_TRUE(retry.happened);
  EXPECT_TRUE(named) << "the lost rank is named in the job's log";
  EXPECT_GT(retry.first_step_after, 20);
}

TEST_F(ServiceTest, RestartedLoradLosesNoJobAndWatchersResume) {
  const int port = testing::FreePort();
  auto lorad = StartLorad(1, {"--reattach-grace", "3"}, port);
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(400, 25), "survives");
  auto queued = client->CreateJob(TinyTrainSpec(5), "queued-behind");
  ASSERT_TRUE(job.ok() && queued.ok());
  WaitForJob(*client, job->name(), [](const Job& j) { return j.latest_checkpoint_step() >= 25; });
  // A watcher follows through the restart.
  std::vector<int64_t> sequences;
  std::atomic<bool> watch_done{false};
  absl::Status watch_status;
  std::thread watcher([&] {
    auto c = lorad->Client();
    watch_status = c->Watch(job->name(), 0, [&](const JobEvent& e) {
      sequences.push_back(e.sequence());
      return true;
    });
    watch_done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  lorad->Kill(SIGKILL);
  ASSERT_EQ(lorad->WaitExit(10), 128 + SIGKILL);
  lorad.reset();
  auto restarted = StartLorad(1, {"--reattach-grace", "3"}, port);
  auto c2 = restarted->Client();
  EXPECT_EQ(c2->GetJob(job->name())->request_id(), "survives");
  Job done = WaitForJob(*c2, job->name(), Done, 180);
  EXPECT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << restarted->log();
  EXPECT_EQ(WaitForJob(*c2, queued->name(), Done, 120).state(), lora::v1::SUCCEEDED);
  watcher.join();
  EXPECT_TRUE(watch_status.ok()) << watch_status;
  ASSERT_FALSE(sequences.empty());
  for (size_t i = 0; i < sequences.size(); ++i)
    EXPECT_EQ(sequences[i], static_cast<int64_t>(i) + 1);
  EXPECT_EQ(sequences.back(), done.last_sequence());
}

// A watcher that stops reading must not make lorad hold every event for it: past
// --watch-max-pending-events it is ended UNAVAILABLE, naming where to resume, and resuming from
// there loses and repeats nothing.
TEST_F(ServiceTest, AWatcherThatStopsReadingIsEndedResumablyAndResumesWithoutAGap) {
  auto lorad = StartLorad(1, {"--watch-max-pending-events", "20"});
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(300, 100), "");
  ASSERT_TRUE(job.ok()) << job.status();
  // A tiny HTTP/2 window and no BDP probing: what the client does not read backs up in lorad.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = lora::v1::JobService::NewStub(
      grpc::CreateCustomChannel(lorad->address(), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(240));
  lora::v1::WatchJobRequest request;
  request.set_name(job->name());
  auto reader = stub->WatchJob(&context, request);
  std::vector<int64_t> sequences;
  JobEvent e;
  ASSERT_TRUE(reader->Read(&e));
  sequences.push_back(e.sequence());
  // Stop reading until the job has ended, then take what was buffered.
  Job done = WaitForJob(*client, job->name(), Done, 180);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message();
  while (reader->Read(&e)) sequences.push_back(e.sequence());
  const grpc::Status ended = reader->Finish();
  ASSERT_EQ(ended.error_code(), grpc::StatusCode::UNAVAILABLE) << ended.error_message();
  EXPECT_THAT(ended.error_message(), HasSubstr("fell 20 events behind"));
  const std::string marker = "after_sequence = ";
  const size_t at = ended.error_message().find(marker);
  ASSERT_NE(at, std::string::npos) << ended.error_message();
  const int64_t resume = std::atoll(ended.error_message().c_str() + at + marker.size());
  EXPECT_EQ(resume, sequences.back());  // everything up to it arrived, nothing after it
  EXPECT_LT(resume, done.last_sequence());
  absl::Status rest = client->Watch(job->name(), resume, [&](const JobEvent& next) {
    sequences.push_back(next.sequence());
    return true;
  });
  ASSERT_TRUE(rest.ok()) << rest;
  for (size_t i = 0; i < sequences.size(); ++i)
    ASSERT_EQ(sequences[i], static_cast<int64_t>(i) + 1) << "a gap or a repeat at " << i;
  EXPECT_EQ(sequences.back(), done.last_sequence());
}

TEST_F(ServiceTest, RemoteWorkerKeepsItsRankThroughAControllerRestart) {
  const int port = testing::FreePort();
  auto lorad = StartLorad(0, {"--reattach-grace", "20"}, port);
  testing::ChildProcess worker(
      {testing::BinaryPath("worker/lora-worker"), "--controller", lorad->address(), "--worker-id",
       "remote-1", "--work-dir", dir_.Join("remote"), "--threads-per-rank", "1"},
      dir_.Join("worker.out"), dir_.Join("worker.err"));
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(600, 50), "");
  ASSERT_TRUE(job.ok());
  WaitForJob(*client, job->name(), [](const Job& j) { return j.progress().step() >= 5; });
  lorad->Kill(SIGTERM);
  EXPECT_EQ(lorad->WaitExit(20), 0) << lorad->log();
  lorad.reset();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto restarted = StartLorad(0, {"--reattach-grace", "20"}, port);
  auto c2 = restarted->Client();
  Job done = WaitForJob(*c2, job->name(), Done, 180);
  EXPECT_EQ(done.state(), lora::v1::SUCCEEDED)
      << done.error().message() << restarted->log() << testing::ReadFile(dir_.Join("worker.err"));
  EXPECT_EQ(done.attempt(), 1) << "the running rank should have been re-attached, not restarted";
  EXPECT_EQ(done.progress().step(), 600);
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(30), 0);
}

TEST_F(ServiceTest, ConvertAndMergeJobsProduceArtifacts) {
  auto lorad = StartLorad(1);
  auto client = lorad->Client();
  lora::v1::JobSpec convert;
  convert.mutable_job()->set_kind(lora::v1::JOB_KIND_CONVERT);
  convert.mutable_model()->set_flavor("tiny");
  auto c = client->CreateJob(convert, "");
  ASSERT_TRUE(c.ok()) << c.status();
  Job cd = WaitForJob(*client, c->name(), Done);
  ASSERT_EQ(cd.state(), lora::v1::SUCCEEDED) << cd.error().message() << lorad->log();
  std::set<std::string> paths;
  for (const auto& f : cd.outputs()) paths.insert(f.path());
  EXPECT_TRUE(paths.count("final/adapter/adapter_config.json"));
  EXPECT_TRUE(paths.count("final/adapter/adapter_model.safetensors"));
  EXPECT_TRUE(paths.count("summary.json"));
  // Merge that adapter (downloaded) into the base.
  for (const auto& f : cd.outputs())
    ASSERT_TRUE(client->Download(c->name(), f.path(), dir_.Join("c/" + f.path())).ok());
  lora::v1::JobSpec merge;
  merge.mutable_job()->set_kind(lora::v1::JOB_KIND_MERGE);
  merge.mutable_model()->set_flavor("tiny");
  merge.mutable_lora()->set_adapter(dir_.Join("c/final/adapter"));
  auto m = client->CreateJob(merge, "");
  ASSERT_TRUE(m.ok()) << m.status();
  Job md = WaitForJob(*client, m->name(), Done);
  ASSERT_EQ(md.state(), lora::v1::SUCCEEDED) << md.error().message();
  paths.clear();
  for (const auto& f : md.outputs()) paths.insert(f.path());
  EXPECT_TRUE(paths.count("final/merged/model.safetensors"));
  EXPECT_TRUE(paths.count("final/merged/config.json"));
}

TEST_F(ServiceTest, EngineFailureFailsTheJobWithTheReason) {
  auto lorad = StartLorad(1);
  auto client = lorad->Client();
  auto spec = TinyTrainSpec(5);
  spec.mutable_dataset()->clear_name();
  spec.mutable_dataset()->set_path(dir_.Join("missing.jsonl"));
  auto job = client->CreateJob(spec, "");
  ASSERT_TRUE(job.ok());
  Job done = WaitForJob(*client, job->name(), Done);
  EXPECT_EQ(done.state(), lora::v1::FAILED);
  EXPECT_THAT(done.error().message(), HasSubstr("missing.jsonl: cannot open dataset file"));
  EXPECT_EQ(done.attempt(), 1) << "a deterministic failure is not retried";
}

// A CPU-only engine cannot serve CUDA: a worker asked to refuses to start, and a CUDA job waits
// with the reason, without holding up CPU jobs queued behind it.
TEST_F(ServiceTest, CudaJobsWaitWithAReasonWithoutHoldingUpCpuJobs) {
  ProcessResult refused =
      testing::RunProcess({testing::BinaryPath("worker/lora-worker"), "--device", "cuda",
                           "--controller", "127.0.0.1:1", "--work-dir", dir_.Join("w")},
                          60);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, HasSubstr("--device cuda but"));
  EXPECT_THAT(refused.err, HasSubstr("sees no CUDA device"));

  auto lorad = StartLorad(1);
  auto client = lorad->Client();
  auto cuda_spec = TinyTrainSpec(5);
  cuda_spec.mutable_resources()->set_device("cuda");
  auto cuda_job = client->CreateJob(cuda_spec, "");
  ASSERT_TRUE(cuda_job.ok()) << cuda_job.status();
  auto cpu_job = client->CreateJob(TinyTrainSpec(5), "");
  ASSERT_TRUE(cpu_job.ok());
  EXPECT_EQ(WaitForJob(*client, cpu_job->name(), Done).state(), lora::v1::SUCCEEDED);
  Job waiting = *client->GetJob(cuda_job->name());
  EXPECT_EQ(waiting.state(), lora::v1::QUEUED);
  EXPECT_EQ(waiting.queue_reason(), "no connected worker has device cuda (1 worker connected)");

  auto wide_spec = TinyTrainSpec(5);
  wide_spec.mutable_resources()->set_world_size(2);
  auto wide = client->CreateJob(wide_spec, "");
  ASSERT_TRUE(wide.ok()) << wide.status();
  auto behind = client->CreateJob(TinyTrainSpec(5), "");
  ASSERT_TRUE(behind.ok());
  EXPECT_EQ(client->GetJob(wide->name())->queue_reason(),
            "needs 2 cpu slots at once; the connected cpu workers have 1 in all");
  EXPECT_EQ(client->GetJob(behind->name())->queue_reason(),
            absl::StrCat("behind ", wide->name(), " in the cpu queue (FIFO within priority)"));
  // Alertable: queued jobs that no amount of waiting will start (the metrics loop runs every
  // 200 ms).
  const std::string log = lorad->log();
  const size_t at = log.find("metrics on port ");
  ASSERT_NE(at, std::string::npos) << log;
  const int port = std::atoi(log.c_str() + at + 16);
  std::string metrics;
  for (int i = 0; i < 50; ++i) {
    metrics = testing::HttpGet(port, "/metrics");
    if (metrics.find("lorad_unschedulable_jobs{device=\"cpu\"} 1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_THAT(metrics, HasSubstr("lorad_unschedulable_jobs{device=\"cuda\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("lorad_unschedulable_jobs{device=\"cpu\"} 1"));
  for (const auto* j : {&*cuda_job, &*wide, &*behind}) {
    ASSERT_TRUE(client->CancelJob(j->name()).ok());
    Job cancelled = WaitForJob(*client, j->name(), Done);
    EXPECT_EQ(cancelled.state(), lora::v1::CANCELLED);
    EXPECT_EQ(cancelled.queue_reason(), "");
  }
}

TEST_F(ServiceTest, TokensAreRequiredWhenConfigured) {
  const std::string secret = "s3cret-0123456789abcdef";
  std::ofstream(dir_.Join("client.token")) << secret << "\n";
  auto lorad = StartLorad(0, {"--auth-token-file", dir_.Join("client.token")});
  EXPECT_EQ(lorad->Client()->GetJob("jobs/x").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(lorad->Client("wrong")->GetJob("jobs/x").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(lorad->Client(secret)->GetJob("jobs/x").status().code(), absl::StatusCode::kNotFound);
}

// Issue 12, finding 3: the shipped Secret's "change-me" was accepted, and --auth-token put the
// secret in `ps`. Placeholders and short secrets stop lorad at start, naming the setting (not
// the value); the flag is gone (files and environment only).
TEST_F(ServiceTest, PlaceholderOrShortSecretsStopLoradAtStart) {
  std::ofstream(dir_.Join("placeholder.token")) << "change-me\n";
  std::ofstream(dir_.Join("short.token")) << "abc123\n";
  const std::string lorad = testing::BinaryPath("server/lorad");
  ProcessResult placeholder =
      RunProcess({lorad, "--data-dir", dir_.Join("d1"), "--listen", "127.0.0.1:0",
                  "--worker-token-file", dir_.Join("placeholder.token")},
                 30);
  EXPECT_NE(placeholder.exit_code, 0);
  EXPECT_THAT(placeholder.err, HasSubstr("the worker token (--worker-token-file / "
                                         "LORAD_WORKER_TOKEN) is a placeholder value"));
  ProcessResult short_one =
      RunProcess({lorad, "--data-dir", dir_.Join("d2"), "--listen", "127.0.0.1:0",
                  "--auth-token-file", dir_.Join("short.token")},
                 30);
  EXPECT_NE(short_one.exit_code, 0);
  EXPECT_THAT(short_one.err, HasSubstr("is 6 bytes; a secret needs at least 16"));
  EXPECT_EQ(short_one.err.find("abc123"), std::string::npos) << "the secret is never echoed";
  ProcessResult env = RunProcess({lorad, "--data-dir", dir_.Join("d3"), "--listen", "127.0.0.1:0"},
                                 30, {"LORAD_AUTH_TOKEN=change-me"});
  EXPECT_THAT(env.err, HasSubstr("the client token (--auth-token-file / LORAD_AUTH_TOKEN)"));
  ProcessResult flag = RunProcess(
      {lorad, "--data-dir", dir_.Join("d4"), "--auth-token", "s3cret-0123456789abcdef"}, 30);
  EXPECT_NE(flag.exit_code, 0);
}

// Issue 12, finding 2: with only a client token, any process could register as a worker. A
// lorad that accepts workers from the network without a worker credential refuses to start.
TEST_F(ServiceTest, ANetworkListenerWithoutAWorkerTokenRefusesToStart) {
  const std::string lorad = testing::BinaryPath("server/lorad");
  ProcessResult open = RunProcess(
      {lorad, "--data-dir", dir_.Join("d1"), "--listen", "0.0.0.0:0", "--metrics-listen", ""}, 30);
  EXPECT_NE(open.exit_code, 0);
  EXPECT_THAT(open.err,
              HasSubstr("accepts workers from the network, and no worker credential is set"));
  ProcessResult v6 = RunProcess(
      {lorad, "--data-dir", dir_.Join("d2"), "--listen", "[::]:0", "--metrics-listen", ""}, 30);
  EXPECT_NE(v6.exit_code, 0);
}

// The scheme name is case-insensitive (RFC 9110): "bearer" and "BEARER" work.
TEST_F(ServiceTest, BearerSchemeIsCaseInsensitive) {
  const std::string secret = "s3cret-0123456789abcdef";
  std::ofstream(dir_.Join("client.token")) << secret << "\n";
  auto lorad = StartLorad(0, {"--auth-token-file", dir_.Join("client.token")});
  for (const char* scheme : {"bearer ", "BEARER ", "Bearer "}) {
    auto channel = grpc::CreateChannel(lorad->address(), grpc::InsecureChannelCredentials());
    auto stub = lora::v1::JobService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", std::string(scheme) + secret);
    lora::v1::GetJobRequest request;
    request.set_name("jobs/x");
    lora::v1::Job job;
    grpc::Status status = stub->GetJob(&ctx, request, &job);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << scheme;
  }
}

// Issue 12, finding 5: any file a worker could read, a client could name. With declared data
// roots, lorad refuses at submission what is plainly outside them (workers check again).
TEST_F(ServiceTest, PathsOutsideTheDeclaredDataRootsAreRefusedAtSubmission) {
  auto lorad = StartLorad(0, {"--data-root", "/data", "--data-root", "/models"});
  auto client = lorad->Client();
  for (const char* path :
       {"/etc/shadow", "/proc/self/environ", "/data/../etc/passwd", "relative/train.jsonl"}) {
    lora::v1::JobSpec spec = TinyTrainSpec(2);
    spec.mutable_dataset()->clear_name();
    spec.mutable_dataset()->set_path(path);
    auto job = client->CreateJob(spec, "");
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(job.status().message(), HasSubstr("dataset.path")) << path;
  }
  lora::v1::JobSpec inside = TinyTrainSpec(2);
  inside.mutable_dataset()->clear_name();
  inside.mutable_dataset()->set_path("/data/team-a/train.jsonl");
  auto ok = client->CreateJob(inside, "");
  EXPECT_TRUE(ok.ok()) << ok.status();
}

// Issue 12, finding 6: a request that does not parse was answered UNIMPLEMENTED (gRPC's
// generated handlers do that, with no message). The unary methods parse the bytes themselves.
TEST_F(ServiceTest, UnparsableRequestsAreInvalidArgument) {
  auto lorad = StartLorad(0);
  auto channel = grpc::CreateChannel(lorad->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  for (const char* method : {"CreateJob", "GetJob", "ListJobs", "CancelJob", "ListCheckpoints"}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    // A field 1 (string) whose length runs past the end of the message.
    grpc::Slice garbage(std::string("\x0a\xff\xff\x03 truncated", 15));
    grpc::ByteBuffer request(&garbage, 1), response;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub.UnaryCall(&ctx, absl::StrCat("/lora.v1.JobService/", method), grpc::StubOptions(),
                   &request, &response, [&](grpc::Status s) {
                     std::lock_guard<std::mutex> lock(mu);
                     status = s;
                     done = true;
                     cv.notify_one();
                   });
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(15), [&] { return done; })) << method;
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_THAT(status.error_message(), HasSubstr("request: not a valid lora.v1.")) << method;
  }
  // The server-streaming methods too.
  for (const char* method : {"WatchJob", "DownloadArtifact"}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Slice garbage(std::string("\x0a\xff\xff\x03 truncated", 15));
    grpc::ByteBuffer request(&garbage, 1), message;
    const std::string path = absl::StrCat("/lora.v1.JobService/", method);  // outlives rpc
    grpc::internal::RpcMethod rpc(path.c_str(), grpc::internal::RpcMethod::SERVER_STREAMING);
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel.get(), rpc, &ctx,
                                                                      request));
    while (reader->Read(&message)) {
    }
    grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_THAT(status.error_message(), HasSubstr("request: not a valid lora.v1.")) << method;
  }
  // And the worker service: the stream, uploads and fetches (a bidi call on the client side
  // carries any of them: one message up, whatever comes down).
  for (const char* method : {"Connect", "UploadArtifact", "FetchArtifact"}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const std::string path = absl::StrCat("/lora.worker.v1.WorkerService/", method);
    grpc::internal::RpcMethod rpc(path.c_str(), grpc::internal::RpcMethod::BIDI_STREAMING);
    std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
        grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
            channel.get(), rpc, &ctx));
    grpc::Slice garbage(std::string("\x0a\xff\xff\x03 truncated", 15));
    grpc::ByteBuffer message(&garbage, 1), reply;
    stream->Write(message);
    stream->WritesDone();
    while (stream->Read(&reply)) {
    }
    grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_THAT(status.error_message(), HasSubstr("not a valid lora.worker.v1.")) << method;
  }
  // lorad still serves.
  EXPECT_EQ(lorad->Client()->GetJob("jobs/x").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServiceTest, StandardHealthServiceReportsServing) {
  auto lorad = StartLorad(0);
  auto channel = grpc::CreateChannel(lorad->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  grpc::ByteBuffer request;  // HealthCheckRequest{} (service "" = the whole server)
  grpc::ByteBuffer response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  grpc::Slice empty;
  request = grpc::ByteBuffer(&empty, 1);
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait_for(lock, std::chrono::seconds(10), [&] { return done; });
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  response.Dump(&slices);
  std::string bytes;
  for (auto& s : slices) bytes += std::string(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2)) << "HealthCheckResponse{status: SERVING}";
}

}  // namespace
}  // namespace lora

namespace lora {
namespace {

TEST_F(ServiceTest, MetricsEndpointPassesPromtool) {
  auto lorad = StartLorad(1);
  const std::string log = lorad->log();
  const size_t at = log.find("metrics on port ");
  ASSERT_NE(at, std::string::npos) << log;
  const int port = std::atoi(log.c_str() + at + 16);
  auto scrape = [&] {
    const std::string response = testing::HttpGet(port, "/metrics");
    EXPECT_THAT(response, HasSubstr("200 OK"));
    return response.substr(response.find("\r\n\r\n") + 4);
  };
  // Before any client call: every method's series at zero, streams in their own histogram,
  // process_* and the build.
  const std::string start = scrape();
  for (const char* method : {"CreateJob", "GetJob", "ListJobs", "CancelJob", "ListCheckpoints"}) {
    EXPECT_THAT(start, HasSubstr(absl::StrCat("lorad_rpc_requests_total{method=\"", method,
                                              "\",code=\"OK\"} 0\n")));
    EXPECT_THAT(start, HasSubstr(absl::StrCat("lorad_rpc_requests_total{method=\"", method,
                                              "\",code=\"INTERNAL\"} 0\n")));
    EXPECT_THAT(start, HasSubstr(absl::StrCat("lorad_rpc_duration_seconds_count{method=\"", method,
                                              "\"} 0\n")));
  }
  for (const char* method : {"WatchJob", "DownloadArtifact", "UploadArtifact", "FetchArtifact"}) {
    EXPECT_THAT(start, HasSubstr(absl::StrCat("lorad_rpc_stream_duration_seconds_count{method=\"",
                                              method, "\"} 0\n")));
  }
  EXPECT_THAT(start, HasSubstr("lorad_rpc_stream_duration_seconds_bucket{method=\"Connect\","));
  EXPECT_THAT(start,
              HasSubstr("lorad_jobs_finished_total{kind=\"train\",state=\"SUCCEEDED\"} 0\n"));
  EXPECT_THAT(start, HasSubstr("lorad_job_retries_total{reason=\"worker_lost\"} 0\n"));
  EXPECT_THAT(start, HasSubstr("lorad_workers_lost_total{reason=\"missed_heartbeats\"} 0\n"));
  EXPECT_THAT(start, HasSubstr("lorad_build_info{version=\"0.1.0\",revision=\""));
  for (const char* name : {"process_cpu_seconds_total ", "process_resident_memory_bytes ",
                           "process_virtual_memory_bytes ", "process_open_fds ", "process_max_fds ",
                           "process_start_time_seconds "}) {
    EXPECT_THAT(start, HasSubstr(absl::StrCat("\n", name))) << name;
  }

  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(3, 3), "");
  ASSERT_TRUE(job.ok());
  // Watched to the end: a stream of seconds, which is no latency.
  EXPECT_TRUE(client->Watch(job->name(), 0, [](const JobEvent&) { return true; }).ok());
  WaitForJob(*client, job->name(), Done);
  (void)client->GetJob("jobs/none");
  const std::string body = scrape();
  EXPECT_THAT(body, HasSubstr("lorad_rpc_requests_total{method=\"CreateJob\",code=\"OK\"} 1"));
  EXPECT_THAT(body, HasSubstr("lorad_rpc_requests_total{method=\"GetJob\",code=\"NOT_FOUND\"} 1"));
  EXPECT_THAT(body, HasSubstr("lorad_rpc_requests_total{method=\"WatchJob\",code=\"OK\"} 1\n"));
  EXPECT_THAT(body, HasSubstr("lorad_rpc_stream_duration_seconds_count{method=\"WatchJob\"} 1\n"));
  EXPECT_THAT(body, Not(HasSubstr("lorad_rpc_duration_seconds_count{method=\"WatchJob\"}")));
  EXPECT_THAT(body, Not(HasSubstr("lorad_rpc_duration_seconds_bucket{method=\"WatchJob\"")));
  EXPECT_THAT(body, Not(HasSubstr("lorad_rpc_duration_seconds_count{method=\"Connect\"}")));
  EXPECT_THAT(body, HasSubstr("lorad_jobs_finished_total{kind=\"train\",state=\"SUCCEEDED\"} 1\n"));
  EXPECT_THAT(body, HasSubstr("lorad_workers_connected 1"));
  EXPECT_THAT(body,
              HasSubstr("lorad_rpc_duration_seconds_bucket{method=\"CreateJob\",le=\"+Inf\"} 1"));
  std::ofstream(dir_.Join("metrics.txt")) << body;
  auto check = testing::RunProcess(
      {"/bin/sh", "-c", "promtool check metrics < " + dir_.Join("metrics.txt")});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
}

// --log-format json: every line lorad and its local worker write is one JSON object (gRPC's own
// lines too), and the lines about a job carry its id, attempt, rank and worker.
TEST_F(ServiceTest, JsonLogsCarryJobAttemptRankAndWorkerIds) {
  auto lorad = StartLorad(1, {"--log-format", "json"});
  auto client = lorad->Client();
  auto job = client->CreateJob(TinyTrainSpec(3, 3), "");
  ASSERT_TRUE(job.ok());
  ASSERT_EQ(WaitForJob(*client, job->name(), Done).state(), lora::v1::SUCCEEDED);
  const std::string worker_log = dir_.Join("data/workers/local-0/worker.log");
  // Parses every line (a line that is not JSON fails the test); true once `want` matched one.
  auto scan = [](const std::string& text, const std::string& component,
                 const std::function<bool(const nlohmann::json&)>& want) {
    bool found = false;
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object()) {
        ADD_FAILURE() << component << ": not a JSON object: " << line;
        continue;
      }
      EXPECT_EQ(j.value("component", ""), component) << line;
      EXPECT_TRUE(j.contains("msg")) << line;
      EXPECT_THAT(j.value("level", ""), ::testing::AnyOf("info", "warning", "error")) << line;
      EXPECT_THAT(j.value("ts", ""),
                  ::testing::MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{3}Z"))
          << line;
      if (component == "lora-worker") {
        EXPECT_EQ(j.value("worker", ""), "local-0") << line;
      }
      found = found || want(j);
    }
    return found;
  };
  const std::string id = job->id();
  auto finished = [&](const nlohmann::json& j) {
    return j.value("msg", "") == "jobs/" + id + " SUCCEEDED" && j.value("job", "") == id &&
           j.value("attempt", 0) == 1 && j.value("state", "") == "SUCCEEDED";
  };
  auto ran = [&](const std::string& what) {
    return [&, what](const nlohmann::json& j) {
      return absl::StrContains(j.value("msg", ""), what) && j.value("job", "") == id &&
             j.value("attempt", 0) == 1 && j.value("rank", -1) == 0;
    };
  };
  // The lines are written as things happen, maybe just after GetJob saw the end.
  bool lorad_done = false, assigned = false, exited = false;
  for (int i = 0; i < 100 && !(lorad_done && assigned && exited); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    lorad_done = scan(lorad->log(), "lorad", finished);
    const std::string w = testing::ReadFile(worker_log);
    assigned = scan(w, "lora-worker", ran("assigned jobs/" + id + " attempt 1 rank 0/1"));
    exited = scan(w, "lora-worker", ran(" exited: code 0"));
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_TRUE(lorad_done) << lorad->log();
  EXPECT_TRUE(assigned) << testing::ReadFile(worker_log);
  EXPECT_TRUE(exited) << testing::ReadFile(worker_log);
  EXPECT_TRUE(scan(lorad->log(), "lorad", [](const nlohmann::json& j) {
    return absl::StartsWith(j.value("msg", ""), "serving on 127.0.0.1:") && j.contains("port") &&
           j.contains("revision");
  }));
}

// A cuda worker advertises the GPUs its engine sees, runs at most one rank per GPU, and gives
// each rank its own GPU (LOCAL_RANK); a job wider than the GPUs waits, saying so. The engine is a
// stand-in script that reports two GPUs (this machine has none) and records each rank's env.
TEST_F(ServiceTest, CudaWorkerAdvertisesItsGpusAndGivesEachRankItsOwn) {
  const std::string fake = dir_.Join("fake-lora-train.sh");
  const std::string record = dir_.Join("ranks.txt");
  std::ofstream(fake)
      << "#!/bin/sh\n"
         "if [ \"$1\" = version ]; then\n"
         "  echo '{\"version\":\"fake\",\"torch_version\":\"2.11.0\","
         "\"cuda_compiled\":true,\"cuda_version\":\"13.0\","
         "\"nccl_version\":\"2.28.9\",\"devices\":[\"cpu\",\"cuda\"],"
         "\"cuda_devices\":[{\"index\":0,\"name\":\"Fake GPU\","
         "\"total_memory_bytes\":1073741824},{\"index\":1,\"name\":\"Fake GPU\","
         "\"total_memory_bytes\":1073741824}]}'\n"
         "  exit 0\n"
         "fi\n"
         "echo \"rank=$RANK local_rank=$LOCAL_RANK local_world=$LOCAL_WORLD_SIZE\" >> "
      << record << "\nsleep 2\nexit 3\n";
  fs::permissions(fake, fs::perms::owner_all);

  ProcessResult too_many = testing::RunProcess(
      {testing::BinaryPath("worker/lora-worker"), "--device", "cuda", "--slots", "3",
       "--lora-train", fake, "--controller", "127.0.0.1:1", "--work-dir", dir_.Join("w0")},
      60);
  EXPECT_EQ(too_many.exit_code, 1);
  EXPECT_THAT(too_many.err, HasSubstr("--slots 3 but lora-train sees 2 GPU(s)"));

  // An engine whose answer lacks a field is refused, naming it (a default would advertise GPUs
  // the engine may not have).
  const std::string old_engine = dir_.Join("old-lora-train.sh");
  std::ofstream(old_engine) << "#!/bin/sh\necho '{\"version\":\"0.0.1\",\"torch_version\":"
                               "\"1.13.1\",\"cuda\":true,\"cuda_devices\":1}'\n";
  fs::permissions(old_engine, fs::perms::owner_all);
  ProcessResult old = testing::RunProcess(
      {testing::BinaryPath("worker/lora-worker"), "--device", "cuda", "--lora-train", old_engine,
       "--controller", "127.0.0.1:1", "--work-dir", dir_.Join("w0")},
      60);
  EXPECT_EQ(old.exit_code, 1);
  EXPECT_THAT(old.err, HasSubstr("version --json: field 'cuda_version' missing"));

  auto lorad = StartLorad(0);
  testing::ChildProcess worker(
      {testing::BinaryPath("worker/lora-worker"), "--controller", lorad->address(), "--worker-id",
       "gpu-1", "--device", "cuda", "--lora-train", fake, "--work-dir", dir_.Join("w1")},
      dir_.Join("worker.out"), dir_.Join("worker.err"));
  auto client = lorad->Client();
  auto cuda_spec = [](int world) {
    auto spec = TinyTrainSpec(5);
    spec.mutable_resources()->set_device("cuda");
    spec.mutable_resources()->set_world_size(world);
    spec.mutable_parallelism()->set_data_parallel_shard_degree(world);
    return spec;
  };
  auto wide = client->CreateJob(cuda_spec(3), "");
  ASSERT_TRUE(wide.ok()) << wide.status();
  Job waiting = WaitForJob(*client, wide->name(), [](const Job& j) {
    return absl::StrContains(j.queue_reason(), "needs 3 GPUs");
  });
  EXPECT_EQ(waiting.queue_reason(),
            "needs 3 GPUs at once; the connected cuda workers have 2 in all")
      << testing::ReadFile(dir_.Join("worker.err"));
  ASSERT_TRUE(client->CancelJob(wide->name()).ok());

  auto two = client->CreateJob(cuda_spec(2), "");
  ASSERT_TRUE(two.ok()) << two.status();
  // Both ranks start on the one worker, each on its own GPU.
  std::string ranks;
  for (int i = 0; i < 200; ++i) {
    ranks = testing::ReadFile(record);
    if (std::count(ranks.begin(), ranks.end(), '\n') >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_THAT(ranks, HasSubstr("rank=0 local_rank="));
  EXPECT_THAT(ranks, HasSubstr("rank=1 local_rank="));
  EXPECT_THAT(ranks, HasSubstr("local_rank=0 local_world=2"));
  EXPECT_THAT(ranks, HasSubstr("local_rank=1 local_world=2"));
  ASSERT_TRUE(client->CancelJob(two->name()).ok());
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(30), 0) << testing::ReadFile(dir_.Join("worker.err"));
}

}  // namespace
}  // namespace lora
