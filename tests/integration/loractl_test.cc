// loractl as users run it, against a real lorad with a local worker: outputs, exit codes,
// local validation, downloads, and the live terminal view (in a real pseudo-terminal).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pty.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/subprocess.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using ::testing::HasSubstr;
using testing::ProcessResult;

std::string TinyTrainToml(int steps, int checkpoint_interval = 5) {
  return "[job]\nname = \"cli\"\n[model]\nflavor = \"tiny\"\n[lora]\ntarget_modules = "
         "[\"q_proj\", \"lm_head\"]\n"
         "[training]\nsteps = " +
         std::to_string(steps) +
         "\nseq_len = 64\nlocal_batch_size = 4\n"
         "[dataset]\nname = \"synthetic-arith\"\nnum_examples = 500\nvalidation_interval = 5\n"
         "[checkpoint]\ninterval = " +
         std::to_string(checkpoint_interval) + "\n";
}

// loractl with `args`, at most `timeout_s` seconds.
ProcessResult RunLoractl(std::vector<std::string> args, double timeout_s = 60,
                         std::vector<std::string> env = {}) {
  args.insert(args.begin(), testing::BinaryPath("client/loractl"));
  return testing::RunProcess(args, timeout_s, env);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class LoractlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    lorad_ = new testing::Lorad({dir_->Join("data"), 1, 0, {}});
    ASSERT_TRUE(lorad_->Start()) << lorad_->log();
  }
  static void TearDownTestSuite() {
    delete lorad_;
    delete dir_;
  }

  ProcessResult Loractl(std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), testing::BinaryPath("client/loractl"));
    env.push_back("LORACTL_ADDR=" + lorad_->address());
    return testing::RunProcess(args, 180, env);
  }

  std::string WriteSpec(const std::string& name, const std::string& text) {
    std::string path = dir_->Join(name);
    std::ofstream(path) << text;
    return path;
  }

  std::string TinyToml(int steps) { return TinyTrainToml(steps); }

  static testing::TempDir* dir_;
  static testing::Lorad* lorad_;
};

testing::TempDir* LoractlTest::dir_ = nullptr;
testing::Lorad* LoractlTest::lorad_ = nullptr;

TEST_F(LoractlTest, SubmitWatchGetListDownload) {
  const std::string spec = WriteSpec("job.toml", TinyToml(10));
  ProcessResult submit = Loractl({"submit", spec, "--watch"});
  ASSERT_EQ(submit.exit_code, 0) << submit.err << lorad_->log();
  // Not a terminal: one line per event, ending with the outcome.
  EXPECT_THAT(submit.out, HasSubstr("state QUEUED: created"));
  EXPECT_THAT(submit.out, HasSubstr("step 10/10 loss"));
  EXPECT_THAT(submit.out, HasSubstr("checkpoint step 10"));
  EXPECT_THAT(submit.out, HasSubstr("SUCCEEDED (eval loss"));
  const std::string name = submit.out.substr(0, submit.out.find('\n'));
  EXPECT_THAT(name, ::testing::StartsWith("jobs/"));
  const std::string id = name.substr(5);

  ProcessResult get = Loractl({"get", id});
  ASSERT_EQ(get.exit_code, 0);
  EXPECT_THAT(get.out, ::testing::StartsWith("FIELD "));
  EXPECT_THAT(get.out, ::testing::ContainsRegex("state +SUCCEEDED"));
  EXPECT_THAT(get.out, ::testing::ContainsRegex("progress +100% .step 10/10."));
  ProcessResult get_json = Loractl({"get", name, "-o", "json"});
  ASSERT_EQ(get_json.exit_code, 0);
  auto j = nlohmann::json::parse(get_json.out);
  EXPECT_EQ(j["state"], "SUCCEEDED");
  EXPECT_EQ(j["name"], name);
  ProcessResult get_yaml = Loractl({"-o", "yaml", "get", id});
  EXPECT_THAT(get_yaml.out, HasSubstr("state: SUCCEEDED\n"));

  ProcessResult list = Loractl({"list", "--state", "succeeded"});
  ASSERT_EQ(list.exit_code, 0);
  EXPECT_THAT(list.out, ::testing::StartsWith("NAME "));
  EXPECT_THAT(list.out, HasSubstr(name));
  EXPECT_THAT(list.out, HasSubstr("100%"));
  ProcessResult list_json = Loractl({"list", "-o", "json", "--kind", "train"});
  EXPECT_TRUE(nlohmann::json::parse(list_json.out).is_array());

  ProcessResult ckpts = Loractl({"checkpoints", id});
  EXPECT_THAT(ckpts.out, HasSubstr("checkpoints/step-00000005"));
  ProcessResult logs = Loractl({"logs", id});
  EXPECT_EQ(logs.exit_code, 0);
  EXPECT_THAT(logs.out, HasSubstr("finished"));

  ProcessResult dl = Loractl({"download", id, "--out", dir_->Join("peft")});
  ASSERT_EQ(dl.exit_code, 0) << dl.err;
  EXPECT_THAT(dl.out, HasSubstr("sha256 verified"));
  EXPECT_THAT(dl.out, HasSubstr("PEFT adapter: " + dir_->Join("peft")));
  // A loadable PEFT directory: lora-train imports it.
  ProcessResult ev = testing::RunProcess({testing::BinaryPath("worker/lora-train"), "eval", "--job",
                                          spec, "--adapter", dir_->Join("peft"), "--json"});
  EXPECT_EQ(ev.exit_code, 0) << ev.err;
  ProcessResult step = Loractl({"download", id, "--step", "5", "--out", dir_->Join("ck5")});
  ASSERT_EQ(step.exit_code, 0) << step.err;
  EXPECT_EQ(
      testing::ReadFile(dir_->Join("ck5/resume_state/trainer_state.json")).find("\"step\": 5") !=
          std::string::npos,
      true);
}

