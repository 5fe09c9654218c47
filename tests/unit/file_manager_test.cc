// Uploaded files (server/files/): a real SQLite store and real blob files in a temp directory.

#include "server/files/file_manager.h"
#include "server/store/sqlite_job_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <filesystem>

#include "common/file_util.h"
#include "common/sha256.h"
#include "tests/test_util.h"

namespace lora::server {
namespace {

using lora::v1::File;
using lora::v1::UploadStatus;
using ::testing::HasSubstr;

std::string Sha(const std::string& data) {
  Sha256 h;
  h.Update(data);
  return h.HexDigest();
}

class FileManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = SqliteJobStore::Open({dir_.path() + "/lorad.db"});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    Reopen();
  }

  void Reopen(int64_t quota = 0) {
    FileManager::Options o;
    o.store = store_.get();
    o.root = dir_.path() + "/blobs";
    o.tenant_quota_bytes = quota;
    o.in_use = [this](const std::string& name) { return in_use_.count(name) > 0; };
    auto files = FileManager::Create(o);
    ASSERT_TRUE(files.ok()) << files.status();
    files_ = *std::move(files);
  }

  absl::StatusOr<UploadStatus> Start(const std::string& tenant, const std::string& data) {
    lora::v1::StartUploadRequest r;
    r.set_sha256(Sha(data));
    r.set_size(static_cast<int64_t>(data.size()));
    return files_->StartUpload(tenant, r);
  }

  // Sends data[from, to) and closes the stream.
  absl::StatusOr<UploadStatus> Send(const std::string& tenant, const std::string& data,
                                    int64_t from, int64_t to) {
    lora::v1::UploadHeader h;
    h.set_sha256(Sha(data));
    h.set_size(static_cast<int64_t>(data.size()));
    h.set_offset(from);
    auto upload = files_->OpenUpload(tenant, h);
    if (!upload.ok()) return upload.status();
    if (absl::Status s = (*upload)->Write(data.substr(from, to - from)); !s.ok()) return s;
    return (*upload)->Close();
  }

  absl::StatusOr<File> Upload(const std::string& tenant, const std::string& name,
                              const std::string& data) {
    auto status = Start(tenant, data);
    if (!status.ok()) return status.status();
    if (!status->complete()) {
      auto sent = Send(tenant, data, status->committed_size(), data.size());
      if (!sent.ok()) return sent.status();
    }
    lora::v1::CreateFileRequest r;
    r.set_display_name(name);
    auto* e = r.add_entries();
    e->set_path(name);
    e->set_sha256(Sha(data));
    e->set_size(static_cast<int64_t>(data.size()));
    return files_->CreateFile(tenant, r);
  }

  lora::testing::TempDir dir_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<FileManager> files_;
  std::set<std::string> in_use_;
};

TEST_F(FileManagerTest, AnUploadCutShortResumesFromTheCommittedOffsetAndVerifiesEveryByte) {
  const std::string data(300000, 'x');
  auto first = Start("a", data);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->committed_size(), 0);
  auto part = Send("a", data, 0, 120000);
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_FALSE(part->complete());
  EXPECT_EQ(part->committed_size(), 120000);

  Reopen();  // a lorad restart between the two streams
  auto again = Start("a", data);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->committed_size(), 120000);
  auto wrong_offset = Send("a", data, 0, 10);
  EXPECT_EQ(wrong_offset.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong_offset.status().message(), HasSubstr("holds 120000 bytes"));
  auto rest = Send("a", data, 120000, data.size());
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_TRUE(rest->complete());
  auto blob = files_->BlobPath(Sha(data));
  ASSERT_TRUE(blob.ok());
  EXPECT_EQ(*ReadFileToString(*blob), data);
}

TEST_F(FileManagerTest, BytesThatDoNotMatchTheirSha256AreDiscardedAsDataLoss) {
  const std::string data = "the real bytes";
  ASSERT_TRUE(Start("a", data).ok());
  lora::v1::UploadHeader h;
  h.set_sha256(Sha(data));
  h.set_size(static_cast<int64_t>(data.size()));
  auto upload = files_->OpenUpload("a", h);
  ASSERT_TRUE(upload.ok());
  ASSERT_TRUE((*upload)->Write("the fake bytes").ok());
  auto closed = (*upload)->Close();
  EXPECT_EQ(closed.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(files_->BlobPath(Sha(data)).status().code(), absl::StatusCode::kNotFound);
  auto retry = Start("a", data);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->committed_size(), 0);  // starts over
  auto again = files_->OpenUpload("a", h);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Write(std::string(20, 'x')).code(), absl::StatusCode::kInvalidArgument)
      << "more bytes than declared";
}

