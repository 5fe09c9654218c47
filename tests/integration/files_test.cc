// Uploaded files with real processes: data that lives only on the client reaches a worker that
// shares no disk with it (a worker whose data roots hold nothing of the client's), is fetched
// once per worker however many ranks read it, and cannot be deleted while a job needs it.
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "client/file_upload.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lora/worker/v1/worker_service.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

lora::v1::JobSpec SpecReading(const std::string& dataset, int world_size) {
  lora::v1::JobSpec spec;
  spec.mutable_job()->set_name("files");
  spec.mutable_model()->set_flavor("tiny");
  spec.mutable_lora()->set_rank(4);
  spec.mutable_lora()->add_target_modules("q_proj");
  spec.mutable_lora()->add_target_modules("v_proj");
  spec.mutable_training()->set_steps(3);
  spec.mutable_training()->set_seq_len(32);
  spec.mutable_training()->set_local_batch_size(2);
  spec.mutable_dataset()->set_path(dataset);
  spec.mutable_dataset()->set_format("text");
  spec.mutable_dataset()->set_validation_fraction(0.1);
  spec.mutable_resources()->set_world_size(world_size);
  return spec;
}

bool Done(const lora::v1::Job& j) { return testing::JobEnded(j); }

int CountLines(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_.Join("client"));
    fs::create_directories(dir_.Join("worker-root"));  // the worker may read only this
    dataset_ = dir_.Join("client/train.jsonl");
    std::ofstream out(dataset_);
    for (int i = 0; i < 200; ++i)
      out << nlohmann::json{{"text", absl::StrCat("the dog sees ", i, " blue boxes.")}}.dump()
          << "\n";
  }

  testing::TempDir dir_;
  std::string dataset_;
};

TEST_F(FilesTest, DataOnlyTheClientHasTrainsOnARootedWorkerFetchedOnceForTwoRanks) {
  testing::Lorad lorad(testing::Lorad::Options{dir_.Join("lorad"), /*local_workers=*/0});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  testing::ChildProcess worker(
      {testing::BinaryPath("worker/lora-worker"), "--controller", lorad.address(), "--worker-id",
       "remote", "--work-dir", dir_.Join("worker"), "--slots", "2", "--threads-per-rank", "1",
       "--data-root", dir_.Join("worker-root")},
      dir_.Join("worker.out"), dir_.Join("worker.err"));
  auto client = lorad.Client();
  FileUploader uploader(client.get());
  int64_t progress_calls = 0, last_sent = 0;
  auto file = uploader.Upload(dataset_, [&](const UploadProgress& p) {
    ++progress_calls;
    last_sent = p.sent;
  });
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->display_name(), "train.jsonl");
  EXPECT_EQ(last_sent, file->size_bytes());
  EXPECT_GT(progress_calls, 0);
  // Deleting the local copy right after the upload returns must not matter.
  fs::remove(dataset_);

  auto job = client->CreateJob(SpecReading(file->name(), /*world_size=*/2), "");
  ASSERT_TRUE(job.ok()) << job.status();
  // A job that has not ended holds its files.
  absl::Status in_use = uploader.DeleteFile(file->name());
  EXPECT_EQ(in_use.code(), absl::StatusCode::kFailedPrecondition) << in_use;

  lora::v1::Job done = testing::WaitForJob(*client, job->name(), Done, 240);
  const std::string worker_log = testing::ReadFile(dir_.Join("worker.err"));
  ASSERT_EQ(done.state(), lora::v1::SUCCEEDED) << done.error().message() << "\n" << worker_log;
  EXPECT_EQ(CountLines(worker_log, "fetched blob"), 1) << worker_log;

  const std::string sha = file->entries(0).sha256();
  const std::string stored =
      absl::StrCat(dir_.Join("lorad"), "/blobs/sha256/", sha.substr(0, 2), "/", sha);
  EXPECT_TRUE(fs::exists(stored));
  EXPECT_TRUE(fs::exists(dir_.Join("worker") + "/cache/blobs/" + sha));
  // Ended: the file can go, and its bytes with it (no one else holds them).
  EXPECT_TRUE(uploader.DeleteFile(file->name()).ok());
  EXPECT_FALSE(fs::exists(stored));
  EXPECT_EQ(uploader.GetFile(file->name()).status().code(), absl::StatusCode::kNotFound);
  worker.Signal(SIGTERM);
  worker.Wait(30);
}