TEST_F(LoractlTest, SubmitUploadsTheSpecsLocalFilesSoDeletingThemAfterwardsChangesNothing) {
  const std::string data_dir = dir_->Join("upload-spec");
  std::filesystem::create_directories(data_dir + "/data");
  {
    std::ofstream out(data_dir + "/data/train.jsonl");
    for (int i = 0; i < 120; ++i) out << "{\"text\": \"uploaded line " << i << " of the set\"}\n";
  }
  const std::string spec = data_dir + "/job.toml";
  std::ofstream(spec) << R"([job]
name = "uploaded"
[job.labels]
source = "laptop"
[model]
flavor = "tiny"
[lora]
rank = 4
target_modules = ["q_proj", "v_proj"]
[training]
steps = 3
seq_len = 32
local_batch_size = 2
[dataset]
path = "data/train.jsonl"
format = "text"
validation_fraction = 0.1
)";
  // Run from elsewhere: the path is relative to the spec file, not the working directory.
  ProcessResult submit = Loractl({"submit", spec});
  ASSERT_EQ(submit.exit_code, 0) << submit.err;
  EXPECT_THAT(submit.err, HasSubstr("dataset.path: uploaded data/train.jsonl as files/f-"));
  const std::string name = submit.out.substr(0, submit.out.find('\n'));
  std::filesystem::remove_all(data_dir);  // the client's copy is gone at once
  ProcessResult watch = Loractl({"watch", name});
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err << lorad_->log();
  ProcessResult get = Loractl({"get", name, "-o", "json"});
  EXPECT_THAT(get.out, HasSubstr("\"path\": \"files/f-"));

  ProcessResult by_label = Loractl({"list", "--filter", "labels.source = laptop", "-o", "json"});
  ASSERT_EQ(by_label.exit_code, 0) << by_label.err;
  EXPECT_THAT(by_label.out, HasSubstr(name));
  ProcessResult none = Loractl({"list", "--filter", "labels.source = elsewhere"});
  EXPECT_THAT(none.out, Not(HasSubstr(name)));
  EXPECT_EQ(Loractl({"list", "--filter", "owner = me"}).exit_code, 2);

  ProcessResult missing = Loractl({"submit", WriteSpec("missing.toml", R"([model]
flavor = "tiny"
[dataset]
path = "/nowhere/train.jsonl"
format = "text"
)")});
  EXPECT_EQ(missing.exit_code, 3) << missing.err;
  EXPECT_THAT(missing.err, HasSubstr("worker:/nowhere/train.jsonl"));
  EXPECT_EQ(Loractl({"delete", name}).exit_code, 0);
  EXPECT_EQ(Loractl({"get", name}).exit_code, 3);
}

TEST_F(LoractlTest, FilesUploadListGetAndDeleteADirectory) {
  const std::string model = dir_->Join("model-dir");
  std::filesystem::create_directories(model + "/shards");
  std::ofstream(model + "/config.json") << "{}";
  std::ofstream(model + "/shards/a.bin") << std::string(3 << 20, 'a');  // several chunks
  ProcessResult up = Loractl({"files", "upload", model});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_THAT(up.out, HasSubstr("model-dir/"));
  EXPECT_THAT(up.out, HasSubstr("2 files"));
  const std::string file = up.out.substr(0, up.out.find(' '));
  ASSERT_THAT(file, ::testing::StartsWith("files/f-"));
  // The same bytes again: the same file, nothing sent.
  EXPECT_THAT(Loractl({"files", "upload", model}).out, HasSubstr(file));
  EXPECT_THAT(Loractl({"files", "list"}).out, HasSubstr(file));
  ProcessResult get = Loractl({"files", "get", file});
  EXPECT_THAT(get.out, HasSubstr("shards/a.bin"));
  EXPECT_EQ(Loractl({"files", "delete", file}).exit_code, 0);
  EXPECT_EQ(Loractl({"files", "get", file}).exit_code, 3);
}

TEST_F(LoractlTest, GetSaysWhyAJobIsQueued) {
  const std::string spec = WriteSpec("cuda.toml", TinyToml(5) + "[resources]\ndevice = \"cuda\"\n");
  ProcessResult submit = Loractl({"submit", spec});
  ASSERT_EQ(submit.exit_code, 0) << submit.err;
  const std::string name = submit.out.substr(0, submit.out.find('\n'));
  ProcessResult get = Loractl({"get", name});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  EXPECT_THAT(get.out, ::testing::ContainsRegex("state +QUEUED"));
  EXPECT_THAT(get.out,
              ::testing::ContainsRegex("queued because +no connected worker has device cuda"));
  EXPECT_EQ(Loractl({"cancel", name}).exit_code, 0);
}

TEST_F(LoractlTest, LocalValidationShowsFileLineAndKey) {
  const std::string spec = WriteSpec("bad.toml", TinyToml(10) + "[optimizer]\nlr = -1.0\n");
  ProcessResult r = Loractl({"submit", spec});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("bad.toml:18: optimizer.lr: must be > 0"));
  ProcessResult unknown = Loractl({"submit", WriteSpec("unknown.toml", "[trainin]\nsteps = 1\n")});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.err, HasSubstr("unknown.toml:1: trainin: unknown section"));
  ProcessResult set =
      Loractl({"submit", WriteSpec("ok.toml", TinyToml(3)), "--set", "training.steps=zero"});
  EXPECT_EQ(set.exit_code, 2);
  EXPECT_THAT(set.err, HasSubstr("training.steps: expected an integer"));
}

