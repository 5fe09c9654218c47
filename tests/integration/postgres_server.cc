#include "tests/integration/postgres_server.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/integration/subprocess.h"  // FreePort, ReadFile

namespace lora::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::string BinDir() {
  const char* dir = std::getenv("LORA_PG_BINDIR");
  return dir != nullptr && *dir != '\0' ? dir : "/usr/lib/postgresql/15/bin";
}

// Who initdb and postgres run as: the postgres system user when we are root.
struct RunAs {
  bool drop = false;
  uid_t uid = 0;
  gid_t gid = 0;
};

absl::StatusOr<RunAs> ServerUser() {
  RunAs as;
  if (::geteuid() != 0) return as;
  const passwd* pw = ::getpwnam("postgres");
  if (pw == nullptr) {
    return absl::FailedPreconditionError(
        "running as root, but there is no `postgres` system user to run PostgreSQL as "
        "(postgres refuses to run as root)");
  }
  as.drop = true;
  as.uid = pw->pw_uid;
  as.gid = pw->pw_gid;
  return as;
}

// Starts argv with stdout and stderr appended to `log_path`, as `as`, in a session of its own
// (so that one kill reaches the postmaster and all its backends).
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path, const RunAs& as) {
  std::vector<std::string> copy = argv;
  std::vector<char*> args;
  for (auto& a : copy) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  // The child: only async-signal-safe calls until exec.
  ::setsid();
  const int devnull = ::open("/dev/null", O_RDONLY);
  const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (devnull < 0 || log < 0) ::_exit(126);
  ::dup2(devnull, 0);
  ::dup2(log, 1);
  ::dup2(log, 2);
  if (as.drop) {
    if (::setgroups(1, &as.gid) != 0 || ::setgid(as.gid) != 0 || ::setuid(as.uid) != 0) {
      ::_exit(125);
    }
  }
  // A test killed by its timeout leaves no server behind: the postmaster dies with it (and its
  // backends follow the postmaster). Set after setuid, which clears it.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(124);
  ::execv(args[0], args.data());
  ::_exit(127);
}

// Exit code (128 + signal), or -1 when `pid` still runs after `timeout_s`.
int WaitPid(pid_t pid, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (true) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0 && errno != EINTR) return 128;  // not our child any more
    if (Clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// Fields of /proc/<pid>/stat: state and parent ("pid (comm) state ppid ..."; comm may hold
// spaces, so parse after the last ')'). False when the process is gone.
bool ProcStat(pid_t pid, char* state, pid_t* ppid) {
  const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  const size_t close = stat.rfind(')');
  int parent = 0;
  if (close == std::string::npos ||
      std::sscanf(stat.c_str() + close + 1, " %c %d", state, &parent) != 2) {
    return false;
  }
  *ppid = parent;
  return true;
}

// The postmaster's children (backends, background workers). Each calls setsid(), so a signal
// to the postmaster's process group does not reach them.
std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> out;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  while (dirent* e = ::readdir(proc)) {
    const int pid = std::atoi(e->d_name);
    char state = 0;
    pid_t ppid = 0;
    if (pid > 0 && ProcStat(pid, &state, &ppid) && ppid == parent) out.push_back(pid);
  }
  ::closedir(proc);
  return out;
}

bool Alive(pid_t pid) {
  char state = 0;
  pid_t ppid = 0;
  return ProcStat(pid, &state, &ppid) && state != 'Z' && state != 'X';
}

// Where the scratch directory goes: $TMPDIR unless the postgres user could not reach it (a
// root-only ancestor) or the socket path inside would be too long for a unix socket.
std::string ScratchBase(const RunAs& as) {
  std::filesystem::path base = std::filesystem::temp_directory_path();
  if (base.string().size() > 60) return "/tmp";
  if (as.drop) {
    for (std::filesystem::path p = base; !p.empty() && p != p.root_path(); p = p.parent_path()) {
      struct stat st;
      if (::stat(p.c_str(), &st) != 0 || (st.st_mode & S_IXOTH) == 0) return "/tmp";
    }
  }
  return base.string();
}

