// The small pure parts of the controller core: the state machine, engine-event translation and
// the worker registry.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/job_spec/job_spec.h"
#include "server/core/engine_event_translator.h"
#include "server/core/job_lifecycle.h"
#include "server/core/list_filter.h"
#include "server/core/worker_registry.h"

namespace lora::server {
namespace {

using lora::v1::JobState;
using ::testing::HasSubstr;
namespace ev1 = lora::engine::v1;
namespace wv1 = lora::worker::v1;

TEST(JobLifecycleTest, OnlyTheDocumentedTransitionsAreAllowed) {
  EXPECT_TRUE(TransitionAllowed(lora::v1::QUEUED, lora::v1::STARTING));
  EXPECT_TRUE(TransitionAllowed(lora::v1::RUNNING, lora::v1::QUEUED));
  EXPECT_TRUE(TransitionAllowed(lora::v1::CANCELLING, lora::v1::SUCCEEDED));
  EXPECT_FALSE(TransitionAllowed(lora::v1::QUEUED, lora::v1::RUNNING));
  EXPECT_FALSE(TransitionAllowed(lora::v1::CANCELLING, lora::v1::QUEUED));
  for (JobState terminal : {lora::v1::SUCCEEDED, lora::v1::FAILED, lora::v1::CANCELLED}) {
    for (int to = lora::v1::QUEUED; to <= lora::v1::PAUSED; ++to)
      EXPECT_FALSE(TransitionAllowed(terminal, static_cast<JobState>(to)));
  }
}

TEST(JobLifecycleTest, APauseGoesThroughPausingToPausedAndOnlyResumeOrCancelLeavePaused) {
  EXPECT_TRUE(TransitionAllowed(lora::v1::QUEUED, lora::v1::PAUSED));
  EXPECT_TRUE(TransitionAllowed(lora::v1::RUNNING, lora::v1::PAUSING));
  EXPECT_TRUE(TransitionAllowed(lora::v1::PAUSING, lora::v1::PAUSED));
  EXPECT_TRUE(TransitionAllowed(lora::v1::PAUSING, lora::v1::CANCELLING));
  EXPECT_TRUE(TransitionAllowed(lora::v1::PAUSED, lora::v1::QUEUED));
  EXPECT_TRUE(TransitionAllowed(lora::v1::PAUSED, lora::v1::CANCELLED));
  EXPECT_FALSE(TransitionAllowed(lora::v1::RUNNING, lora::v1::PAUSED));  // ranks stop first
  EXPECT_FALSE(TransitionAllowed(lora::v1::PAUSED, lora::v1::RUNNING));
  EXPECT_FALSE(TransitionAllowed(lora::v1::PAUSED, lora::v1::STARTING));
  EXPECT_FALSE(TransitionAllowed(lora::v1::CANCELLING, lora::v1::PAUSING));
}

TEST(JobFilterTest, ParsesLabelsStatesAndKindsAndNamesTheTermItCannot) {
  auto f = ParseJobFilter(
      R"(labels.team = "nlp" AND labels.sweep:* AND state = RUNNING AND kind = TRAIN)");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->label_equals.at("team"), "nlp");
  EXPECT_EQ(f->label_present.count("sweep"), 1u);
  EXPECT_EQ(f->states, (std::vector<JobState>{lora::v1::RUNNING}));
  EXPECT_EQ(f->kinds, (std::vector<lora::v1::JobKind>{lora::v1::JOB_KIND_TRAIN}));
  lora::v1::Job job;
  job.set_state(lora::v1::RUNNING);
  job.set_kind(lora::v1::JOB_KIND_TRAIN);
  (*job.mutable_spec()->mutable_job()->mutable_labels())["team"] = "nlp";
  EXPECT_FALSE(f->Matches(job));  // no sweep label
  (*job.mutable_spec()->mutable_job()->mutable_labels())["sweep"] = "x";
  EXPECT_TRUE(f->Matches(job));
  // A quoted value may hold " AND " and escaped quotes.
  auto quoted = ParseJobFilter(R"(labels.note = "a AND "b"")");
  ASSERT_TRUE(quoted.ok()) << quoted.status();
  EXPECT_EQ(quoted->label_equals.at("note"), "a AND \"b\"");
  EXPECT_TRUE(ParseJobFilter("  ").ok());
  for (const char* bad : {"owner = me", "state = SLEEPING", "labels.team", "labels.x = \"open",
                          "kind = BAKE", "labels.a = b c"}) {
    auto s = ParseJobFilter(bad);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr("filter:")) << bad;
  }
  EXPECT_FALSE(ParseJobFilter(std::string(kMaxFilterBytes + 1, 'x')).ok());
  EXPECT_TRUE(*ParseOrderByAscending("create_time"));
  EXPECT_TRUE(*ParseOrderByAscending("create_time asc"));
  EXPECT_FALSE(*ParseOrderByAscending(""));
  EXPECT_FALSE(*ParseOrderByAscending("create_time desc"));
  EXPECT_FALSE(ParseOrderByAscending("priority").ok());
}