TEST_F(LoractlTest, ExitCodes) {
  EXPECT_EQ(Loractl({"get", "missing"}).exit_code, 3);
  EXPECT_EQ(Loractl({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Loractl({"list", "--state", "sleeping"}).exit_code, 2);
  ProcessResult unreachable =
      testing::RunProcess({testing::BinaryPath("client/loractl"), "--addr", "127.0.0.1:1", "list"});
  EXPECT_EQ(unreachable.exit_code, 6);
  EXPECT_THAT(unreachable.err, HasSubstr("lorad at 127.0.0.1:1 is unreachable"));
  // A job that fails makes `submit --watch` exit 4 (the file is missing on the workers: a
  // worker path, so loractl does not look for it here).
  const std::string bad =
      WriteSpec("fails.toml", "[model]\nflavor = \"tiny\"\n[dataset]\npath = \"worker:" +
                                  dir_->Join("none.jsonl") + "\"\n");
  ProcessResult failed = Loractl({"submit", bad, "--watch"});
  EXPECT_EQ(failed.exit_code, 4) << failed.out << failed.err;
  EXPECT_THAT(failed.out, HasSubstr("FAILED: "));
  EXPECT_EQ(Loractl({"version"}).exit_code, 0);
  EXPECT_THAT(Loractl({"--version"}).out, HasSubstr("loractl"));
  ProcessResult completion = Loractl({"completion", "bash"});
  EXPECT_THAT(completion.out, HasSubstr("complete -F _loractl loractl"));
  for (const char* cmd : {"submit", "get", "list", "cancel", "logs", "watch", "checkpoints",
                          "download", "convert", "merge"}) {
    ProcessResult help = Loractl({cmd, "--help"});
    EXPECT_EQ(help.exit_code, 0) << cmd;
    EXPECT_THAT(help.out, HasSubstr("Usage")) << cmd;
  }
}

TEST_F(LoractlTest, CancelledJobExitsFiveAndConvertMergeWork) {
  ProcessResult submit = Loractl({"submit", WriteSpec("long.toml", TinyToml(100000))});
  ASSERT_EQ(submit.exit_code, 0);
  const std::string name = submit.out.substr(0, submit.out.find('\n'));
  auto client = lorad_->Client();
  testing::WaitForJob(*client, name,
                      [](const lora::v1::Job& j) { return j.state() == lora::v1::RUNNING; });
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    Loractl({"cancel", name});
  });
  ProcessResult watch = Loractl({"watch", name});
  canceller.join();
  EXPECT_EQ(watch.exit_code, 5) << watch.out;
  ProcessResult convert = Loractl({"convert", "--model", "tiny", "--rank", "4", "--target-modules",
                                   "q_proj,v_proj", "--watch"});
  ASSERT_EQ(convert.exit_code, 0) << convert.out << convert.err;
  const std::string cname = convert.out.substr(0, convert.out.find('\n'));
  ASSERT_EQ(Loractl({"download", cname, "--out", dir_->Join("conv")}).exit_code, 0);
  ProcessResult merge =
      Loractl({"merge", "--model", "tiny", "--adapter", dir_->Join("conv"), "--watch"});
  EXPECT_EQ(merge.exit_code, 0) << merge.out << merge.err;
}

