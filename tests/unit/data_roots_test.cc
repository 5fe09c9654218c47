#include "common/data_roots.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace lora {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

void Touch(const std::string& path, const std::string& text = "secret-content-42\n") {
  std::ofstream(path) << text;
}

class DataRootsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.Join("root");
    outside_ = tmp_.Join("outside");
    fs::create_directories(root_);
    fs::create_directories(outside_);
    Touch(root_ + "/train.jsonl");
    Touch(outside_ + "/secret.txt");
    auto roots = DataRoots::Create({root_});
    ASSERT_TRUE(roots.ok()) << roots.status();
    roots_ = *roots;
  }

  testing::TempDir tmp_;
  std::string root_, outside_;
  DataRoots roots_;
};

// Nothing about the file may show: neither its content nor whether the lookup failed.
void ExpectRefusedQuietly(const absl::Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(
      std::string(s.message()),
      AllOf(HasSubstr(field + ": "), HasSubstr("not under the data roots"),
            Not(HasSubstr("secret-content")), Not(HasSubstr("root:")), Not(HasSubstr("No such")),
            Not(HasSubstr("no such")), Not(HasSubstr("does not exist"))));
}

TEST_F(DataRootsTest, CreateRefusesAMissingRootOrAFile) {
  auto missing = DataRoots::Create({tmp_.Join("nope")});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("not an existing directory"));
  auto file = DataRoots::Create({root_ + "/train.jsonl"});
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DataRootsTest, NoRootsRestrictNothing) {
  DataRoots open;
  EXPECT_FALSE(open.restricted());
  EXPECT_TRUE(open.CheckReadable("dataset.path", "/etc/shadow").ok());
}

TEST_F(DataRootsTest, AcceptsFilesAndDirectoriesUnderARoot) {
  EXPECT_TRUE(roots_.CheckReadable("dataset.path", root_ + "/train.jsonl").ok());
  EXPECT_TRUE(roots_.CheckReadable("model.path", root_).ok());
  fs::create_directories(root_ + "/model/sub");
  Touch(root_ + "/model/config.json");
  // Links that stay inside are fine, wherever they point inside.
  fs::create_symlink(root_ + "/train.jsonl", root_ + "/model/sub/data.jsonl");
  EXPECT_TRUE(roots_.CheckReadable("model.path", root_ + "/model").ok());
  EXPECT_TRUE(roots_.CheckReadable("dataset.path", root_ + "/model/sub/data.jsonl").ok());
  EXPECT_TRUE(roots_.CheckReadable("dataset.path", root_ + "/model/../train.jsonl").ok());
}

TEST_F(DataRootsTest, RefusesEtcShadow) {
  ExpectRefusedQuietly(roots_.CheckReadable("dataset.path", "/etc/shadow"), "dataset.path");
}

TEST_F(DataRootsTest, RefusesProcSelfEnviron) {
  ExpectRefusedQuietly(roots_.CheckReadable("model.tokenizer", "/proc/self/environ"),
                       "model.tokenizer");
}

TEST_F(DataRootsTest, RefusesALinkInsideARootThatPointsOutside) {
  fs::create_symlink(outside_ + "/secret.txt", root_ + "/innocent.jsonl");
  ExpectRefusedQuietly(roots_.CheckReadable("dataset.path", root_ + "/innocent.jsonl"),
                       "dataset.path");
  fs::create_symlink(outside_, root_ + "/dirlink");
  ExpectRefusedQuietly(
      roots_.CheckReadable("dataset.validation_path", root_ + "/dirlink/secret.txt"),
      "dataset.validation_path");
}

TEST_F(DataRootsTest, RefusesDotDotOutOfARoot) {
  ExpectRefusedQuietly(roots_.CheckReadable("lora.adapter", root_ + "/../outside/secret.txt"),
                       "lora.adapter");
  ExpectRefusedQuietly(roots_.CheckReadable("lora.adapter", root_ + "/no-dir/../../outside"),
                       "lora.adapter");
}

