// lora-worker's work directory: the lock, run directory removal, log tails of failed ranks and
// the clean-up of a crashed worker's leftovers.
#include "worker/agent/work_dir.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

void Write(const std::string& path, const std::string& contents) {
  ASSERT_TRUE(MakeDirectories(ParentDirectory(path)).ok());
  std::ofstream(path, std::ios::binary) << contents;
}

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(WorkDirTest, ASecondWorkerOnTheSameDirectoryIsRefusedNamingTheHolder) {
  testing::TempDir dir;
  auto first = WorkDirLock::Acquire(dir.path());
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = WorkDirLock::Acquire(dir.path());
  ASSERT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("pid " + std::to_string(::getpid())), std::string::npos)
      << second.status();
  first->reset();
  EXPECT_TRUE(WorkDirLock::Acquire(dir.path()).ok()) << "released with its holder";
}

TEST(WorkDirTest, RemovingARunDirectoryRemovesItsEmptyParentsOnly) {
  testing::TempDir dir;
  const std::string r0 = RunDirectory(dir.path(), "j1", 1, 0);
  const std::string r1 = RunDirectory(dir.path(), "j1", 1, 1);
  EXPECT_EQ(r0, dir.path() + "/jobs/j1/attempt-1/rank-0");
  Write(r0 + "/checkpoints/step-00000003/adapter.safetensors", "x");
  Write(r1 + "/engine.log", "y");
  ASSERT_TRUE(RemoveRunDirectory(dir.path(), r0).ok());
  EXPECT_FALSE(fs::exists(r0));
  EXPECT_TRUE(fs::exists(r1)) << "the other rank's directory stays";
  ASSERT_TRUE(RemoveRunDirectory(dir.path(), r1).ok());
  EXPECT_FALSE(fs::exists(dir.path() + "/jobs/j1"));
  EXPECT_TRUE(fs::exists(dir.path() + "/jobs"));
}

TEST(WorkDirTest, AFailedRanksLogKeepsItsLastBytesAndOnlyTheNewestLogsStay) {
  testing::TempDir dir;
  std::string log;
  for (int i = 0; i < 20000; ++i) log += "line " + std::to_string(i) + "\n";
  Write(dir.Join("engine.log"), log);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(KeepLogTail(dir.path(), dir.Join("engine.log"),
                            "j" + std::to_string(i) + "-attempt-1-rank-0", 1024, 3)
                    .ok());
    // Distinct modification times, newest last.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string kept = Read(dir.path() + "/logs/j4-attempt-1-rank-0.engine.log");
  EXPECT_EQ(kept, log.substr(log.size() - 1024));
  int count = 0;
  for (const auto& e : fs::directory_iterator(dir.path() + "/logs")) {
    ++count;
    EXPECT_NE(e.path().filename().string(), "j0-attempt-1-rank-0.engine.log");
    EXPECT_NE(e.path().filename().string(), "j1-attempt-1-rank-0.engine.log");
  }
  EXPECT_EQ(count, 3);
  EXPECT_TRUE(KeepLogTail(dir.path(), dir.Join("missing.log"), "x", 1024, 3).ok());
}

TEST(WorkDirTest, AtomicWriteLeftoversAreRecognizedByName) {
  EXPECT_TRUE(IsAtomicWriteLeftover("adapter.safetensors.tmp-1234-aB3xYz"));
  EXPECT_TRUE(IsAtomicWriteLeftover("adapter.staging-77-Q1w2e3"));
  EXPECT_TRUE(IsAtomicWriteLeftover("step-00000010.old-4242"));
  EXPECT_FALSE(IsAtomicWriteLeftover("adapter.safetensors"));
  EXPECT_FALSE(IsAtomicWriteLeftover("notes.tmp"));
  EXPECT_FALSE(IsAtomicWriteLeftover(".tmp-1-abcdef"));
  EXPECT_FALSE(IsAtomicWriteLeftover("x.tmp-12-abc"));
}

TEST(WorkDirTest, CrashLeftoversGoButRunningRanksAndOtherFilesStay) {
  testing::TempDir dir;
  const std::string& w = dir.path();
  const std::string orphan = RunDirectory(w, "old", 1, 0);
  const std::string running = RunDirectory(w, "live", 2, 1);
  Write(orphan + "/engine.log", "orphan's last words\n");
  Write(orphan + "/checkpoints/step-00000005/adapter.safetensors", "weights");
  Write(running + "/engine.log", "still training\n");
  Write(running + "/checkpoints/step-00000005/adapter.safetensors.tmp-99-abcdef", "in progress");
  Write(w + "/logs/j9-attempt-1-rank-0.engine.log.tmp-12-XyZ123", "half a copy");
  Write(w + "/jobs/x/attempt-1/rank-0.staging-5-abc123/file", "staged");
  Write(w + "/notes.txt", "an operator's file");
  auto gone = RemoveCrashLeftovers(w, {running}, 64 << 10, 32);
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->run_directories, 1);
  EXPECT_EQ(gone->temporary_files, 2);
  EXPECT_FALSE(fs::exists(w + "/jobs/old"));
  EXPECT_FALSE(fs::exists(w + "/logs/j9-attempt-1-rank-0.engine.log.tmp-12-XyZ123"));
  EXPECT_FALSE(fs::exists(w + "/jobs/x/attempt-1/rank-0.staging-5-abc123"));
  EXPECT_TRUE(fs::exists(running + "/checkpoints/step-00000005/adapter.safetensors.tmp-99-abcdef"))
      << "a running rank's files are not leftovers";
  EXPECT_TRUE(fs::exists(w + "/notes.txt"));
  EXPECT_EQ(Read(w + "/logs/old-attempt-1-rank-0.engine.log"), "orphan's last words\n");
}

}  // namespace
}  // namespace lora