// Runs loractl in a real pseudo-terminal, as a person would, and returns what the terminal saw.
std::string RunInPty(const std::vector<std::string>& argv, const std::string& addr,
                     double timeout_s, int* exit_code = nullptr) {
  int master = -1;
  winsize ws{};
  ws.ws_col = 160;
  ws.ws_row = 40;
  pid_t pid = ::forkpty(&master, nullptr, nullptr, &ws);
  if (pid == 0) {
    ::setenv("LORACTL_ADDR", addr.c_str(), 1);
    std::vector<std::string> copy = argv;
    std::vector<char*> args;
    for (auto& a : copy) args.push_back(a.data());
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  std::string screen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  char buf[4096];
  // Read until the terminal closes (the child exited: EOF or EIO) or the time is up.
  while (std::chrono::steady_clock::now() < deadline) {
    fd_set fds;
    FD_ZERO(&fds);
    FD_SET(master, &fds);
    timeval tv{0, 100000};
    if (::select(master + 1, &fds, nullptr, nullptr, &tv) > 0) {
      ssize_t n = ::read(master, buf, sizeof(buf));
      if (n <= 0) break;
      screen.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(master);
  int status = 0;
  pid_t reaped = 0;
  while ((reaped = ::waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (reaped != pid) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    if (exit_code != nullptr) *exit_code = -1;
    return screen;
  }
  if (exit_code != nullptr)
    *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return screen;
}

TEST_F(LoractlTest, WatchOnATerminalDrawsALiveProgressBar) {
  ProcessResult submit = Loractl({"submit", WriteSpec("tty.toml", TinyToml(40))});
  ASSERT_EQ(submit.exit_code, 0);
  const std::string name = submit.out.substr(0, submit.out.find('\n'));
  const std::string screen =
      RunInPty({testing::BinaryPath("client/loractl"), "watch", name}, lorad_->address(), 120);
  EXPECT_THAT(screen, HasSubstr("\r\x1b[2K"));  // the status line is redrawn in place
  EXPECT_THAT(screen, HasSubstr("█"));          // progress bar
  EXPECT_THAT(screen, HasSubstr("step 40/40"));
  EXPECT_THAT(screen, HasSubstr("tok/s"));
  EXPECT_THAT(screen, ::testing::ContainsRegex("loss [0-9.]+"));
  EXPECT_THAT(screen, HasSubstr("▁"));  // loss sparkline
  EXPECT_THAT(screen, HasSubstr(name + " SUCCEEDED"));
  // Step metrics only move the status line: no "step 3/40 loss" event lines on a terminal.
  EXPECT_THAT(screen, ::testing::Not(HasSubstr("step 3/40 loss")));
}

TEST_F(LoractlTest, CtrlCStopsWatchingNotTheJob) {
  ProcessResult submit = Loractl({"submit", WriteSpec("ctrlc.toml", TinyToml(100000))});
  const std::string name = submit.out.substr(0, submit.out.find('\n'));
  testing::ChildProcess watch(
      {testing::BinaryPath("client/loractl"), "--addr", lorad_->address(), "watch", name},
      dir_->Join("w.out"), dir_->Join("w.err"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  watch.Signal(SIGINT);
  EXPECT_EQ(watch.Wait(20), 0);
  EXPECT_THAT(testing::ReadFile(dir_->Join("w.err")), HasSubstr("keeps running"));
  // Not stopped by the watcher's Ctrl-C (QUEUED too: on a loaded machine the suite's local
  // worker may not have registered yet when the job was submitted).
  auto job = lorad_->Client()->GetJob(name);
  EXPECT_TRUE(job->state() == lora::v1::RUNNING || job->state() == lora::v1::STARTING ||
              job->state() == lora::v1::QUEUED)
      << job->ShortDebugString();
  EXPECT_EQ(Loractl({"cancel", name}).exit_code, 0);
}

// Issue 12, finding 3: a token on loractl's command line is visible in ps. It comes from a
// file (--token-file) or LORACTL_TOKEN; the --token flag is gone.
TEST(LoractlTokens, TheTokenComesFromAFileOrTheEnvironment) {
  testing::TempDir dir;
  const std::string secret = "s3cret-0123456789abcdef";
  std::ofstream(dir.Join("token")) << secret << "\n";
  testing::Lorad lorad({dir.Join("data"), 0, 0, {"--auth-token-file", dir.Join("token")}});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  auto run = [&](std::vector<std::string> args, std::vector<std::string> env) {
    args.insert(args.begin(), testing::BinaryPath("client/loractl"));
    env.push_back("LORACTL_ADDR=" + lorad.address());
    return testing::RunProcess(args, 60, env);
  };
  EXPECT_EQ(run({"list", "--token-file", dir.Join("token")}, {}).exit_code, 0);
  EXPECT_EQ(run({"list"}, {"LORACTL_TOKEN=" + secret}).exit_code, 0);
  EXPECT_NE(run({"list"}, {}).exit_code, 0);
  EXPECT_NE(run({"list", "--token", secret}, {}).exit_code, 0);
}

// --- Issue 14: loractl's connection handling, errors, command suggestions, completion.

// The events of `loractl -o json watch` (one JSON document per event, back to back).
std::vector<nlohmann::json> JsonDocuments(const std::string& text) {
  std::vector<nlohmann::json> docs;
  std::istringstream in(text);
  while (in >> std::ws && in.peek() != EOF) {
    nlohmann::json doc;
    try {
      in >> doc;
    } catch (const nlohmann::json::exception& e) {
      ADD_FAILURE() << "not JSON after " << docs.size() << " documents: " << e.what();
      break;
    }
    docs.push_back(std::move(doc));
  }
  return docs;
}

int64_t Sequence(const nlohmann::json& event) {
  const auto& s = event.at("sequence");  // int64: a string in proto JSON
  return s.is_string() ? std::stoll(s.get<std::string>()) : s.get<int64_t>();
}

// Waits until `path` holds a whole first line and returns it ("" after `timeout_s`).
std::string FirstLine(const std::string& path, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string text = testing::ReadFile(path);
    if (size_t nl = text.find('\n'); nl != std::string::npos) return text.substr(0, nl);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return "";
}

class LoractlRestartTest : public testing::LoradTest {};

// lorad restarts (SIGTERM, then the same port and data directory) while `loractl watch` and
// `loractl submit --watch` follow a job: both reconnect, say so on stderr, resume after the last
// sequence they saw and end with the job's outcome: every event exactly once, in order.
TEST_F(LoractlRestartTest, WatchAndSubmitWatchFollowAJobAcrossLoradRestartsWithoutGapsOrRepeats) {
  const int port = testing::FreePort();
  const std::vector<std::string> flags = {"--drain-grace", "30", "--max-attempts", "2"};
  auto lorad = StartLorad(1, flags, port);
  const std::string addr = lorad->address();
  const std::string spec = dir_.Join("restart.toml");
  std::ofstream(spec) << TinyTrainToml(400, 25);
  const std::string loractl = testing::BinaryPath("client/loractl");
  testing::ChildProcess submit({loractl, "--addr", addr, "submit", spec, "--watch"},
                               dir_.Join("submit.out"), dir_.Join("submit.err"));
  const std::string name = FirstLine(dir_.Join("submit.out"), 60);
  ASSERT_THAT(name, ::testing::StartsWith("jobs/")) << testing::ReadFile(dir_.Join("submit.err"));
  testing::ChildProcess watch({loractl, "--addr", addr, "-o", "json", "watch", name},
                              dir_.Join("watch.out"), dir_.Join("watch.err"));
  int64_t last_step = 0;
  for (int restart = 1; restart <= 2; ++restart) {
    auto client = lorad->Client();
    lora::v1::Job running = testing::WaitForJob(
        *client, name,
        [&](const lora::v1::Job& j) {
          return j.state() == lora::v1::RUNNING && j.progress().step() > last_step + 5;
        },
        90);
    ASSERT_EQ(running.state(), lora::v1::RUNNING) << restart << lorad->log();
    last_step = running.progress().step();
    lorad->Kill(SIGTERM);
    ASSERT_EQ(lorad->WaitExit(60), 0) << lorad->log();
    lorad.reset();
    std::this_thread::sleep_for(std::chrono::seconds(1));  // the port is closed for a while
    lorad = StartLorad(1, flags, port);
  }
  const int watch_code = watch.Wait(200);
  const int submit_code = submit.Wait(60);
  const std::string watch_err = testing::ReadFile(dir_.Join("watch.err"));
  const std::string submit_out = testing::ReadFile(dir_.Join("submit.out"));
  const std::string submit_err = testing::ReadFile(dir_.Join("submit.err"));
  ASSERT_EQ(watch_code, 0) << watch_err << lorad->log();
  ASSERT_EQ(submit_code, 0) << submit_err << submit_out;
  EXPECT_THAT(watch_err, HasSubstr("reconnecting"));
  EXPECT_THAT(submit_err, HasSubstr("reconnecting"));
  auto final_job = lorad->Client()->GetJob(name);
  ASSERT_TRUE(final_job.ok()) << final_job.status();
  ASSERT_EQ(final_job->state(), lora::v1::SUCCEEDED) << final_job->error().message();
  EXPECT_EQ(final_job->restarts(), 2);

  // `watch -o json`: sequences 1, 2, ..., last: no gap, no repeat, nothing after the end.
  const std::vector<nlohmann::json> events =
      JsonDocuments(testing::ReadFile(dir_.Join("watch.out")));
  ASSERT_FALSE(events.empty());
  for (size_t i = 0; i < events.size(); ++i)
    ASSERT_EQ(Sequence(events[i]), static_cast<int64_t>(i) + 1) << events[i].dump();
  EXPECT_EQ(Sequence(events.back()), final_job->last_sequence());
  EXPECT_EQ(events.back()["state_change"]["to"], "SUCCEEDED") << events.back().dump();

  // `submit --watch` (not a terminal): the name, one line per event, the outcome.
  std::vector<std::string> lines;
  std::istringstream in(submit_out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(static_cast<int64_t>(lines.size()), final_job->last_sequence() + 2) << submit_out;
  EXPECT_THAT(lines.back(), ::testing::StartsWith(name + " SUCCEEDED"));
}

// A lorad that stays down: watch retries for --reconnect-timeout, then exits 6 naming lorad's
// address. On a terminal, neither the notices nor the error land on the progress bar's line.
TEST_F(LoractlRestartTest, WatchGivesUpAfterTheReconnectTimeoutAndNeverPrintsOntoTheProgressBar) {
  auto lorad = StartLorad(0);  // no worker: the job stays queued, the status line stays drawn
  auto job = lorad->Client()->CreateJob(testing::TinyTrainSpec(5), "");
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string addr = lorad->address();
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    lorad->Kill(SIGKILL);
  });
  int exit_code = -1;
  const auto start = std::chrono::steady_clock::now();
  const std::string screen = RunInPty(
      {testing::BinaryPath("client/loractl"), "watch", job->name(), "--reconnect-timeout", "3"},
      addr, 60, &exit_code);
  const double took = SecondsSince(start);
  killer.join();
  EXPECT_EQ(exit_code, 6) << screen;
  EXPECT_LT(took, 30) << screen;
  EXPECT_THAT(screen, HasSubstr("QUEUED  ["));  // the status line was drawn
  EXPECT_THAT(screen, HasSubstr("reconnecting"));
  const size_t error = screen.find("loractl: error: ");
  ASSERT_NE(error, std::string::npos) << screen;
  EXPECT_THAT(screen.substr(error), HasSubstr("lorad at " + addr));
  // What precedes each of loractl's messages ends the status line (a newline) or erases it.
  for (size_t at = screen.find("loractl: "); at != std::string::npos;
       at = screen.find("loractl: ", at + 1)) {
    const std::string before = screen.substr(0, at);
    EXPECT_TRUE(EndsWith(before, "\n") || EndsWith(before, "\x1b[2K"))
        << "a message printed onto the status line: ..."
        << before.substr(before.size() > 80 ? before.size() - 80 : 0);
  }
}

// Every command reports an unreachable lorad at once (a closed port refuses at once), naming
// the address; `submit` used to wait out its whole deadline for "Deadline Exceeded".
TEST(LoractlConnection, EveryCommandFailsFastNamingTheAddressWhenNothingListens) {
  testing::TempDir dir;
  const std::string spec = dir.Join("job.toml");
  std::ofstream(spec) << TinyTrainToml(5);
  const std::string addr = "127.0.0.1:" + std::to_string(testing::FreePort());
  const std::vector<std::vector<std::string>> commands = {
      {"submit", spec},
      {"submit", spec, "--watch"},
      {"get", "jobs/x"},
      {"list"},
      {"cancel", "jobs/x"},
      {"logs", "jobs/x"},
      {"logs", "jobs/x", "-f"},
      {"watch", "jobs/x"},
      {"checkpoints", "jobs/x"},
      {"download", "jobs/x", "--out", dir.Join("out")},
      {"convert", "--model", "tiny", "--target-modules", "q_proj"},
      {"merge", "--model", "tiny", "--adapter", dir.path()}};
  for (std::vector<std::string> args : commands) {
    const std::string what = args[0] + (args.size() > 2 ? " " + args.back() : "");
    args.insert(args.begin(), {"--addr", addr, "--timeout", "10"});
    const auto start = std::chrono::steady_clock::now();
    ProcessResult r = RunLoractl(args, 60);
    EXPECT_LT(SecondsSince(start), 3.0) << what;
    EXPECT_EQ(r.exit_code, 6) << what << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("lorad at " + addr + " is unreachable")) << what;
  }
}

// A peer that accepts TCP connections but never speaks gRPC: commands give up after
// --connect-timeout, not after the request timeout.
TEST(LoractlConnection, APeerThatNeverAnswersFailsAfterTheConnectTimeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  ASSERT_EQ(::listen(fd, 64), 0);  // the kernel completes handshakes; nobody accepts
  socklen_t len = sizeof(sa);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  const std::string addr = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
  for (const char* cmd : {"get", "submit"}) {
    testing::TempDir dir;
    std::ofstream(dir.Join("job.toml")) << TinyTrainToml(5);
    const auto start = std::chrono::steady_clock::now();
    ProcessResult r = RunLoractl({"--addr", addr, "--connect-timeout", "2", cmd,
                                  std::string(cmd) == "get" ? "jobs/x" : dir.Join("job.toml")},
                                 60);
    const double took = SecondsSince(start);
    EXPECT_EQ(r.exit_code, 6) << cmd << ": " << r.err;
    EXPECT_GE(took, 1.5) << cmd;
    EXPECT_LT(took, 8) << cmd;
    EXPECT_THAT(r.err, HasSubstr("lorad at " + addr + " did not answer within 2s")) << cmd;
  }
  ::close(fd);
}

// --addr (and LORACTL_ADDR) is HOST:PORT, [IPV6]:PORT or unix:PATH; anything else is a usage
// error naming the expected form, before any connection (no silent port 443 for "host").
TEST(LoractlConnection, AnAddressNeedsAHostAndAPortInRange) {
  for (const char* bad : {"localhost", "127.0.0.1", ":", ":50051", "localhost:", "host:port:x",
                          "host:0", "host:65536", "host:5x", "[::1]", "::1", "[]:50051", "a b:1",
                          "", "127.0.0.1:1,", "127.0.0.1:1,localhost"}) {
    ProcessResult r = RunLoractl({"--addr", bad, "list"});
    EXPECT_EQ(r.exit_code, 2) << "'" << bad << "': " << r.err;
    EXPECT_THAT(r.err, HasSubstr("--addr '" + std::string(bad) + "'")) << bad;
    EXPECT_THAT(r.err, HasSubstr("expected HOST:PORT")) << bad;
  }
  ProcessResult env = RunLoractl({"list"}, 60, {"LORACTL_ADDR=localhost"});
  EXPECT_EQ(env.exit_code, 2) << env.err;
  EXPECT_THAT(env.err, HasSubstr("LORACTL_ADDR 'localhost'"));
  // Well-formed addresses get as far as connecting (nothing listens on port 1).
  for (const char* good : {"localhost:1", "127.0.0.1:1", "[::1]:1", "unix:/nonexistent/lorad.sock",
                           "127.0.0.1:1,localhost:2"}) {
    ProcessResult r = RunLoractl({"--addr", good, "list"});
    EXPECT_EQ(r.exit_code, 6) << good << ": " << r.err;
  }
  // Commands that never connect do not care.
  EXPECT_EQ(RunLoractl({"version"}, 60, {"LORACTL_ADDR=nonsense"}).exit_code, 0);
}

TEST(LoractlUsage, AMistypedCommandSuggestsTheClosestOne) {
  struct Case {
    std::vector<std::string> args;
    std::string typo, meant;
  };
  for (const Case& c :
       std::vector<Case>{{{"wathc", "jobs/x"}, "wathc", "watch"},
                         {{"--addr", "127.0.0.1:1", "lsit"}, "lsit", "list"},
                         {{"sumbit", "job.toml", "--watch"}, "sumbit", "submit"},
                         {{"-o", "json", "checkpoint", "x"}, "checkpoint", "checkpoints"},
                         {{"donwload", "x", "--out", "d"}, "donwload", "download"},
                         {{"gte", "x"}, "gte", "get"}}) {
    ProcessResult r = RunLoractl(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.typo;
    EXPECT_THAT(r.err, HasSubstr("unknown command '" + c.typo + "'")) << r.err;
    EXPECT_THAT(r.err, HasSubstr("did you mean '" + c.meant + "'?")) << r.err;
  }
  // A mistyped flag is CLI11's to report, not taken for a command.
  ProcessResult flag = RunLoractl({"--adr", "127.0.0.1:1", "list"});
  EXPECT_EQ(flag.exit_code, 2);
  EXPECT_THAT(flag.err, ::testing::Not(HasSubstr("unknown command")));
  ProcessResult far = RunLoractl({"frobnicate"});
  EXPECT_EQ(far.exit_code, 2);
  EXPECT_THAT(far.err, HasSubstr("unknown command 'frobnicate'"));
  EXPECT_THAT(far.err, ::testing::Not(HasSubstr("did you mean")));
  EXPECT_THAT(far.err, HasSubstr("watch"));  // it lists the commands instead
}

// The subcommands `loractl --help` lists.
std::vector<std::string> HelpCommands() {
  ProcessResult help = RunLoractl({"--help"});
  std::vector<std::string> commands;
  const size_t at = help.out.find("Subcommands:\n");
  std::istringstream in(at == std::string::npos ? "" : help.out.substr(at + 13));
  for (std::string line; std::getline(in, line) && line.size() > 2 && line[0] == ' ';) {
    std::istringstream words(line);
    std::string name;
    words >> name;
    commands.push_back(name);
  }
  return commands;
}

bool Installed(const std::string& program) {
  return testing::RunProcess({"/bin/sh", "-c", "command -v " + program}, 10).exit_code == 0;
}

TEST(LoractlUsage, CompletionScriptsForBashZshAndFishParseAndOfferEveryCommand) {
  const std::vector<std::string> commands = HelpCommands();
  ASSERT_GE(commands.size(), 12u);
  testing::TempDir dir;
  for (const std::string shell : {"bash", "zsh", "fish"}) {
    ProcessResult r = RunLoractl({"completion", shell});
    ASSERT_EQ(r.exit_code, 0) << shell << ": " << r.err;
    for (const std::string& c : commands)
      EXPECT_THAT(r.out, ::testing::ContainsRegex("[ '\"(]" + c + "[ :'\"]")) << shell << " " << c;
    const std::string path = dir.Join("loractl." + shell);
    std::ofstream(path) << r.out;
    if (!Installed(shell)) {
      std::cout << shell << " is not installed: its script's syntax is not checked\n";
      continue;
    }
    ProcessResult syntax = testing::RunProcess({"/usr/bin/env", shell, "-n", path}, 30);
    EXPECT_EQ(syntax.exit_code, 0) << shell << ": " << syntax.err << syntax.out;
  }
  // Bash: the function completes a command from its prefix, and a flag's values.
  auto bash = [&](const std::string& line) {
    std::string words;
    std::istringstream in(line);
    int n = 0;
    for (std::string w; in >> w; ++n) words += " '" + w + "'";
    if (!line.empty() && line.back() == ' ') words += " ''", ++n;
    const std::string script = "source '" + dir.Join("loractl.bash") + "'; COMP_WORDS=(" + words +
                               "); COMP_CWORD=" + std::to_string(n - 1) +
                               "; _loractl; printf '%s\\n' \"${COMPREPLY[@]}\"";
    return testing::RunProcess({"/bin/bash", "-c", script}, 30).out;
  };
  EXPECT_EQ(bash("loractl wa"), "watch\n");
  EXPECT_EQ(bash("loractl --addr h:1 chec"), "checkpoints\n");
  EXPECT_EQ(bash("loractl list -o j"), "json\n");
  EXPECT_THAT(bash("loractl download x --"), HasSubstr("--latest\n"));
  for (const char* shell : {"bash\n", "zsh\n", "fish\n"})
    EXPECT_THAT(bash("loractl completion "), HasSubstr(shell));
  // Zsh: it loads under compinit and registers its function for loractl.
  if (Installed("zsh")) {
    ProcessResult zsh = testing::RunProcess(
        {"/usr/bin/env", "zsh", "-f", "-c",
         "autoload -Uz compinit; compinit -u -d '" + dir.Join("zcompdump") + "'; source '" +
             dir.Join("loractl.zsh") + "'; print -r -- ${_comps[loractl]}"},
        30);
    EXPECT_EQ(zsh.out, "_loractl\n") << zsh.err;
  }
  if (Installed("fish")) {
    ProcessResult fish = testing::RunProcess({"/usr/bin/env", "fish", "-c",
                                              "source '" + dir.Join("loractl.fish") +
                                                  "'; complete -C 'loractl wa'; complete -C "
                                                  "'loractl get --o'"},
                                             30);
    EXPECT_THAT(fish.out, ::testing::ContainsRegex("(^|\n)watch\t"));
    EXPECT_THAT(fish.out, HasSubstr("--output"));
  }
  EXPECT_EQ(RunLoractl({"completion", "powershell"}).exit_code, 2);
}

}  // namespace
}  // namespace lora