std::string Tail(const std::string& text, size_t n = 3000) {
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

std::string RandomPassword() {
  std::random_device rd;
  std::string out = "pw-";
  for (int i = 0; i < 4; ++i) absl::StrAppend(&out, absl::Hex(rd(), absl::kZeroPad8));
  return out;
}

}  // namespace

bool PostgresServer::Available() { return MissingReason().empty(); }

std::string PostgresServer::MissingReason() {
  for (const char* tool : {"initdb", "postgres"}) {
    const std::string path = BinDir() + "/" + tool;
    if (::access(path.c_str(), X_OK) != 0) {
      return absl::StrCat("PostgreSQL 15 is not installed (no ", path,
                          "): apt-get install postgresql (scripts/install-deps.sh), or point "
                          "LORA_PG_BINDIR at its bin directory");
    }
  }
  return "";
}

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start(bool durable) {
  if (!Available()) return absl::FailedPreconditionError(MissingReason());
  auto as = ServerUser();
  if (!as.ok()) return as.status();
  // Backends orphaned by Kill() are reparented to us rather than to a PID 1 that may never reap
  // them (containers), so Reap() can collect them instead of leaving zombies.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  std::unique_ptr<PostgresServer> server(new PostgresServer());
  server->durable_ = durable;
  std::string tmpl = ScratchBase(*as) + "/lora-pg-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", tmpl, ": ", std::strerror(errno)));
  }
  server->dir_ = tmpl;
  server->password_ = RandomPassword();
  absl::Status s = server->InitDb();
  if (s.ok()) s = server->Launch();
  if (!s.ok()) return s;  // the destructor cleans up
  return server;
}

