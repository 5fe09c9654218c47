// Data roots with real processes: a job naming a file outside them (/etc/passwd, or a link
// inside a root that leads there) fails with an error that names the field and shows nothing of
// the file, both from lora-train run --data-root and from a lora-worker --data-root that lorad
// assigns the job to; files inside the roots still train.
#include <signal.h>

#include <filesystem>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/events_file.h"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ProcessResult;

// What /etc/passwd starts with; none of it may show in any error.
std::string PasswdFirstLine() {
  std::string text = testing::ReadFile("/etc/passwd");
  return text.substr(0, text.find('\n'));
}

std::string JobToml(const std::string& dataset_path, int steps = 2) {
  return absl::StrCat(R"([job]
name = "roots"
[model]
flavor = "tiny"
[lora]
rank = 4
target_modules = ["q_proj", "v_proj"]
[training]
steps = )",
                      steps, R"(
seq_len = 32
local_batch_size = 2
[dataset]
path = ")",
                      dataset_path, R"("
format = "text"
validation_fraction = 0.1
validation_interval = 0
)");
}

class DataRootsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(PasswdFirstLine().empty());
    root_ = dir_.Join("data");
    fs::create_directories(root_);
    std::ofstream out(root_ + "/train.jsonl");
    for (int i = 0; i < 200; ++i)
      out << nlohmann::json{{"text", absl::StrCat("the cat sees ", i, " red balls.")}}.dump()
          << "\n";
    // Inside the root by name, /etc/passwd by where it leads.
    fs::create_symlink("/etc/passwd", root_ + "/passwd.jsonl");
  }

  ProcessResult Run(const std::string& dataset_path, const std::string& out) {
    const std::string job = dir_.Join(out + ".toml");
    std::ofstream(job) << JobToml(dataset_path);
    return testing::RunProcess({testing::BinaryPath("worker/lora-train"), "run", "--job", job,
                                "--out", dir_.Join(out), "--data-root", root_, "--quiet"},
                               300);
  }

  testing::TempDir dir_;
  std::string root_;
};

TEST_F(DataRootsTest, LoraTrainRunRefusesEtcPasswdNamingTheFieldAndNothingOfTheFile) {
  for (const std::string& path : {std::string("/etc/passwd"), root_ + "/passwd.jsonl",
                                  root_ + "/../../../../../../etc/passwd"}) {
    SCOPED_TRACE(path);
    ProcessResult r = Run(path, "out");
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_THAT(r.err,
                AllOf(HasSubstr("dataset.path: \""), HasSubstr("is not under the data roots"),
                      Not(HasSubstr(PasswdFirstLine())), Not(HasSubstr("root:"))));
    auto failed = testing::Events(dir_.Join("out/events.jsonl"), "failed");
    ASSERT_FALSE(failed.empty());
    EXPECT_EQ(failed.back().failed().code(), "PERMISSION_DENIED");
    EXPECT_THAT(failed.back().failed().reason(),
                AllOf(HasSubstr("dataset.path: "), Not(HasSubstr(PasswdFirstLine()))));
  }
}

TEST_F(DataRootsTest, LoraTrainRunAnswersAMissingOutsideFileAsAnExistingOne) {
  ProcessResult present = Run("/etc/passwd", "a");
  ProcessResult absent = Run("/etc/passwd-no-such-file", "b");
  EXPECT_EQ(present.exit_code, absent.exit_code);
  std::string normalized = absent.err;
  normalized.replace(normalized.find("/etc/passwd-no-such-file"),
                     std::string("/etc/passwd-no-such-file").size(), "/etc/passwd");
  EXPECT_EQ(present.err, normalized);
}

TEST_F(DataRootsTest, LoraTrainRunStillTrainsOnAFileInsideItsRoots) {
  ProcessResult r = Run(root_ + "/train.jsonl", "ok");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::Events(dir_.Join("ok/events.jsonl"), "finished").size(), 1u);
}

TEST_F(DataRootsTest, LoraTrainRunRefusesARootThatIsNotADirectory) {
  const std::string job = dir_.Join("job.toml");
  std::ofstream(job) << JobToml(root_ + "/train.jsonl");
  ProcessResult r =
      testing::RunProcess({testing::BinaryPath("worker/lora-train"), "run", "--job", job, "--out",
                           dir_.Join("out"), "--data-root", dir_.Join("nope"), "--quiet"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--data-root: data root"));
}

lora::v1::JobSpec SpecReading(const std::string& dataset_path) {
  lora::v1::JobSpec spec = testing::TinyTrainSpec(2);
  spec.mutable_dataset()->clear_name();
  spec.mutable_dataset()->set_path(dataset_path);
  spec.mutable_dataset()->set_format("text");
  spec.mutable_training()->set_seq_len(32);
  return spec;
}

bool Done(const lora::v1::Job& j) {
  return j.state() == lora::v1::SUCCEEDED || j.state() == lora::v1::FAILED ||
         j.state() == lora::v1::CANCELLED;
}

TEST_F(DataRootsTest, WorkerRefusesAnAssignmentNamingAFileOutsideItsRoots) {
  testing::Lorad lorad(testing::Lorad::Options{dir_.Join("lorad"), /*local_workers=*/0});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  const std::string work = dir_.Join("worker");
  testing::ChildProcess worker(
      {testing::BinaryPath("worker/lora-worker"), "--controller", lorad.address(), "--worker-id",
       "rooted", "--work-dir", work, "--threads-per-rank", "1", "--data-root", root_},
      dir_.Join("worker.out"), dir_.Join("worker.err"));
  auto client = lorad.Client();

  for (const std::string& path : {std::string("/etc/passwd"), root_ + "/passwd.jsonl"}) {
    SCOPED_TRACE(path);
    auto job = client->CreateJob(SpecReading(path), "");
    ASSERT_TRUE(job.ok()) << job.status();
    lora::v1::Job done = testing::WaitForJob(*client, job->name(), Done, 120);
    EXPECT_EQ(done.state(), lora::v1::FAILED) << testing::ReadFile(dir_.Join("worker.err"));
    EXPECT_EQ(done.error().code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(done.error().message(),
                AllOf(HasSubstr("dataset.path: \""), HasSubstr("is not under the data roots"),
                      Not(HasSubstr(PasswdFirstLine())), Not(HasSubstr("root:"))));
  }
  // Refused before any rank started: no engine ran, so no engine log.
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(work, ec))
    EXPECT_NE(e.path().filename(), "engine.log") << e.path();

  // The same worker trains on a file inside its roots (its lora-train gets the roots too).
  auto ok = client->CreateJob(SpecReading(root_ + "/train.jsonl"), "");
  ASSERT_TRUE(ok.ok()) << ok.status();
  lora::v1::Job done = testing::WaitForJob(*client, ok->name(), Done, 180);
  EXPECT_EQ(done.state(), lora::v1::SUCCEEDED)
      << done.error().message() << testing::ReadFile(dir_.Join("worker.err"));
  worker.Signal(SIGTERM);
  worker.Wait(30);
}

TEST_F(DataRootsTest, WorkerRefusesToStartWithARootThatDoesNotExist) {
  ProcessResult r =
      testing::RunProcess({testing::BinaryPath("worker/lora-worker"), "--controller", "127.0.0.1:1",
                           "--work-dir", dir_.Join("w"), "--data-root", dir_.Join("nope")},
                          60);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--data-root: data root"));
}

}  // namespace
}  // namespace lora
