#include "common/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace lora {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// 2025-01-02T03:04:05.678901Z
constexpr int64_t kWhen = 1735787045678901;

LogOptions Options(LogFormat format, std::string component = "lorad") {
  LogOptions o;
  o.component = std::move(component);
  o.format = format;
  return o;
}

std::vector<LogField> RankFields() {
  return {{"job", std::string("j1")},
          {"attempt", int64_t{2}},
          {"rank", int64_t{1}},
          {"worker", std::string("w-7")}};
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Lines written by LogLine to a scratch file (restores stderr logging afterwards).
class LogLineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.Join("log.txt");
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    ASSERT_GE(fd_, 0);
  }
  void TearDown() override {
    InitLogging(LogOptions());
    ::close(fd_);
  }
  void Init(LogFormat format, std::vector<LogField> fields = {}) {
    LogOptions o = Options(format, "lora-worker");
    o.fields = std::move(fields);
    o.fd = fd_;
    InitLogging(o);
  }
  std::vector<std::string> Lines() {
    return absl::StrSplit(ReadAll(path_), '\n', absl::SkipEmpty());
  }

  testing::TempDir dir_;
  std::string path_;
  int fd_ = -1;
};

TEST(LogFormatTest, ParsesTextAndJsonOnly) {
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  for (const char* bad : {"", "JSON", "xml", "text "}) {
    auto f = ParseLogFormat(bad);
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(f.status().message(), HasSubstr("expected text or json"));
  }
}

// Text is what lorad and lora-worker always printed: "component: message"; errors say so.
TEST(LogFormatTest, TextIsTheComponentAndTheMessage) {
  const LogOptions text = Options(LogFormat::kText);
  EXPECT_EQ(FormatLogLine(text, LogLevel::kInfo, kWhen, "serving on 127.0.0.1:50051", {}),
            "lorad: serving on 127.0.0.1:50051\n");
  EXPECT_EQ(FormatLogLine(text, LogLevel::kWarning, kWhen, "worker w1 lost", RankFields()),
            "lorad: worker w1 lost\n")
      << "fields are for machines: the message says what a reader needs";
  EXPECT_EQ(FormatLogLine(text, LogLevel::kError, kWhen, "--listen: cannot listen", {}),
            "lorad: error: --listen: cannot listen\n");
  EXPECT_EQ(FormatLogLine(text, LogLevel::kInfo, kWhen, "two\nlines\r\n", {}),
            "lorad: two\\nlines\\n\n")
      << "one record, one line";
}

TEST(LogFormatTest, JsonHasTheRecordThenTheIds) {
  LogOptions json = Options(LogFormat::kJson, "lora-worker");
  json.fields = {{"worker", std::string("default-worker")}};
  const std::string line = FormatLogLine(json, LogLevel::kWarning, kWhen,
                                         "jobs/j1 attempt 2 rank 1: upload failed", RankFields());
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  const auto j = nlohmann::ordered_json::parse(line);
  EXPECT_EQ(j["ts"], "2025-01-02T03:04:05.678Z");
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["component"], "lora-worker");
  EXPECT_EQ(j["msg"], "jobs/j1 attempt 2 rank 1: upload failed");
  EXPECT_EQ(j["job"], "j1");
  EXPECT_EQ(j["attempt"], 2);
  EXPECT_EQ(j["rank"], 1);
  EXPECT_EQ(j["worker"], "w-7") << "the line's own field wins over the process default";
  std::vector<std::string> keys;
  for (const auto& [key, value] : j.items()) keys.push_back(key);
  EXPECT_THAT(keys, ::testing::ElementsAre("ts", "level", "component", "msg", "worker", "job",
                                           "attempt", "rank"));
  EXPECT_EQ(nlohmann::json::parse(FormatLogLine(json, LogLevel::kError, 0, "x", {}))["ts"],
            "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(nlohmann::json::parse(FormatLogLine(json, LogLevel::kInfo, -1, "x", {}))["ts"],
            "1969-12-31T23:59:59.999Z");
}

TEST(LogFormatTest, JsonEscapesEverythingAndReplacesInvalidUtf8) {
  const LogOptions json = Options(LogFormat::kJson);
  const std::string nasty =
      "quote \" backslash \\ newline \n tab \t bell \x07 caf\xc3\xa9 bad \xff";
  const std::vector<LogField> fields = {{"path", std::string("/data/\"x\"\n\xfe")},
                                        {"ratio", 0.25},
                                        {"ok", true},
                                        {"msg", std::string("a field cannot replace msg")},
                                        {"level", std::string("debug")}};
  const std::string line = FormatLogLine(json, LogLevel::kInfo, kWhen, nasty, fields);
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
  EXPECT_THAT(line, HasSubstr("\\u0007"));
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["msg"],
            "quote \" backslash \\ newline \n tab \t bell \x07 caf\xc3\xa9 bad \xef\xbf\xbd");
  EXPECT_EQ(j["path"], "/data/\"x\"\n\xef\xbf\xbd");
  EXPECT_EQ(j["ratio"], 0.25);
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["level"], "info");
}

TEST_F(LogLineTest, WritesOneLinePerStatementWithTheIds) {
  Init(LogFormat::kJson, {{"worker", std::string("w-1")}});
  LogInfo("assigned jobs/j9 attempt 3 rank 2/4").Job("jobs/j9").Attempt(3).Rank(2);
  LogError("bad").Job("j9").Field("exit_code", 3).Field("seconds", 1.5);
  LogWarning("no ids");
  const std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 3u);
  const auto first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["job"], "j9") << "\"jobs/\" is dropped: the field is the bare id";
  EXPECT_EQ(first["attempt"], 3);
  EXPECT_EQ(first["rank"], 2);
  EXPECT_EQ(first["worker"], "w-1");
  EXPECT_EQ(first["level"], "info");
  const auto second = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(second["level"], "error");
  EXPECT_EQ(second["exit_code"], 3);
  EXPECT_EQ(second["seconds"], 1.5);
  EXPECT_FALSE(nlohmann::json::parse(lines[2]).contains("job"));

  Init(LogFormat::kText);
  LogInfo("registered with 127.0.0.1:1 as w-1").Worker("w-1");
  EXPECT_EQ(Lines().back(), "lora-worker: registered with 127.0.0.1:1 as w-1");
}

// Many threads at once: every line whole, none lost.
TEST_F(LogLineTest, LinesOfConcurrentThreadsNeverInterleave) {
  Init(LogFormat::kJson);
  constexpr int kThreads = 8, kLines = 300;
  const std::string padding(300, 'x');  // long lines make torn writes likelier
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kLines; ++i) LogInfo(padding).Rank(t).Field("i", i);
    });
  }
  for (auto& t : threads) t.join();
  const std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kLines));
  std::vector<int> per_thread(kThreads, 0);
  for (const std::string& line : lines) {
    const auto j = nlohmann::json::parse(line);  // throws (fails the test) on a torn line
    ++per_thread[j["rank"].get<int>()];
  }
  for (int n : per_thread) EXPECT_EQ(n, kLines);
}

}  // namespace
}  // namespace lora
