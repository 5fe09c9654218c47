// The job lifecycle over real processes: pause a running job (its ranks checkpoint and release
// the worker), resume it from that checkpoint to success, delete it once ended; invalid specs
// carry google.rpc.BadRequest field violations any gRPC client can read.
#include <grpcpp/grpcpp.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "gtest/gtest.h"
#include "lora/v1/job_service.grpc.pb.h"
#include "tests/integration/lorad_harness.h"
#include "tests/test_util.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class JobLifecycleTest : public testing::LoradTest {};

TEST_F(JobLifecycleTest, APausedJobReleasesItsWorkerAndResumesFromItsCheckpointToSuccess) {
  auto lorad = StartLorad(/*local_workers=*/1);
  auto client = lorad->Client();
  auto job =
      client->CreateJob(testing::TinyTrainSpec(/*steps=*/60, /*checkpoint_interval=*/50), "");
  ASSERT_TRUE(job.ok()) << job.status();
  lora::v1::Job running = testing::WaitForJob(
      *client, job->name(), [](const lora::v1::Job& j) { return j.progress().step() >= 3; });
  ASSERT_GE(running.progress().step(), 3) << lorad->log();

  lora::v1::PauseJobRequest pause;
  pause.set_name(job->name());
  auto channel = grpc::CreateChannel(lorad->address(), grpc::InsecureChannelCredentials());
  auto stub = lora::v1::JobService::NewStub(channel);
  lora::v1::Job answer;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->PauseJob(&ctx, pause, &answer).ok());
  }
  EXPECT_EQ(answer.state(), lora::v1::PAUSING);
  lora::v1::Job paused = testing::WaitForJob(
      *client, job->name(), [](const lora::v1::Job& j) { return j.state() != lora::v1::PAUSING; });
  ASSERT_EQ(paused.state(), lora::v1::PAUSED) << lorad->log();
  // The drain checkpoint, taken when the pause arrived (the interval alone would give none).
  const int64_t checkpoint = paused.latest_checkpoint_step();
  EXPECT_GE(checkpoint, running.progress().step());
  EXPECT_TRUE(paused.workers().empty());
  EXPECT_LT(paused.progress().step(), 60);

  lora::v1::ResumeJobRequest resume;
  resume.set_name(job->name());
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ResumeJob(&ctx, resume, &answer).ok());
  }
  lora::v1::Job done = testing::WaitForJob(*client, job->name(), testing::JobEnded, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  EXPECT_EQ(done.restarts(), 1);
  // The resumed run's first step is the one after the checkpoint: nothing trained twice.
  std::vector<lora::v1::JobEvent> events;
  ASSERT_TRUE(client
                  ->Watch(job->name(), 0,
                          [&](const lora::v1::JobEvent& e) {
                            events.push_back(e);
                            return true;
                          })
                  .ok());
  bool after_resume = false;
  int64_t first_step_after = -1;
  for (const auto& e : events) {
    if (e.has_state_change() && e.state_change().from() == lora::v1::PAUSED) after_resume = true;
    if (after_resume && e.has_metrics() && first_step_after < 0)
      first_step_after = e.metrics().step();
  }
  EXPECT_EQ(first_step_after, checkpoint + 1) << testing::StateChanges(events);
}

TEST_F(JobLifecycleTest, DeleteRemovesAnEndedJobAndItsArtifactsAndRefusesARunningOne) {
  auto lorad = StartLorad(/*local_workers=*/1);
  auto client = lorad->Client();
  auto job = client->CreateJob(testing::TinyTrainSpec(/*steps=*/4, /*checkpoint_interval=*/2), "");
  ASSERT_TRUE(job.ok());
  auto stub = lora::v1::JobService::NewStub(
      grpc::CreateChannel(lorad->address(), grpc::InsecureChannelCredentials()));
  lora::v1::DeleteJobRequest del;
  del.set_name(job->name());
  lora::v1::DeleteJobResponse deleted;
  {
    grpc::ClientContext ctx;
    grpc::Status early = stub->DeleteJob(&ctx, del, &deleted);
    EXPECT_EQ(early.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << early.error_message();
  }
  lora::v1::Job done = testing::WaitForJob(*client, job->name(), testing::JobEnded, 240);
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << lorad->log();
  const fs::path artifacts = fs::path(dir_.Join("data")) / "artifacts" / job->id();
  ASSERT_TRUE(fs::exists(artifacts));
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->DeleteJob(&ctx, del, &deleted).ok());
  }
  EXPECT_FALSE(fs::exists(artifacts));
  EXPECT_EQ(client->GetJob(job->name()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobLifecycleTest, AnInvalidSpecCarriesBadRequestFieldViolations) {
  auto lorad = StartLorad(/*local_workers=*/0);
  auto stub = lora::v1::JobService::NewStub(
      grpc::CreateChannel(lorad->address(), grpc::InsecureChannelCredentials()));
  lora::v1::CreateJobRequest request;
  *request.mutable_spec() = testing::TinyTrainSpec(4);
  request.mutable_spec()->mutable_training()->set_steps(-1);
  request.mutable_spec()->mutable_lora()->set_rank(-2);
  lora::v1::Job job;
  grpc::ClientContext ctx;
  grpc::Status status = stub->CreateJob(&ctx, request, &job);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  ASSERT_EQ(details.details_size(), 1);
  EXPECT_EQ(details.details(0).type_url(), "type.googleapis.com/google.rpc.BadRequest");
  google::rpc::BadRequest bad;
  ASSERT_TRUE(bad.ParseFromString(details.details(0).value()));
  std::vector<std::string> fields;
  for (const auto& v : bad.field_violations()) fields.push_back(v.field());
  EXPECT_THAT(fields, ::testing::IsSupersetOf({"training.steps", "lora.rank"}));
}

}  // namespace
}  // namespace lora
