// One libpq connection to PostgreSQL, with statuses instead of PGresult handling.
//
//   LORA_ASSIGN_OR_RETURN(auto conn, PgConnection::Connect(conninfo, absl::Seconds(5)));
//   LORA_ASSIGN_OR_RETURN(PgResult r, conn->Exec("SELECT holder FROM lorad_leader WHERE name = $1",
//                                                {"lorad"}, "read the leader"));
//   LORA_RETURN_IF_ERROR(conn->InTransaction([&](PgConnection& txn) -> absl::Status {
//     return txn.Exec("UPDATE jobs SET state = $2 WHERE id = $1", {id, "RUNNING"}).status();
//   }));
//
// Statements are always parameterized ($1, $2, ... bound as text), so values never need quoting.
//
// Invariants:
//   - Errors never carry a password nor a parameter value: they name the statement's purpose,
//     the SQLSTATE and, for classes whose server messages cannot quote data, the server's
//     primary message. Status codes follow the SQLSTATE class: a lost or refused connection is
//     UNAVAILABLE, a unique violation ALREADY_EXISTS, any other integrity violation
//     FAILED_PRECONDITION, a serialization failure or deadlock ABORTED (retry the transaction),
//     a call cut short by its deadline DEADLINE_EXCEEDED, everything else INTERNAL.
//   - Every call is bounded in time (statement timeout, connect timeout, optional deadline). A
//     call that times out closes the connection: the server may still run or commit what it was
//     sent, so the session's state is unknown and it is never reused.
//   - After a failure that lost the connection, ok() is false and every call fails UNAVAILABLE
//     until Reconnect() succeeds; nothing reconnects behind the caller's back (a transaction
//     must never silently continue on a new session).
//   - Not thread-safe: one thread uses a connection at a time.
#ifndef LORA_SERVER_STORE_POSTGRES_PG_CONNECTION_H_
#define LORA_SERVER_STORE_POSTGRES_PG_CONNECTION_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

struct pg_conn;

namespace lora::server::pg {

// A statement's parameters; std::nullopt binds SQL NULL.
using PgParams = std::vector<std::optional<std::string>>;

// What a statement returned: rows of text values (NULL = std::nullopt), in column order.
struct PgResult {
  std::vector<std::string> columns;
  std::vector<std::vector<std::optional<std::string>>> rows;
  // Rows an INSERT/UPDATE/DELETE touched (also the number of rows RETURNING produced).
  int64_t affected_rows = 0;

  bool empty() const { return rows.empty(); }
  // The value of `column` in `row`, std::nullopt for NULL (the caller knows the shape).
  const std::optional<std::string>& at(size_t row, size_t column) const {
    return rows[row][column];
  }
};

class PgConnection {
 public:
  using Clock = std::chrono::steady_clock;

  // Connects with a libpq conninfo string or URI ("host=... port=... dbname=... user=...
  // password=..." or "postgresql://..."), waiting at most `connect_timeout` (our own deadline,
  // not libpq's whole-second connect_timeout).
  static absl::StatusOr<std::unique_ptr<PgConnection>> Connect(const std::string& conninfo,
                                                               absl::Duration connect_timeout);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Runs one statement. `purpose` names it in errors ("renew the leader lease"); when empty,
  // the statement's first word stands in.
  absl::StatusOr<PgResult> Exec(absl::string_view sql, const PgParams& params = {},
                                absl::string_view purpose = {});

  // BEGIN, `fn`, then COMMIT when `fn` returns OK, else ROLLBACK and `fn`'s status. A COMMIT
  // whose answer was lost (UNAVAILABLE, DEADLINE_EXCEEDED) may or may not have committed.
  // Transactions do not nest.
  absl::Status InTransaction(absl::FunctionRef<absl::Status(PgConnection&)> fn);
  bool in_transaction() const { return in_transaction_; }

  // Whether the session is usable (false after it was lost or closed on a timeout).
  bool ok() const;
  // Drops the current session, if any, and opens a new one with the original conninfo.
  absl::Status Reconnect();

  // Each later Exec waits at most this long for its answer (default 30 s).
  void set_statement_timeout(absl::Duration timeout) { statement_timeout_ = timeout; }
  // Every later call (Exec, Reconnect, a whole transaction's statements) must finish by
  // `deadline`, whichever of it and the per-call timeouts comes first.
  void set_deadline(std::optional<Clock::time_point> deadline) { deadline_ = deadline; }

  // "host:port/dbname as user" for logs (never the password).
  const std::string& description() const { return description_; }

 private:
  PgConnection(std::string conninfo, absl::Duration connect_timeout, std::string password,
               std::string description);

  absl::Status Open();
  void Close();
  Clock::time_point DeadlineAfter(absl::Duration timeout) const;
  // Removes the password from text libpq produced, for defense in depth.
  std::string Scrub(std::string text) const;
  absl::Status LostConnection(absl::string_view purpose, absl::string_view what);

  const std::string conninfo_;  // holds the password: never logged, never in a status
  const absl::Duration connect_timeout_;
  const std::string password_;
  const std::string description_;
  pg_conn* conn_ = nullptr;
  bool in_transaction_ = false;
  absl::Duration statement_timeout_ = absl::Seconds(30);
  std::optional<Clock::time_point> deadline_;
};

}  // namespace lora::server::pg

#endif  // LORA_SERVER_STORE_POSTGRES_PG_CONNECTION_H_