TEST(SpecDifferenceTest, NamesTheFirstDifferingKeyPathOrNothing) {
  lora::v1::JobSpec a;
  a.mutable_training()->set_steps(10);
  (*a.mutable_job()->mutable_labels())["x"] = "1";
  (*a.mutable_job()->mutable_labels())["y"] = "2";
  lora::v1::JobSpec b = a;
  EXPECT_EQ(FirstSpecDifference(a, b), "");
  b.mutable_training()->set_steps(11);
  EXPECT_EQ(FirstSpecDifference(a, b), "training.steps");
  b = a;
  (*b.mutable_job()->mutable_labels())["y"] = "3";
  EXPECT_EQ(FirstSpecDifference(a, b), "job.labels");
  b = a;
  b.mutable_lora()->add_target_modules("q_proj");
  EXPECT_EQ(FirstSpecDifference(a, b), "lora.target_modules");
}

TEST(JobLifecycleTest, APlannedTransitionChangesOnlyTheCopyAndNumbersItsEvents) {
  lora::v1::Job job;
  job.set_id("j");
  job.set_state(lora::v1::RUNNING);
  job.set_last_sequence(7);
  lora::v1::JobEvent log;
  log.mutable_log()->set_message("bye");
  auto update = PlanTransition(job, lora::v1::FAILED, "boom", {log}, 1'000'000);
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(job.state(), lora::v1::RUNNING);  // the original is untouched
  EXPECT_EQ(update->job.state(), lora::v1::FAILED);
  ASSERT_EQ(update->events.size(), 2u);
  EXPECT_EQ(update->events[0].state_change().reason(), "boom");
  EXPECT_EQ(update->events[0].sequence(), 8);
  EXPECT_EQ(update->events[1].sequence(), 9);
  EXPECT_EQ(update->job.last_sequence(), 9);
  EXPECT_TRUE(update->job.has_end_time());
}

