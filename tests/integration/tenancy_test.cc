// Tenants, roles and worker identity against a real lorad (issue 12, findings 2 and 4): one
// shared token let every holder read, cancel and download every job, any user token could pose
// as a worker, and a worker's identity was whatever it claimed in a header.
#include <signal.h>

#include <fstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lora/v1/job_service.grpc.pb.h"
#include "lora/worker/v1/worker_service.grpc.pb.h"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using lora::v1::Job;
using ::testing::HasSubstr;
using testing::Lorad;
using testing::TinyTrainSpec;
namespace wv1 = lora::worker::v1;

const std::string kAlice = "alice-0123456789abcdef";  // team-a, user
const std::string kBob = "bob-0123456789abcdef00";    // team-b, user
const std::string kRoot = "root-0123456789abcdef0";   // ops, admin
const std::string kPoolA = "poola-0123456789abcdef";  // pool-a, worker
const std::string kPoolB = "poolb-0123456789abcdef";  // pool-b, worker

class TenancyTest : public ::testing::Test {
 protected:
  std::string TokensFile(const std::string& extra = "") {
    const std::string path = dir_.Join("tokens.csv");
    std::ofstream(path + ".tmp") << kAlice << ",team-a,user\n"
                                 << kBob << ",team-b,user\n"
                                 << kRoot << ",ops,admin\n"
                                 << kPoolA << ",pool-a,worker\n"
                                 << kPoolB << ",pool-b,worker\n"
                                 << extra;
    std::filesystem::rename(path + ".tmp", path);
    return path;
  }
  std::unique_ptr<Lorad> Start(int local_workers, std::vector<std::string> extra) {
    auto l = std::make_unique<Lorad>(
        Lorad::Options{dir_.Join("data"), local_workers, 0, std::move(extra)});
    EXPECT_TRUE(l->Start()) << l->log();
    return l;
  }
  testing::TempDir dir_;
};

// Opens the worker stream with `token` and registers as `worker_id`; the first reply's status.
grpc::Status Register(const std::string& address, const std::string& token,
                      const std::string& worker_id, std::unique_ptr<grpc::ClientContext>* keep) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = wv1::WorkerService::NewStub(channel);
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  auto stream = stub->Connect(ctx.get());
  wv1::WorkerMessage m;
  m.mutable_register_()->set_worker_id(worker_id);
  m.mutable_register_()->mutable_capabilities()->set_device("cpu");
  m.mutable_register_()->mutable_capabilities()->set_slots(1);
  stream->Write(m);
  wv1::ControllerMessage reply;
  if (stream->Read(&reply) && reply.has_ack()) {
    // Registered: leave the stream open (the id stays bound while this process lives).
    static std::vector<std::pair<
        std::shared_ptr<grpc::Channel>,
        std::unique_ptr<grpc::ClientReaderWriter<wv1::WorkerMessage, wv1::ControllerMessage>>>>
        streams;
    streams.emplace_back(channel, std::move(stream));
    *keep = std::move(ctx);
    return grpc::Status::OK;
  }
  stream->WritesDone();
  return stream->Finish();
}

// An upload acting as `worker_id`, with `token`; its status.
grpc::Status Upload(const std::string& address, const std::string& token,
                    const std::string& worker_id, const std::string& job_id, int attempt = 1) {
  auto stub =
      wv1::WorkerService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.AddMetadata("lora-worker-id", worker_id);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  wv1::UploadResult result;
  auto writer = stub->UploadArtifact(&ctx, &result);
  wv1::UploadChunk header;
  header.mutable_header()->mutable_ref()->set_job_id(job_id);
  header.mutable_header()->mutable_ref()->set_attempt(attempt);
  header.mutable_header()->set_path("final/adapter/adapter_model.safetensors");
  header.mutable_header()->set_size(4);
  header.mutable_header()->set_sha256(std::string(64, '0'));
  writer->Write(header);
  wv1::UploadChunk data;
  data.set_data("evil");
  writer->Write(data);
  writer->WritesDone();
  return writer->Finish();
}