TEST_F(FileManagerTest, TheSameBytesAreStoredOnceButEachTenantMustUploadThem) {
  const std::string data(5000, 'd');
  auto a = Upload("a", "train.jsonl", data);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->name(), "files/" + a->id());
  // Same tenant, same bytes: nothing to send, the same file.
  auto again = Start("a", data);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->complete());
  auto a2 = Upload("a", "train.jsonl", data);
  ASSERT_TRUE(a2.ok());
  EXPECT_EQ(a2->id(), a->id());
  // Another tenant is never told the bytes exist, and cannot name them without uploading.
  auto b_start = Start("b", data);
  ASSERT_TRUE(b_start.ok());
  EXPECT_FALSE(b_start->complete());
  EXPECT_EQ(b_start->committed_size(), 0);
  lora::v1::CreateFileRequest steal;
  steal.set_display_name("x");
  *steal.add_entries() = a->entries(0);
  steal.mutable_entries(0)->set_path("x");
  EXPECT_EQ(files_->CreateFile("b", steal).status().code(), absl::StatusCode::kFailedPrecondition);
  auto b = Upload("b", "train.jsonl", data);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(b->id(), a->id());
  // One copy on disk, and it outlives one tenant's delete.
  ASSERT_TRUE(files_->DeleteFile("a", a->name()).ok());
  EXPECT_TRUE(files_->BlobPath(Sha(data)).ok());
  ASSERT_TRUE(files_->DeleteFile("b", b->name()).ok());
  EXPECT_EQ(files_->BlobPath(Sha(data)).status().code(), absl::StatusCode::kNotFound);
}

// A follower replica shares the blob directory with the leader: it must refuse uploads before
// a byte lands there, and refuse CreateFile / DeleteFile, while reads still work.
TEST_F(FileManagerTest, AReplicaThatDoesNotLeadWritesNothingAndStillServesReads) {
  const std::string data(3000, 'f');
  auto file = Upload("a", "train.jsonl", data);
  ASSERT_TRUE(file.ok()) << file.status();
  files_->SetWritable(
      [] { return absl::UnavailableError("a follower; the leader is at b:50051"); });
  const std::string other(2000, 'g');
  EXPECT_EQ(Start("a", other).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Send("a", other, 0, 1000).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(files_->DeleteFile("a", file->name()).code(), absl::StatusCode::kUnavailable);
  lora::v1::CreateFileRequest r;
  r.set_display_name("again");
  *r.add_entries() = file->entries(0);
  EXPECT_EQ(files_->CreateFile("a", r).status().code(), absl::StatusCode::kUnavailable);
  // Nothing of the refused upload is on disk: only the first blob's bytes are.
  int64_t bytes = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.path() + "/blobs")) {
    if (e.is_regular_file()) bytes += static_cast<int64_t>(e.file_size());
  }
  EXPECT_EQ(bytes, static_cast<int64_t>(data.size()));
  EXPECT_TRUE(files_->GetFile("a", file->name()).ok());
  EXPECT_TRUE(files_->BlobPath(Sha(data)).ok());
}

TEST_F(FileManagerTest, AnotherTenantsFileIsNotFoundExactlyLikeAMissingOne) {
  auto a = Upload("a", "d.jsonl", "{}\n");
  ASSERT_TRUE(a.ok());
  auto other = files_->GetFile(std::string("b"), a->name());
  auto missing = files_->GetFile(std::string("b"), "files/f-000000000000000000000000");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(files_->DeleteFile(std::string("b"), a->name()).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(files_->GetFile(std::nullopt, a->name()).ok());  // admin
  auto listed = files_->ListFiles(std::string("b"), {});
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->files_size(), 0);
}