TEST_F(FilesTest, ASpecNamingAnUploadThatDoesNotExistIsRefusedNamingTheField) {
  testing::Lorad lorad(testing::Lorad::Options{dir_.Join("lorad"), /*local_workers=*/0});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  auto client = lorad.Client();
  auto job = client->CreateJob(SpecReading("files/f-000000000000000000000000", 1), "");
  EXPECT_EQ(job.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(job.status().message(), HasSubstr("dataset.path: files/f-000000000000000000000000"));
}

TEST_F(FilesTest, AWorkerCannotFetchABlobThatNoAssignmentItHoldsNames) {
  testing::Lorad lorad(testing::Lorad::Options{dir_.Join("lorad"), /*local_workers=*/0});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  auto client = lorad.Client();
  FileUploader uploader(client.get());
  auto file = uploader.Upload(dataset_, nullptr);
  ASSERT_TRUE(file.ok()) << file.status();
  auto stub = lora::worker::v1::WorkerService::NewStub(
      grpc::CreateChannel(lorad.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata("lora-worker-id", "snoop");
  lora::worker::v1::FetchBlobRequest request;
  request.mutable_ref()->set_job_id("0123456789abcdef");
  request.mutable_ref()->set_attempt(1);
  request.set_sha256(file->entries(0).sha256());
  auto reader = stub->FetchBlob(&ctx, request);
  lora::v1::ArtifactChunk chunk;
  EXPECT_FALSE(reader->Read(&chunk)) << "not a byte of the file";
  grpc::Status status = reader->Finish();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(
      status.error_code(),
      ::testing::AnyOf(grpc::StatusCode::NOT_FOUND, grpc::StatusCode::UNAVAILABLE,
                       grpc::StatusCode::PERMISSION_DENIED, grpc::StatusCode::UNAUTHENTICATED))
      << status.error_message();
}

TEST_F(FilesTest, AnUploadCutShortByALoradCrashContinuesFromWhatItHadStored) {
  const int port = testing::FreePort();
  auto lorad = std::make_unique<testing::Lorad>(
      testing::Lorad::Options{dir_.Join("lorad"), /*local_workers=*/0, port});
  ASSERT_TRUE(lorad->Start()) << lorad->log();
  const std::string big = dir_.Join("client/big.bin");
  {
    std::ofstream out(big, std::ios::binary);
    std::string block(1 << 20, '\0');
    for (int mib = 0; mib < 48; ++mib) {
      for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>((i * 31 + mib) & 0xff);
      out.write(block.data(), static_cast<std::streamsize>(block.size()));
    }
  }
  {
    auto client = lorad->Client();
    FileUploader uploader(client.get(), /*chunk_bytes=*/64 << 10);  // many small chunks
    std::atomic<bool> killed{false};
    auto first = uploader.Upload(big, [&](const UploadProgress& p) {
      if (!killed && p.sent >= (16 << 20)) {
        killed = true;
        lorad->Kill(SIGKILL);  // mid-stream
      }
    });
    EXPECT_FALSE(first.ok());
  }
  lorad = std::make_unique<testing::Lorad>(
      testing::Lorad::Options{dir_.Join("lorad"), /*local_workers=*/0, port});
  ASSERT_TRUE(lorad->Start()) << lorad->log();
  auto client = lorad->Client();
  FileUploader uploader(client.get());
  int64_t resumed_at = -1;
  auto file = uploader.Upload(big, [&](const UploadProgress& p) {
    if (resumed_at < 0) resumed_at = p.sent;  // the first report: what lorad already had
  });
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_GT(resumed_at, 0) << "nothing of the first stream was kept";
  EXPECT_LT(resumed_at, int64_t{48} << 20);
  const std::string sha = file->entries(0).sha256();
  EXPECT_EQ(
      *Sha256File(absl::StrCat(dir_.Join("lorad"), "/blobs/sha256/", sha.substr(0, 2), "/", sha)),
      sha);
}

TEST_F(FilesTest, SubmittingASpecUploadsItsLocalPathsAndKeepsWorkerPaths) {
  testing::Lorad lorad(testing::Lorad::Options{dir_.Join("lorad"), /*local_workers=*/0});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  auto client = lorad.Client();
  FileUploader uploader(client.get());
  lora::v1::JobSpec spec = SpecReading("train.jsonl", 1);  // relative to the spec's directory
  spec.mutable_dataset()->set_validation_path("worker:/data/valid.jsonl");
  std::vector<SpecRewrite> rewrites;
  ASSERT_TRUE(UploadSpecFiles(&spec, dir_.Join("client"), &uploader, nullptr, &rewrites).ok());
  EXPECT_THAT(spec.dataset().path(), ::testing::StartsWith("files/f-"));
  EXPECT_EQ(spec.dataset().validation_path(), "/data/valid.jsonl");
  ASSERT_EQ(rewrites.size(), 2u);
  EXPECT_EQ(rewrites[0].field, "dataset.path");

  lora::v1::JobSpec missing = SpecReading("nope.jsonl", 1);
  absl::Status s = UploadSpecFiles(&missing, dir_.Join("client"), &uploader, nullptr, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("dataset.path:"));
  EXPECT_THAT(s.message(), HasSubstr("worker:"));
}

}  // namespace
}  // namespace lora