TEST(JobLifecycleTest, AForbiddenTransitionIsFailedPreconditionNamingBothStates) {
  lora::v1::Job job;
  job.set_id("j");
  job.set_state(lora::v1::SUCCEEDED);
  auto update = PlanTransition(job, lora::v1::RUNNING, "", {}, 0);
  EXPECT_EQ(update.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(update.status().message(), HasSubstr("SUCCEEDED to RUNNING"));
}

ArtifactLookup Stored(std::map<std::string, std::string> sha_by_path) {
  return [sha_by_path](const std::string& path) -> absl::StatusOr<lora::v1::ArtifactFile> {
    auto it = sha_by_path.find(path);
    if (it == sha_by_path.end()) return absl::NotFoundError(path);
    lora::v1::ArtifactFile f;
    f.set_path(path);
    f.set_sha256(it->second);
    return f;
  };
}

lora::v1::Job TwoRankJob() {
  lora::v1::Job job;
  job.set_attempt(2);
  job.add_ranks()->set_rank(0);
  job.add_ranks()->set_rank(1);
  return job;
}

TEST(EngineEventTranslatorTest, OnlyRankZeroReportsTheJobsMetricsButEveryRankItsHealth) {
  lora::v1::Job job = TwoRankJob();
  ev1::EngineEvent step;
  step.mutable_step()->set_step(5);
  step.mutable_step()->set_loss(2.5);
  TranslatedEvent t = TranslateEngineEvent(step, 1, 2, Stored({}), 0, &job);
  EXPECT_TRUE(t.events.empty());
  EXPECT_EQ(job.progress().step(), 0);
  EXPECT_EQ(job.ranks(1).step(), 5);
  t = TranslateEngineEvent(step, 0, 2, Stored({}), 0, &job);
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_EQ(t.events[0].metrics().loss(), 2.5);
  EXPECT_EQ(job.progress().step(), 5);
}

TEST(EngineEventTranslatorTest, ACheckpointCountsOnlyWhenEveryUploadedFileIsStoredIntact) {
  lora::v1::Job job = TwoRankJob();
  ev1::EngineEvent e;
  e.mutable_checkpoint()->set_step(10);
  e.mutable_checkpoint()->set_job_path("checkpoints/step-10");
  auto* f = e.mutable_checkpoint()->add_uploaded();
  f->set_path("checkpoints/step-10/a");
  f->set_sha256("good");
  auto* m = e.mutable_checkpoint()->add_uploaded();
  m->set_path("checkpoints/step-10/manifest.json");
  m->set_sha256("m");
  TranslatedEvent t = TranslateEngineEvent(
      e, 0, 2, Stored({{"checkpoints/step-10/a", "bad"}, {m->path(), "m"}}), 0, &job);
  EXPECT_FALSE(t.checkpoint.has_value());
  EXPECT_EQ(job.latest_checkpoint_step(), 0);
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_THAT(t.events[0].log().message(), HasSubstr("not uploaded intact"));
  t = TranslateEngineEvent(e, 0, 2, Stored({{"checkpoints/step-10/a", "good"}, {m->path(), "m"}}),
                           0, &job);
  ASSERT_TRUE(t.checkpoint.has_value());
  EXPECT_EQ(t.checkpoint->attempt(), 2);
  EXPECT_EQ(job.latest_checkpoint_step(), 10);
}

// Found by the chaos test: lorad restarted while the manifest was uploading; the checkpoint was
// recorded without it, and the next attempt could not resume from it.
TEST(EngineEventTranslatorTest, ACheckpointWhoseManifestOrAFileDidNotArriveIsNotRecorded) {
  lora::v1::Job job = TwoRankJob();
  ev1::EngineEvent e;
  e.mutable_checkpoint()->set_step(10);
  e.mutable_checkpoint()->set_job_path("checkpoints/step-10");
  e.mutable_checkpoint()->add_files()->set_path("adapter/adapter_model.safetensors");
  e.mutable_checkpoint()->add_files()->set_path("optimizer.safetensors");
  auto* f = e.mutable_checkpoint()->add_uploaded();
  f->set_path("checkpoints/step-10/adapter/adapter_model.safetensors");
  f->set_sha256("a");
  auto* o = e.mutable_checkpoint()->add_uploaded();
  o->set_path("checkpoints/step-10/optimizer.safetensors");
  o->set_sha256("o");
  const ev1::FileDigest optimizer = *o;
  auto lookup =
      Stored({{f->path(), "a"}, {o->path(), "o"}, {"checkpoints/step-10/manifest.json", "m"}});
  TranslatedEvent t = TranslateEngineEvent(e, 0, 2, lookup, 0, &job);
  EXPECT_FALSE(t.checkpoint.has_value());
  ASSERT_EQ(t.events.size(), 1u);
  EXPECT_THAT(t.events[0].log().message(), HasSubstr("manifest.json was not uploaded"));
  auto* m = e.mutable_checkpoint()->add_uploaded();
  m->set_path("checkpoints/step-10/manifest.json");
  m->set_sha256("m");
  e.mutable_checkpoint()->mutable_uploaded()->DeleteSubrange(1, 1);  // the optimizer is missing
  t = TranslateEngineEvent(e, 0, 2, lookup, 0, &job);
  EXPECT_FALSE(t.checkpoint.has_value());
  EXPECT_THAT(t.events[0].log().message(), HasSubstr("optimizer.safetensors was not uploaded"));
  *e.mutable_checkpoint()->add_uploaded() = optimizer;
  t = TranslateEngineEvent(e, 0, 2, lookup, 0, &job);
  EXPECT_TRUE(t.checkpoint.has_value());
}

TEST(EngineEventTranslatorTest, ACheckpointWithNoUploadedFilesIsNotRecorded) {
  lora::v1::Job job = TwoRankJob();
  ev1::EngineEvent e;
  e.mutable_checkpoint()->set_step(4);
  TranslatedEvent t = TranslateEngineEvent(e, 0, 2, Stored({}), 0, &job);
  EXPECT_FALSE(t.checkpoint.has_value());
}

TEST(EngineEventTranslatorTest, AFailureNamesTheRankAndKeepsItsCode) {
  lora::v1::Job job = TwoRankJob();
  ev1::EngineEvent e;
  e.mutable_failed()->set_reason("peer closed");
  e.mutable_failed()->set_code("UNAVAILABLE");
  TranslatedEvent t = TranslateEngineEvent(e, 1, 2, Stored({}), 0, &job);
  EXPECT_EQ(*t.failure_reason, "rank 1: peer closed");
  EXPECT_EQ(t.failure_code, absl::StatusCode::kUnavailable);
  EXPECT_EQ(job.error().code(), static_cast<int>(absl::StatusCode::kUnavailable));
  e.mutable_failed()->set_code("");
  t = TranslateEngineEvent(e, 0, 2, Stored({}), 0, &job);
  EXPECT_EQ(t.failure_code, absl::StatusCode::kInternal);
}

TEST(EngineEventTranslatorTest, FinishedWithMissingOutputsIsAFailureNotASuccess) {
  lora::v1::Job job = TwoRankJob();
  ev1::EngineEvent e;
  auto* f = e.mutable_finished()->add_uploaded();
  f->set_path("final/adapter/adapter_model.safetensors");
  f->set_sha256("x");
  TranslatedEvent t = TranslateEngineEvent(e, 0, 2, Stored({}), 0, &job);
  EXPECT_FALSE(t.rank0_finished);
  EXPECT_THAT(*t.failure_reason, HasSubstr("outputs incomplete"));
  EXPECT_EQ(t.failure_code, absl::StatusCode::kUnavailable);
  t = TranslateEngineEvent(e, 0, 2, Stored({{f->path(), "x"}}), 0, &job);
  EXPECT_TRUE(t.rank0_finished);
  EXPECT_EQ(job.outputs_size(), 1);
  // The worker could not upload one of them: incomplete, whatever did arrive.
  e.mutable_finished()->add_not_uploaded("final/adapter/adapter_config.json");
  t = TranslateEngineEvent(e, 0, 2, Stored({{f->path(), "x"}}), 0, &job);
  EXPECT_FALSE(t.rank0_finished);
  EXPECT_THAT(*t.failure_reason, HasSubstr("adapter_config.json was not uploaded"));
}

class NullChannel : public WorkerChannel {
 public:
  void Send(const wv1::ControllerMessage&) override {}
  void Close() override {}
};

wv1::Register Reg(const std::string& id, const std::string& device, int slots, int gpus) {
  wv1::Register r;
  r.set_worker_id(id);
  r.mutable_capabilities()->set_device(device);
  r.mutable_capabilities()->set_slots(slots);
  for (int i = 0; i < gpus; ++i) r.mutable_capabilities()->add_gpus()->set_index(i);
  return r;
}

TEST(WorkerRegistryTest, ACudaWorkerNeverAdvertisesMoreSlotsThanGpus) {
  WorkerRegistry reg;
  reg.Connect(Reg("g", "cuda", 8, 2), std::make_shared<NullChannel>(), absl::Now());
  reg.Connect(Reg("c", "cpu", 0, 0), std::make_shared<NullChannel>(), absl::Now());
  EXPECT_EQ(reg.Find("g")->capabilities.slots(), 2);
  EXPECT_EQ(reg.Find("c")->capabilities.slots(), 1);
}

TEST(WorkerRegistryTest, AReconnectReturnsTheStaleStreamAndItsEndIsIgnored) {
  WorkerRegistry reg;
  auto first = std::make_shared<NullChannel>();
  auto second = std::make_shared<NullChannel>();
  EXPECT_EQ(reg.Connect(Reg("w", "cpu", 1, 0), first, absl::Now()), nullptr);
  EXPECT_EQ(reg.Connect(Reg("w", "cpu", 1, 0), second, absl::Now()), first);
  EXPECT_FALSE(reg.Disconnect("w", first.get(), absl::Now()));
  EXPECT_EQ(reg.Channel("w"), second.get());
  EXPECT_TRUE(reg.Disconnect("w", second.get(), absl::Now()));
  EXPECT_EQ(reg.Channel("w"), nullptr);
}

TEST(WorkerRegistryTest, SilentWorkersExpireWithWhy) {
  WorkerRegistry reg;
  const absl::Time t0 = absl::Now();
  reg.Connect(Reg("a", "cpu", 1, 0), std::make_shared<NullChannel>(), t0);
  reg.Connect(Reg("b", "cpu", 1, 0), std::make_shared<NullChannel>(), t0);
  reg.Heartbeat("a", t0 + absl::Seconds(10));
  auto expired = reg.Expired(t0 + absl::Seconds(16), absl::Seconds(15));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].first, "b");
  EXPECT_EQ(expired[0].second, "missed heartbeats");
}

}  // namespace
}  // namespace lora::server