TEST_F(FileManagerTest, ADirectoryIsOneFileWithSortedValidatedEntries) {
  std::vector<std::pair<std::string, std::string>> parts = {
      {"tokenizer.json", "{}"}, {"config.json", "{\"a\":1}"}, {"weights/model.safetensors", "w"}};
  lora::v1::CreateFileRequest r;
  r.set_display_name("tiny-llama");
  r.set_directory(true);
  for (const auto& [path, data] : parts) {
    auto s = Start("a", data);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(Send("a", data, 0, data.size()).ok());
    auto* e = r.add_entries();
    e->set_path(path);
    e->set_sha256(Sha(data));
    e->set_size(static_cast<int64_t>(data.size()));
  }
  auto f = files_->CreateFile("a", r);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->entries_size(), 3);
  EXPECT_EQ(f->entries(0).path(), "config.json");
  EXPECT_EQ(f->size_bytes(), 2 + 7 + 1);

  for (const char* bad : {"../x", "/abs", "a//b", "a/./b", ""}) {
    auto copy = r;
    copy.mutable_entries(0)->set_path(bad);
    auto s = files_->CreateFile("a", copy);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.status().message(), HasSubstr("entries[0].path")) << bad;
  }
  auto clash = r;
  clash.mutable_entries(1)->set_path("weights");  // a file and a directory at once
  EXPECT_THAT(files_->CreateFile("a", clash).status().message(),
              HasSubstr("both a file and a directory"));
}

TEST_F(FileManagerTest, TheStorageQuotaCountsStoredAndReservedBytesAndNamesTheFigures) {
  Reopen(/*quota=*/10000);
  ASSERT_TRUE(Upload("a", "one", std::string(6000, '1')).ok());
  auto over = Start("a", std::string(5000, '2'));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(), HasSubstr("6000 of 10000 bytes used"));
  // Another tenant has its own quota; a started upload reserves its whole size.
  ASSERT_TRUE(Start("b", std::string(8000, '3')).ok());
  EXPECT_EQ(*files_->TenantUsage("b"), 8000);
  EXPECT_EQ(Start("b", std::string(3000, '4')).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(FileManagerTest, AFileAJobStillNeedsCannotBeDeleted) {
  auto f = Upload("a", "d.jsonl", "{}\n");
  ASSERT_TRUE(f.ok());
  in_use_.insert(f->name());
  auto s = files_->DeleteFile("a", f->name());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("job that has not ended"));
  in_use_.clear();
  EXPECT_TRUE(files_->DeleteFile("a", f->name()).ok());
  EXPECT_EQ(files_->GetFile("a", f->name()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FileManagerTest, ResolvingASpecNamesTheFieldOfAFileThatIsNotTheTenants) {
  auto f = Upload("a", "d.jsonl", "{}\n");
  ASSERT_TRUE(f.ok());
  lora::v1::JobSpec spec;
  spec.mutable_dataset()->set_path(f->name());
  spec.mutable_dataset()->set_validation_path(f->name());
  auto resolved = files_->ResolveSpec("a", spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->size(), 1u);  // named twice, resolved once
  auto other = files_->ResolveSpec("b", spec);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(other.status().message(), HasSubstr("dataset.path: files/"));
}

TEST_F(FileManagerTest, StalledUploadsAndUnnamedBlobsAreReaped) {
  const std::string stalled(1000, 's'), unnamed(10, 'u');
  ASSERT_TRUE(Start("a", stalled).ok());
  ASSERT_TRUE(Send("a", stalled, 0, 100).ok());
  ASSERT_TRUE(Start("a", unnamed).ok());
  ASSERT_TRUE(Send("a", unnamed, 0, unnamed.size()).ok());  // uploaded, never named
  auto kept = Upload("a", "kept", "named bytes");
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(files_->Reap(absl::Now()), 0);  // nothing is an hour old yet
  EXPECT_EQ(files_->Reap(absl::Now() + absl::Hours(2)), 2);
  EXPECT_EQ(*files_->TenantUsage("a"), 11);
  EXPECT_EQ(files_->BlobPath(Sha(unnamed)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(files_->BlobPath(Sha("named bytes")).ok());
  EXPECT_EQ(Start("a", stalled)->committed_size(), 0);
}

TEST_F(FileManagerTest, OneStreamAtATimeWritesABlob) {
  const std::string data(100, 'c');
  ASSERT_TRUE(Start("a", data).ok());
  lora::v1::UploadHeader h;
  h.set_sha256(Sha(data));
  h.set_size(100);
  auto first = files_->OpenUpload("a", h);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(files_->OpenUpload("a", h).status().code(), absl::StatusCode::kAborted);
  first->reset();  // the stream ended without Close (a dropped connection)
  EXPECT_TRUE(files_->OpenUpload("a", h).ok());
}

}  // namespace
}  // namespace lora::server