TEST_F(DataRootsTest, AnOutsidePathGetsTheSameAnswerWhetherOrNotItExists) {
  const std::string target = outside_ + "/appears-later.txt";
  fs::create_symlink(target, root_ + "/dangling.jsonl");
  const absl::Status absent = roots_.CheckReadable("dataset.path", target);
  const absl::Status absent_via_link =
      roots_.CheckReadable("dataset.path", root_ + "/dangling.jsonl");
  Touch(target);
  const absl::Status present = roots_.CheckReadable("dataset.path", target);
  const absl::Status present_via_link =
      roots_.CheckReadable("dataset.path", root_ + "/dangling.jsonl");
  ExpectRefusedQuietly(absent, "dataset.path");
  EXPECT_EQ(absent, present);
  EXPECT_EQ(absent_via_link, present_via_link);
  // And a path in a directory that does not exist at all, as one that does.
  EXPECT_EQ(roots_.CheckReadable("dataset.path", "/no-such-dir-xyz/f").code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(DataRootsTest, DotDotThroughAnOutsideDirectoryCannotProbeIt) {
  // Back into the root through a directory outside it: answered alike whether or not the
  // directory exists (realpath would accept one and fail the other).
  const std::string path = outside_ + "/probe/../../root/train.jsonl";
  const absl::Status absent = roots_.CheckReadable("dataset.path", path);
  fs::create_directories(outside_ + "/probe");
  const absl::Status present = roots_.CheckReadable("dataset.path", path);
  ExpectRefusedQuietly(absent, "dataset.path");
  EXPECT_EQ(absent, present);
}

TEST_F(DataRootsTest, AMissingFileInsideARootIsNotFoundNamingTheField) {
  absl::Status s = roots_.CheckReadable("dataset.path", root_ + "/missing.jsonl");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("dataset.path: "));
  // A file is not a directory: nothing lies below it.
  EXPECT_EQ(roots_.CheckReadable("dataset.path", root_ + "/train.jsonl/x").code(),
            absl::StatusCode::kNotFound);
}

TEST_F(DataRootsTest, RefusesADirectoryHoldingALinkThatLeadsOutside) {
  // The engine opens model.safetensors, config.json, ... inside model.path by name.
  fs::create_directories(root_ + "/model");
  Touch(root_ + "/model/config.json");
  fs::create_symlink("/etc/passwd", root_ + "/model/model.safetensors");
  absl::Status s = roots_.CheckReadable("model.path", root_ + "/model");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(
      std::string(s.message()),
      AllOf(HasSubstr("model.path: "), HasSubstr("model.safetensors"), Not(HasSubstr("root:"))));
  // Also deeper, and through a linked directory that is itself inside.
  fs::remove(root_ + "/model/model.safetensors");
  EXPECT_TRUE(roots_.CheckReadable("model.path", root_ + "/model").ok());
  fs::create_directories(root_ + "/elsewhere/deep");
  fs::create_symlink(outside_ + "/secret.txt", root_ + "/elsewhere/deep/tokenizer.json");
  fs::create_symlink(root_ + "/elsewhere", root_ + "/model/tok");
  EXPECT_EQ(roots_.CheckReadable("model.path", root_ + "/model").code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(DataRootsTest, ALinkLoopIsRefusedLikeAnOutsidePath) {
  fs::create_symlink(root_ + "/b", root_ + "/a");
  fs::create_symlink(root_ + "/a", root_ + "/b");
  ExpectRefusedQuietly(roots_.CheckReadable("dataset.path", root_ + "/a"), "dataset.path");
  // A cycle of directory links below a directory ends too.
  fs::create_directories(root_ + "/cyc");
  fs::create_symlink(root_ + "/cyc", root_ + "/cyc/self");
  EXPECT_TRUE(roots_.CheckReadable("model.path", root_ + "/cyc").ok());
}

TEST_F(DataRootsTest, ARootGivenThroughALinkIsKeptResolved) {
  fs::create_symlink(root_, tmp_.Join("root-link"));
  auto roots = DataRoots::Create({tmp_.Join("root-link") + "/"});
  ASSERT_TRUE(roots.ok()) << roots.status();
  EXPECT_EQ(roots->roots(), std::vector<std::string>{fs::canonical(root_).string()});
  EXPECT_TRUE(roots->CheckReadable("dataset.path", root_ + "/train.jsonl").ok());
  EXPECT_TRUE(roots->CheckReadable("dataset.path", tmp_.Join("root-link/train.jsonl")).ok());
  // A link outside the roots is not followed, even into them: the lookup never leaves them.
  ExpectRefusedQuietly(roots_.CheckReadable("dataset.path", tmp_.Join("root-link/train.jsonl")),
                       "dataset.path");
}

TEST_F(DataRootsTest, ASiblingWithTheRootAsPrefixIsOutside) {
  fs::create_directories(root_ + "2");
  Touch(root_ + "2/x.jsonl");
  ExpectRefusedQuietly(roots_.CheckReadable("dataset.path", root_ + "2/x.jsonl"), "dataset.path");
}

TEST_F(DataRootsTest, RelativePathsResolveFromTheWorkingDirectory) {
  const fs::path before = fs::current_path();
  fs::current_path(root_);
  EXPECT_TRUE(roots_.CheckReadable("dataset.path", "train.jsonl").ok());
  ExpectRefusedQuietly(roots_.CheckReadable("dataset.path", "../outside/secret.txt"),
                       "dataset.path");
  fs::current_path(before);
}

TEST_F(DataRootsTest, CheckSpecReportsEveryPathField) {
  lora::v1::JobSpec spec;
  spec.mutable_model()->set_path(root_);
  spec.mutable_model()->set_tokenizer("/proc/self/environ");
  spec.mutable_dataset()->set_path("/etc/shadow");
  spec.mutable_dataset()->set_validation_path(root_ + "/train.jsonl");
  spec.mutable_lora()->set_adapter(root_ + "/../outside");
  absl::Status s = roots_.CheckSpec(spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("model.tokenizer: "), HasSubstr("dataset.path: "),
                    HasSubstr("lora.adapter: "), Not(HasSubstr("model.path: ")),
                    Not(HasSubstr("validation_path"))));
  spec.mutable_model()->set_tokenizer("byte");  // not a path
  spec.mutable_dataset()->set_path(root_ + "/train.jsonl");
  spec.mutable_lora()->clear_adapter();
  EXPECT_TRUE(roots_.CheckSpec(spec).ok()) << roots_.CheckSpec(spec);
}

// --- lorad's check: what was declared, no file system.

lora::v1::JobSpec SpecWith(const std::string& dataset, const std::string& model = "") {
  lora::v1::JobSpec spec;
  spec.mutable_dataset()->set_path(dataset);
  spec.mutable_model()->set_path(model);
  return spec;
}

TEST(CheckSpecPathsTest, NoDeclaredRootsAllowEverything) {
  EXPECT_TRUE(CheckSpecPaths(SpecWith("/etc/shadow", "../x"), {}).ok());
}

TEST(CheckSpecPathsTest, AcceptsPathsUnderADeclaredRoot) {
  EXPECT_TRUE(
      CheckSpecPaths(SpecWith("/data/sets/a.jsonl", "/models/llama/"), {"/data", "/models/"}).ok());
  EXPECT_TRUE(CheckSpecPaths(SpecWith("/data"), {"/data"}).ok());
  EXPECT_TRUE(CheckSpecPaths(SpecWith("/data/./x//y.jsonl"), {"/data"}).ok());
}

TEST(CheckSpecPathsTest, RefusesEtcShadowAndProcNamingTheField) {
  lora::v1::JobSpec spec = SpecWith("/etc/shadow");
  spec.mutable_model()->set_tokenizer("/proc/self/environ");
  absl::Status s = CheckSpecPaths(spec, {"/data"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("dataset.path: is not under a data root (/data)"),
                    HasSubstr("model.tokenizer: is not under a data root (/data)")));
}

TEST(CheckSpecPathsTest, RefusesDotDotEvenWhenItStaysInside) {
  absl::Status s = CheckSpecPaths(SpecWith("/data/../etc/passwd"), {"/data"});
  EXPECT_THAT(std::string(s.message()), HasSubstr("dataset.path: must not contain a \"..\""));
  EXPECT_FALSE(CheckSpecPaths(SpecWith("/data/x/../y.jsonl"), {"/data"}).ok());
  EXPECT_FALSE(CheckSpecPaths(SpecWith("/data/.."), {"/data"}).ok());
  // ".." inside a name is just a name.
  EXPECT_TRUE(CheckSpecPaths(SpecWith("/data/a..b.jsonl"), {"/data"}).ok());
}

TEST(CheckSpecPathsTest, RefusesRelativePathsAndPrefixSiblings) {
  EXPECT_THAT(std::string(CheckSpecPaths(SpecWith("data/x.jsonl"), {"/data"}).message()),
              HasSubstr("dataset.path: must be an absolute path"));
  EXPECT_FALSE(CheckSpecPaths(SpecWith("/data2/x.jsonl"), {"/data"}).ok());
}

TEST(CheckSpecPathsTest, ReportsEveryViolationWithItsKeyPath) {
  lora::v1::JobSpec spec = SpecWith("/etc/passwd", "/root/model");
  spec.mutable_dataset()->set_validation_path("/data/../v.jsonl");
  spec.mutable_lora()->set_adapter("adapter");
  spec.mutable_model()->set_tokenizer("byte");
  std::vector<FieldViolation> v = SpecPathViolations(spec, {"/data"});
  std::vector<std::string> fields;
  for (const auto& f : v) fields.push_back(f.field);
  EXPECT_EQ(fields, (std::vector<std::string>{"model.path", "lora.adapter", "dataset.path",
                                              "dataset.validation_path"}));
}

// --- where a file is opened anyway (no roots, or a file inside them): errors say where, never
// what the file holds.

TEST(FileErrorsTest, TheSafetensorsReaderNeverQuotesTheFile) {
  testing::TempDir tmp;
  // A text file read as safetensors: its first 8 bytes are the "header length".
  const std::string text = tmp.Join("passwd");
  Touch(text, "root:x:0:0:root:/root:/bin/bash\n");
  uint64_t first8 = 0;
  for (int i = 7; i >= 0; --i) first8 = (first8 << 8) | static_cast<uint8_t>("root:x:0"[i]);
  auto opened = SafetensorsFile::Open(text);
  ASSERT_FALSE(opened.ok());
  EXPECT_THAT(std::string(opened.status().message()),
              AllOf(HasSubstr("header length"), Not(HasSubstr(absl::StrCat(first8)))));
  // A plausible length over text that is no JSON.
  const std::string bad_json = tmp.Join("bad.safetensors");
  std::string bytes(8, '\0');
  const std::string header = "{secret-content-42 more}";
  bytes[0] = static_cast<char>(header.size());
  Touch(bad_json, bytes + header);
  opened = SafetensorsFile::Open(bad_json);
  ASSERT_FALSE(opened.ok());
  EXPECT_THAT(std::string(opened.status().message()),
              AllOf(HasSubstr("not valid UTF-8 JSON"), Not(HasSubstr("secret"))));
}

}  // namespace
}  // namespace lora