TEST_F(TenancyTest, TenantsSeeOnlyTheirOwnJobsAndAdminsSeeAll) {
  auto lorad = Start(0, {"--auth-tokens-file", TokensFile()});
  auto alice = lorad->Client(kAlice), bob = lorad->Client(kBob), root = lorad->Client(kRoot);
  auto job = alice->CreateJob(TinyTrainSpec(4), "same-request");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->tenant(), "team-a");
  // Bob: NOT_FOUND with the very message a missing job gets (existence is not revealed).
  auto missing = bob->GetJob("jobs/doesnotexist00");
  auto foreign = bob->GetJob(job->name());
  ASSERT_EQ(foreign.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(foreign.status().message(), absl::StrCat(job->name(), " not found"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->CancelJob(job->name()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->ListCheckpoints(job->name()).status().code(), absl::StatusCode::kNotFound);
  absl::Status watched = bob->Watch(job->name(), 0, [](const lora::v1::JobEvent&) { return true; });
  EXPECT_EQ(watched.code(), absl::StatusCode::kNotFound);
  auto download =
      bob->Download(job->name(), "final/adapter/adapter_model.safetensors", dir_.Join("stolen"));
  EXPECT_EQ(download.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(dir_.Join("stolen")));
  EXPECT_EQ(bob->ListJobs({})->jobs_size(), 0);
  // The same request id in another tenant is another job, never Alice's.
  auto bobs = bob->CreateJob(TinyTrainSpec(4), "same-request");
  ASSERT_TRUE(bobs.ok()) << bobs.status();
  EXPECT_NE(bobs->name(), job->name());
  EXPECT_EQ(bobs->tenant(), "team-b");
  EXPECT_EQ(alice->CreateJob(TinyTrainSpec(4), "same-request")->name(), job->name());
  auto alices = alice->ListJobs({});
  ASSERT_EQ(alices->jobs_size(), 1);
  EXPECT_EQ(alices->jobs(0).name(), job->name());
  // The admin sees and cancels everyone's.
  EXPECT_EQ(root->ListJobs({})->jobs_size(), 2);
  EXPECT_TRUE(root->GetJob(job->name()).ok());
  EXPECT_TRUE(root->CancelJob(bobs->name()).ok());
  // A worker credential is not a user credential.
  EXPECT_EQ(lorad->Client(kPoolA)->ListJobs({}).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(lorad->Client()->ListJobs({}).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(TenancyTest, TenantQuotasAnswerResourceExhaustedWithTheFigures) {
  auto lorad = Start(0, {"--auth-tokens-file", TokensFile(), "--tenant-max-queued-jobs", "2",
                         "--tenant-max-running-ranks", "2"});
  auto alice = lorad->Client(kAlice), bob = lorad->Client(kBob);
  ASSERT_TRUE(alice->CreateJob(TinyTrainSpec(4), "q1").ok());
  ASSERT_TRUE(alice->CreateJob(TinyTrainSpec(4), "q2").ok());
  auto third = alice->CreateJob(TinyTrainSpec(4), "q3");
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("tenant 'team-a' has 2 queued jobs"));
  // A retry of a request that went through still answers with its job.
  EXPECT_TRUE(alice->CreateJob(TinyTrainSpec(4), "q2").ok());
  // Other tenants are not affected.
  EXPECT_TRUE(bob->CreateJob(TinyTrainSpec(4), "b1").ok());
  lora::v1::JobSpec wide = TinyTrainSpec(4);
  wide.mutable_resources()->set_world_size(3);
  auto too_wide = bob->CreateJob(wide, "b2");
  EXPECT_EQ(too_wide.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_wide.status().message(), HasSubstr("may run at most 2 at once"));
}

// Finding 2: a user token could register as a worker and receive jobs with their data paths.
TEST_F(TenancyTest, OnlyWorkerCredentialsReachTheWorkerPlane) {
  auto lorad = Start(0, {"--auth-tokens-file", TokensFile()});
  std::unique_ptr<grpc::ClientContext> keep;
  EXPECT_EQ(Register(lorad->address(), kAlice, "w-user", &keep).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Register(lorad->address(), kRoot, "w-admin", &keep).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Register(lorad->address(), "", "w-anon", &keep).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Register(lorad->address(), kPoolA, "w-pool", &keep).ok());
}

// Finding 2: setting `lora-worker-id` to another worker's id let a caller upload over that
// worker's verified checkpoint. A worker id is bound to the credential that registered it.
TEST_F(TenancyTest, AWorkerIdIsBoundToTheCredentialThatRegisteredIt) {
  auto lorad = Start(0, {"--auth-tokens-file", TokensFile()});
  std::unique_ptr<grpc::ClientContext> keep;
  ASSERT_TRUE(Register(lorad->address(), kPoolA, "node-1", &keep).ok());
  // Pool B can neither take node-1's id nor act as it.
  grpc::Status taken = Register(lorad->address(), kPoolB, "node-1", &keep);
  EXPECT_EQ(taken.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(taken.error_message(), HasSubstr("bound to another credential"));
  auto job = lorad->Client(kAlice)->CreateJob(TinyTrainSpec(4), "");
  ASSERT_TRUE(job.ok());
  grpc::Status forged = Upload(lorad->address(), kPoolB, "node-1", job->id());
  EXPECT_EQ(forged.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(forged.error_message(), HasSubstr("has not registered worker 'node-1'"));
  // Node-1 itself may only upload for an assignment it holds right now (it runs attempt 1).
  grpc::Status unassigned = Upload(lorad->address(), kPoolA, "node-1", job->id(), 2);
  EXPECT_EQ(unassigned.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(unassigned.error_message(), HasSubstr("does not run rank"));
}

// Local workers authenticate with a secret lorad makes for them; outsiders cannot register,
// even on loopback, once lorad has any credential.
TEST_F(TenancyTest, LocalWorkersUseAPerProcessSecret) {
  const std::string client = dir_.Join("client.token");
  std::ofstream(client) << kAlice << "\n";
  auto lorad = Start(1, {"--auth-token-file", client});
  auto job = lorad->Client(kAlice)->CreateJob(TinyTrainSpec(3), "local");
  ASSERT_TRUE(job.ok()) << job.status();
  Job done = testing::WaitForJob(*lorad->Client(kAlice), job->name(), [](const Job& j) {
    return j.state() == lora::v1::SUCCEEDED || j.state() == lora::v1::FAILED;
  });
  EXPECT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << lorad->log();
  std::unique_ptr<grpc::ClientContext> keep;
  EXPECT_EQ(Register(lorad->address(), "", "intruder", &keep).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Register(lorad->address(), kAlice, "intruder", &keep).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(TenancyTest, TokensFileReloadsOnChangeAndOnSighup) {
  auto lorad = Start(0, {"--auth-tokens-file", TokensFile()});
  const std::string carol = "carol-0123456789abcdef";
  EXPECT_EQ(lorad->Client(carol)->ListJobs({}).status().code(), absl::StatusCode::kUnauthenticated);
  TokensFile(carol + ",team-c,user\n");
  bool in = false;
  for (int i = 0; i < 100 && !in; ++i) {
    in = lorad->Client(carol)->ListJobs({}).ok();
    if (!in) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(in) << lorad->log();
  // Revoked by SIGHUP right after the edit (no waiting for the poll).
  TokensFile();
  ::kill(lorad->pid(), SIGHUP);
  bool out = false;
  for (int i = 0; i < 100 && !out; ++i) {
    out = lorad->Client(carol)->ListJobs({}).status().code() == absl::StatusCode::kUnauthenticated;
    if (!out) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(out);
  // A broken edit keeps the last good credentials and says why, without the tokens.
  std::ofstream(dir_.Join("tokens.csv")) << kAlice << ",team-a\n";
  ::kill(lorad->pid(), SIGHUP);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_TRUE(lorad->Client(kAlice)->ListJobs({}).ok());
  EXPECT_THAT(lorad->log(), HasSubstr("line 1: want token,tenant,role"));
  EXPECT_EQ(lorad->log().find(kAlice), std::string::npos);
}

}  // namespace
}  // namespace lora