PostgresServer::~PostgresServer() {
  if (running()) Kill();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string PostgresServer::conninfo_without_password() const {
  return absl::StrCat("host=127.0.0.1 port=", port_, " dbname=postgres user=lorad");
}

std::string PostgresServer::conninfo() const {
  return absl::StrCat(conninfo_without_password(), " password=", password_);
}

std::string PostgresServer::log() const { return ReadFile(dir_ + "/postgres.log"); }

absl::Status PostgresServer::InitDb() {
  auto as = ServerUser();
  if (!as.ok()) return as.status();
  const std::string pwfile = dir_ + "/pwfile";
  {
    std::ofstream out(pwfile);
    out << password_ << "\n";
  }
  ::mkdir((dir_ + "/sock").c_str(), 0700);
  if (as->drop) {
    for (const std::string& p : {dir_, pwfile, dir_ + "/sock"}) {
      if (::chown(p.c_str(), as->uid, as->gid) != 0) {
        return absl::InternalError(absl::StrCat("chown ", p, ": ", std::strerror(errno)));
      }
    }
  }
  const std::string initdb_log = dir_ + "/initdb.log";
  const pid_t pid = Spawn({BinDir() + "/initdb", "-D", dir_ + "/data", "-U", "lorad",
                           "--pwfile=" + pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
                           "--no-sync", "--encoding=UTF8", "--locale=C"},
                          initdb_log, *as);
  const int rc = WaitPid(pid, 60);
  ::unlink(pwfile.c_str());
  if (rc != 0) {
    if (rc < 0) {
      ::kill(-pid, SIGKILL);
      WaitPid(pid, 5);
    }
    return absl::InternalError(absl::StrCat("initdb ", rc < 0 ? "timed out" : "failed", " (exit ",
                                            rc, "): ", Tail(ReadFile(initdb_log))));
  }
  return absl::OkStatus();
}

absl::Status PostgresServer::Launch() {
  auto as = ServerUser();
  if (!as.ok()) return as.status();
  const std::string log_path = dir_ + "/postgres.log";
  const bool fixed_port = port_ != 0;  // a restart keeps the address clients know
  constexpr int kAttempts = 5;
  std::string last_failure;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    // postgres cannot listen on port 0: take one the kernel just handed out and released; if
    // someone else grabs it in between, the bind fails and we try another.
    if (!fixed_port) port_ = FreePort();
    const size_t log_offset = ReadFile(log_path).size();
    const char* durability = durable_ ? "on" : "off";
    pid_ = Spawn({BinDir() + "/postgres", "-D", dir_ + "/data", "-p", std::to_string(port_), "-c",
                  "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + dir_ + "/sock",
                  "-c", absl::StrCat("fsync=", durability), "-c",
                  absl::StrCat("full_page_writes=", durability), "-c", "max_connections=40", "-c",
                  durable_ ? "shared_buffers=128MB" : "shared_buffers=16MB"},
                 log_path, *as);
    const std::string ping = absl::StrCat("host=127.0.0.1 port=", port_,
                                          " dbname=postgres user=lorad connect_timeout=2");
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    bool exited = false;
    while (Clock::now() < deadline) {
      if (PQping(ping.c_str()) == PQPING_OK) return absl::OkStatus();
      const int rc = WaitPid(pid_, 0);
      if (rc >= 0) {
        exited = true;
        pid_ = -1;
        last_failure = absl::StrCat("postgres exited (", rc, ")");
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    const std::string log_since = ReadFile(log_path).substr(log_offset);
    if (!exited) {
      Kill();
      return absl::DeadlineExceededError(
          absl::StrCat("PostgreSQL did not accept connections within 30 s: ", Tail(log_since)));
    }
    const bool port_taken = absl::StrContains(log_since, "could not bind") ||
                            absl::StrContains(log_since, "could not create any TCP/IP sockets");
    if (!port_taken || fixed_port) {
      return absl::InternalError(absl::StrCat(last_failure, ": ", Tail(log_since)));
    }
  }
  return absl::UnavailableError(
      absl::StrCat("no free port for PostgreSQL after ", kAttempts, " tries: ", last_failure));
}

void PostgresServer::Reap(double timeout_s, const std::vector<pid_t>& children) {
  if (pid_ <= 0) return;
  WaitPid(pid_, timeout_s);
  // Backends orphaned by a SIGKILL may still be exiting and holding shared memory, which a
  // restart refuses to share: wait (bounded) until none is left.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (pid_t child : children) {
    // Orphans come to us (a child subreaper, see Start): reap them, or wait until gone.
    while (::waitpid(child, nullptr, WNOHANG) != child && Alive(child) && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  pid_ = -1;
  paused_ = false;
}

absl::Status PostgresServer::Stop() {
  if (!running()) return absl::OkStatus();
  Resume();
  ::kill(pid_, SIGINT);  // fast shutdown
  if (WaitPid(pid_, 30) < 0) {
    Kill();
    return absl::DeadlineExceededError("PostgreSQL did not shut down within 30 s; killed it");
  }
  Reap(0, {});  // a fast shutdown waits for its backends
  return absl::OkStatus();
}

void PostgresServer::Kill() {
  if (!running()) return;
  // Stopped first, the postmaster forks no backend we would miss.
  ::kill(pid_, SIGSTOP);
  const std::vector<pid_t> children = ChildrenOf(pid_);
  for (pid_t child : children) ::kill(child, SIGKILL);
  ::kill(pid_, SIGKILL);  // works on stopped processes too
  Reap(10, children);
}

void PostgresServer::Pause() {
  if (!running() || paused_) return;
  ::kill(pid_, SIGSTOP);  // first, so that it forks no backend we would miss
  for (pid_t child : ChildrenOf(pid_)) ::kill(child, SIGSTOP);
  paused_ = true;
}

void PostgresServer::Resume() {
  if (!running() || !paused_) return;
  for (pid_t child : ChildrenOf(pid_)) ::kill(child, SIGCONT);
  ::kill(pid_, SIGCONT);
  paused_ = false;
}

absl::Status PostgresServer::Restart() {
  if (running()) {
    absl::Status stopped = Stop();
    if (!stopped.ok()) return stopped;
  }
  return Launch();
}

}  // namespace lora::testing
