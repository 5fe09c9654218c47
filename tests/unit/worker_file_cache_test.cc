// The worker's cache of uploaded files (worker/agent/file_cache.h), with real files and threads.
#include "worker/agent/file_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/file_util.h"
#include "common/sha256.h"
#include "tests/test_util.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

std::string Sha(const std::string& data) {
  Sha256 h;
  h.Update(data);
  return h.HexDigest();
}

lora::v1::File SingleFile(const std::string& id, const std::string& name, const std::string& data) {
  lora::v1::File f;
  f.set_id(id);
  f.set_name("files/" + id);
  auto* e = f.add_entries();
  e->set_path(name);
  e->set_size(static_cast<int64_t>(data.size()));
  e->set_sha256(Sha(data));
  return f;
}

// Serves blobs from a map, counting fetches; optionally slow so callers overlap.
struct FakeLorad {
  std::map<std::string, std::string> blobs;  // sha -> bytes
  std::atomic<int> fetches{0};
  int delay_ms = 0;
  FileCache::Fetch fetch() {
    return [this](const std::string& sha, const std::string& path) {
      ++fetches;
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      return WriteFileAtomically(path, blobs.at(sha));
    };
  }
};

class FileCacheTest : public ::testing::Test {
 protected:
  testing::TempDir dir_;
  FakeLorad lorad_;
};

