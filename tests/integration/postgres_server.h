// A real PostgreSQL 15 server for integration tests: a fresh cluster in a scratch directory,
// listening on 127.0.0.1 on a free port and on a unix socket inside the directory.
//
//   if (!PostgresServer::Available()) GTEST_SKIP() << PostgresServer::MissingReason();
//   auto server = PostgresServer::Start();
//   ASSERT_TRUE(server.ok()) << server.status();
//   auto conn = PgConnection::Connect((*server)->conninfo(), absl::Seconds(5));
//   (*server)->Kill();      // a crash: SIGKILL to the postmaster and every backend
//   (*server)->Restart();   // the same data directory and port, after crash recovery
//
// Invariants:
//   - Run as root, initdb and postgres run as the `postgres` system user (postgres refuses
//     root) and the scratch directory is handed to it; otherwise they run as the caller.
//   - Every wait is bounded: startup at most 30 s, shutdown at most 30 s, then SIGKILL.
//   - The destructor kills whatever still runs and removes the directory, so a failing test
//     leaves no server behind.
//   - Durability is traded for speed (fsync=off) unless Start(/*durable=*/true): a killed server
//     loses nothing the OS has, which is what a process crash does; it is not a power-loss test.
//   - Password authentication over TCP (scram-sha-256), with a password made for the server,
//     so tests see the same libpq path as production.
#ifndef LORA_TESTS_INTEGRATION_POSTGRES_SERVER_H_
#define LORA_TESTS_INTEGRATION_POSTGRES_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lora::testing {

class PostgresServer {
 public:
  // Whether initdb and postgres exist ($LORA_PG_BINDIR, default /usr/lib/postgresql/15/bin).
  static bool Available();
  // Why not (for GTEST_SKIP), "" when available.
  static std::string MissingReason();

  // `durable`: fsync and full-page writes on, as in production (benchmarks); the default trades
  // them for speed (tests).
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start(bool durable = false);
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // libpq conninfo over TCP with the password ("host=127.0.0.1 port=... dbname=postgres ...").
  std::string conninfo() const;
  // The same without the password (for a test that must fail to authenticate).
  std::string conninfo_without_password() const;
  const std::string& password() const { return password_; }
  int port() const { return port_; }
  bool running() const { return pid_ > 0; }

  // Fast shutdown (SIGINT: backends end, the data is checkpointed), bounded.
  absl::Status Stop();
  // SIGKILL to the postmaster and its backends, as a crash of the server's processes.
  void Kill();
  // SIGSTOP / SIGCONT to all of them: the server hangs with its connections open.
  void Pause();
  void Resume();
  // Starts again on the same port and data directory (stopping it first if it runs).
  absl::Status Restart();

  // The server's log so far (every start appends to it).
  std::string log() const;

 private:
  PostgresServer() = default;
  absl::Status InitDb();
  absl::Status Launch();  // postgres on port_, waits until it accepts connections
  // Waits for the postmaster to exit, then (bounded) for `children` to be gone.
  void Reap(double timeout_s, const std::vector<pid_t>& children);

  std::string dir_;
  std::string password_;
  int port_ = 0;
  pid_t pid_ = -1;  // the postmaster, also its process group
  bool paused_ = false;
  bool durable_ = false;
};

}  // namespace lora::testing

#endif  // LORA_TESTS_INTEGRATION_POSTGRES_SERVER_H_
