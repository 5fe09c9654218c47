// loractl as users run it, against a real lorad with a local worker: outputs, exit codes,
// local validation, downloads, and the live terminal view (in a real pseudo-terminal).
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
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

  std::string TinyToml(int steps) {
    return "[job]\nname = \"cli\"\n[model]\nflavor = \"tiny\"\n[lora]\ntarget_modules = "
           "[\"q_proj\", \"lm_head\"]\n"
           "[training]\nsteps = " +
           std::to_string(steps) +
           "\nseq_len = 64\nlocal_batch_size = 4\n"
           "[dataset]\nname = \"synthetic-arith\"\nnum_examples = 500\nvalidation_interval = 5\n"
           "[checkpoint]\ninterval = 5\n";
  }

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
  // A job that fails makes `submit --watch` exit 4.
  const std::string bad =
      WriteSpec("fails.toml", "[model]\nflavor = \"tiny\"\n[dataset]\npath = \"" +
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
                     double timeout_s) {
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
    int status;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      while ((::read(master, buf, sizeof(buf))) > 0) {
      }
      break;
    }
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ::close(master);
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
  auto job = lorad_->Client()->GetJob(name);
  EXPECT_TRUE(job->state() == lora::v1::RUNNING || job->state() == lora::v1::STARTING)
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

}  // namespace
}  // namespace lora