TEST_F(FileCacheTest, RanksNeedingTheSameFileShareOneFetchAndOneCopy) {
  const std::string data = "{\"text\": \"hello\"}\n";
  lorad_.blobs[Sha(data)] = data;
  lorad_.delay_ms = 200;
  FileCache cache({dir_.Join("cache"), 1 << 20});
  ASSERT_TRUE(cache.Open().ok());
  const lora::v1::File file = SingleFile("f-1", "train.jsonl", data);
  std::vector<std::thread> ranks;
  std::vector<std::string> paths(4);
  for (int r = 0; r < 4; ++r) {
    ranks.emplace_back([&, r] {
      auto local = cache.Materialize(file, dir_.Join("rank" + std::to_string(r)), lorad_.fetch(),
                                     "rank" + std::to_string(r));
      ASSERT_TRUE(local.ok()) << local.status();
      paths[static_cast<size_t>(r)] = *local;
    });
  }
  for (auto& t : ranks) t.join();
  EXPECT_EQ(lorad_.fetches.load(), 1);
  EXPECT_EQ(cache.stats().misses, 1);
  EXPECT_EQ(cache.stats().hits, 3);
  struct stat a, b;
  ASSERT_EQ(::stat(paths[0].c_str(), &a), 0);
  ASSERT_EQ(::stat(paths[3].c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino) << "hard links to one cached copy";
  EXPECT_EQ(fs::path(paths[0]).filename(), "train.jsonl");  // the extension readers look at
  EXPECT_EQ(*ReadFileToString(paths[2]), data);
  EXPECT_EQ(a.st_mode & 0222, 0u) << "read-only";
}

TEST_F(FileCacheTest, LeastRecentlyUsedUnpinnedBlobsGoFirstAndPinnedOnesStay) {
  FileCache cache({dir_.Join("cache"), 250});
  ASSERT_TRUE(cache.Open().ok());
  std::vector<lora::v1::File> files;
  for (int i = 0; i < 3; ++i) {
    const std::string data(100, static_cast<char>('a' + i));
    lorad_.blobs[Sha(data)] = data;
    files.push_back(SingleFile("f-" + std::to_string(i), "d.bin", data));
  }
  ASSERT_TRUE(cache.Materialize(files[0], dir_.Join("r0"), lorad_.fetch(), "r0").ok());
  ASSERT_TRUE(cache.Materialize(files[1], dir_.Join("r1"), lorad_.fetch(), "r1").ok());
  cache.Unpin("r1");  // r1 ended; r0 still reads files[0]
  ASSERT_TRUE(cache.Materialize(files[2], dir_.Join("r2"), lorad_.fetch(), "r2").ok());
  EXPECT_EQ(cache.stats().evicted, 1);
  EXPECT_EQ(cache.stats().bytes, 200);
  EXPECT_TRUE(fs::exists(dir_.Join("cache/blobs/") + files[0].entries(0).sha256()));
  EXPECT_FALSE(fs::exists(dir_.Join("cache/blobs/") + files[1].entries(0).sha256()));
  // Pinned beyond the cap: nothing can go, and the rank still gets its file.
  ASSERT_TRUE(cache.Materialize(files[1], dir_.Join("r3"), lorad_.fetch(), "r3").ok());
  EXPECT_EQ(cache.stats().bytes, 300);
  cache.Unpin("r0");
  cache.Unpin("r2");
  cache.Unpin("r3");
  EXPECT_LE(cache.stats().bytes, 250);
}

TEST_F(FileCacheTest, ARestartedWorkerKeepsItsCacheAndDropsHalfWrittenFetches) {
  const std::string data = "weights";
  lorad_.blobs[Sha(data)] = data;
  {
    FileCache cache({dir_.Join("cache"), 1 << 20});
    ASSERT_TRUE(cache.Open().ok());
    ASSERT_TRUE(
        cache.Materialize(SingleFile("f-1", "w", data), dir_.Join("r0"), lorad_.fetch(), "r0")
            .ok());
  }
  WriteFileAtomically(dir_.Join("cache/blobs/.tmp-123"), "half").IgnoreError();
  std::ofstream(dir_.Join("cache/blobs/not-a-sha")) << "junk";
  FileCache again({dir_.Join("cache"), 1 << 20});
  ASSERT_TRUE(again.Open().ok());
  EXPECT_EQ(again.stats().bytes, static_cast<int64_t>(data.size()));
  EXPECT_FALSE(fs::exists(dir_.Join("cache/blobs/not-a-sha")));
  ASSERT_TRUE(
      again.Materialize(SingleFile("f-1", "w", data), dir_.Join("r1"), lorad_.fetch(), "r1").ok());
  EXPECT_EQ(lorad_.fetches.load(), 1) << "served from the cache after the restart";
}

TEST_F(FileCacheTest, AFailedFetchIsSharedByItsWaitersAndNothingIsCached) {
  FileCache cache({dir_.Join("cache"), 1 << 20});
  ASSERT_TRUE(cache.Open().ok());
  const lora::v1::File file = SingleFile("f-1", "d", "bytes");
  auto failing = [](const std::string&, const std::string&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return absl::DataLossError("sha256 mismatch after fetch");
  };
  std::vector<absl::Status> results(3);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 3; ++r) {
    ranks.emplace_back([&, r] {
      results[static_cast<size_t>(r)] =
          cache.Materialize(file, dir_.Join("r" + std::to_string(r)), failing, std::to_string(r))
              .status();
    });
  }
  for (auto& t : ranks) t.join();
  for (const absl::Status& s : results) EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(cache.stats().bytes, 0);
}

TEST_F(FileCacheTest, EntriesThatWouldLeaveTheRankDirectoryAreRefused) {
  FileCache cache({dir_.Join("cache"), 1 << 20});
  ASSERT_TRUE(cache.Open().ok());
  lora::v1::File file = SingleFile("f-1", "../../escape", "x");
  file.set_directory(true);
  EXPECT_FALSE(cache.Materialize(file, dir_.Join("r0"), lorad_.fetch(), "r0").ok());
  lora::v1::File bad_id = SingleFile("../x", "d", "x");
  EXPECT_FALSE(cache.Materialize(bad_id, dir_.Join("r0"), lorad_.fetch(), "r0").ok());
  EXPECT_EQ(lorad_.fetches.load(), 0);
}

}  // namespace
}  // namespace lora
