#include "server/store/postgres/pg_connection.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace lora::server::pg {
namespace {

using Clock = PgConnection::Clock;

Clock::time_point After(absl::Duration timeout) {
  // Far enough to never come, near enough not to overflow the clock's representation.
  constexpr absl::Duration kNever = absl::Hours(24 * 365);
  return Clock::now() + absl::ToChronoNanoseconds(std::min(timeout, kNever));
}

// Waits until `fd` is ready for `events` or `deadline` passes: 1 ready, 0 timed out, -1 error.
int WaitSocket(int fd, short events, Clock::time_point deadline) {
  while (true) {
    const auto left = deadline - Clock::now();
    if (left <= Clock::duration::zero()) return 0;
    // Round up so that a wait never spins on a 0 ms timeout just before the deadline.
    const int64_t ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (r > 0) return 1;
    if (r == 0) continue;  // re-check the deadline
    if (errno != EINTR) return -1;
  }
}

// libpq's messages span lines ("server closed the connection unexpectedly\n\tThis probably
// means..."): the first line is the one that says what happened.
std::string FirstLine(const char* text) {
  std::string s = text != nullptr ? text : "";
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  absl::StripAsciiWhitespace(&s);
  return s.empty() ? "no message from libpq" : s;
}

std::string DefaultPurpose(absl::string_view sql) {
  sql = absl::StripLeadingAsciiWhitespace(sql);
  const size_t end = sql.find_first_of(" \t\r\n(;");
  std::string word(sql.substr(0, end));
  return word.empty() ? "empty statement" : absl::AsciiStrToUpper(word) + " statement";
}

// The server's primary message may quote data only in these classes: data exceptions (22,
// "invalid input syntax for type bigint: \"...\"") and PL/pgSQL RAISE (P0).
bool PrimaryMessageMayQuoteData(absl::string_view sqlstate) {
  return absl::StartsWith(sqlstate, "22") || absl::StartsWith(sqlstate, "P0");
}

absl::StatusCode CodeForSqlState(absl::string_view sqlstate) {
  if (absl::StartsWith(sqlstate, "08") || sqlstate == "57P01" || sqlstate == "57P02" ||
      sqlstate == "57P03") {
    return absl::StatusCode::kUnavailable;  // connection exception, server shutting down
  }
  if (sqlstate == "23505") return absl::StatusCode::kAlreadyExists;
  if (absl::StartsWith(sqlstate, "23")) return absl::StatusCode::kFailedPrecondition;
  if (absl::StartsWith(sqlstate, "40")) return absl::StatusCode::kAborted;
  return absl::StatusCode::kInternal;
}

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

}  // namespace

absl::StatusOr<std::unique_ptr<PgConnection>> PgConnection::Connect(
    const std::string& conninfo, absl::Duration connect_timeout) {
  char* parse_error = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &parse_error);
  if (options == nullptr) {
    // libpq's parse errors quote pieces of the string, which may be the password.
    PQfreemem(parse_error);
    return absl::InvalidArgumentError("the PostgreSQL connection string does not parse");
  }
  std::string password, host, port, dbname, user;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const absl::string_view k = o->keyword;
    if (k == "password") password = o->val;
    if (k == "host" || (k == "hostaddr" && host.empty())) host = o->val;
    if (k == "port") port = o->val;
    if (k == "dbname") dbname = o->val;
    if (k == "user") user = o->val;
  }
  PQconninfoFree(options);
  std::string description =
      absl::StrCat(host.empty() ? "(default host)" : host, ":", port.empty() ? "5432" : port, "/",
                   dbname.empty() ? "(default database)" : dbname);
  if (!user.empty()) absl::StrAppend(&description, " as ", user);
  std::unique_ptr<PgConnection> conn(
      new PgConnection(conninfo, connect_timeout, std::move(password), std::move(description)));
  absl::Status opened = conn->Open();
  if (!opened.ok()) return opened;
  return conn;
}

PgConnection::PgConnection(std::string conninfo, absl::Duration connect_timeout,
                           std::string password, std::string description)
    : conninfo_(std::move(conninfo)),
      connect_timeout_(connect_timeout),
      password_(std::move(password)),
      description_(std::move(description)) {}

PgConnection::~PgConnection() { Close(); }

bool PgConnection::ok() const { return conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK; }

void PgConnection::Close() {
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = nullptr;
}

Clock::time_point PgConnection::DeadlineAfter(absl::Duration timeout) const {
  const Clock::time_point t = After(timeout);
  return deadline_.has_value() ? std::min(t, *deadline_) : t;
}

std::string PgConnection::Scrub(std::string text) const {
  if (password_.empty()) return text;
  return absl::StrReplaceAll(text, {{password_, "***"}});
}

absl::Status PgConnection::Reconnect() {
  if (in_transaction_) {
    return absl::FailedPreconditionError(
        "cannot reconnect to PostgreSQL inside a transaction (it would continue on a new "
        "session)");
  }
  Close();
  return Open();
}

absl::Status PgConnection::Open() {
  const Clock::time_point deadline = DeadlineAfter(connect_timeout_);
  conn_ = PQconnectStart(conninfo_.c_str());
  if (conn_ == nullptr)
    return absl::ResourceExhaustedError("libpq could not allocate a connection");
  auto fail = [&](absl::StatusCode code, absl::string_view why) {
    Close();
    return absl::Status(code, absl::StrCat("cannot connect to PostgreSQL at ", description_, ": ",
                                           Scrub(std::string(why))));
  };
  if (PQstatus(conn_) == CONNECTION_BAD) {
    return fail(absl::StatusCode::kUnavailable, FirstLine(PQerrorMessage(conn_)));
  }
  // libpq prints server notices ("relation ... already exists, skipping") to stderr, which
  // would break the structured log lines there; none of them needs an operator.
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
  // libpq's protocol: behave as if the last poll asked to write, then follow its answers.
  PostgresPollingStatusType state = PGRES_POLLING_WRITING;
  while (state != PGRES_POLLING_OK) {
    if (state == PGRES_POLLING_FAILED) {
      return fail(absl::StatusCode::kUnavailable, FirstLine(PQerrorMessage(conn_)));
    }
    const short events = state == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    const int ready = WaitSocket(PQsocket(conn_), events, deadline);
    if (ready == 0) {
      return fail(absl::StatusCode::kDeadlineExceeded,
                  absl::StrCat("no answer within ", absl::FormatDuration(connect_timeout_)));
    }
    if (ready < 0) return fail(absl::StatusCode::kUnavailable, "polling its socket failed");
    state = PQconnectPoll(conn_);
  }
  return absl::OkStatus();
}

absl::Status PgConnection::LostConnection(absl::string_view purpose, absl::string_view what) {
  const std::string why = conn_ != nullptr ? FirstLine(PQerrorMessage(conn_)) : "";
  Close();
  return absl::UnavailableError(absl::StrCat(purpose, ": ", what, " (PostgreSQL at ", description_,
                                             ")", why.empty() ? "" : ": ", Scrub(why)));
}

absl::StatusOr<PgResult> PgConnection::Exec(absl::string_view sql, const PgParams& params,
                                            absl::string_view purpose_arg) {
  const std::string purpose = purpose_arg.empty() ? DefaultPurpose(sql) : std::string(purpose_arg);
  if (!ok()) {
    Close();
    return absl::UnavailableError(
        absl::StrCat(purpose, ": not connected to PostgreSQL at ", description_));
  }
  const Clock::time_point deadline = DeadlineAfter(statement_timeout_);
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p.has_value() ? p->c_str() : nullptr);
  const std::string sql_copy(sql);
  if (PQsendQueryParams(conn_, sql_copy.c_str(), static_cast<int>(values.size()), nullptr,
                        values.data(), nullptr, nullptr, 0) == 0) {
    return LostConnection(purpose, "could not send the statement");
  }
  // Blocking mode flushes what it sent; waiting for the answer is ours, so it has a deadline.
  ResultPtr failure;
  ResultPtr last;
  while (true) {
    while (PQisBusy(conn_)) {
      const int ready = WaitSocket(PQsocket(conn_), POLLIN, deadline);
      if (ready == 0) {
        Close();
        return absl::DeadlineExceededError(absl::StrCat(
            purpose, ": no answer from PostgreSQL at ", description_,
            " in time; the connection was closed and the statement may still take effect"));
      }
      if (ready < 0 || PQconsumeInput(conn_) == 0) {
        return LostConnection(purpose, "lost the connection");
      }
    }
    ResultPtr r(PQgetResult(conn_));
    if (r == nullptr) break;
    const ExecStatusType st = PQresultStatus(r.get());
    if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR) {
      if (failure == nullptr && st != PGRES_NONFATAL_ERROR) failure = std::move(r);
    } else {
      last = std::move(r);
    }
  }
  if (failure != nullptr) {
    const char* state_field = PQresultErrorField(failure.get(), PG_DIAG_SQLSTATE);
    if (state_field == nullptr || PQstatus(conn_) != CONNECTION_OK) {
      // libpq made the error itself: the session broke.
      if (PQstatus(conn_) != CONNECTION_OK) return LostConnection(purpose, "lost the connection");
      return absl::InternalError(
          absl::StrCat(purpose, ": ", Scrub(FirstLine(PQresultErrorMessage(failure.get())))));
    }
    const std::string sqlstate = state_field;
    const absl::StatusCode code = CodeForSqlState(sqlstate);
    std::string message = absl::StrCat(purpose, ": PostgreSQL error ", sqlstate);
    const char* primary = PQresultErrorField(failure.get(), PG_DIAG_MESSAGE_PRIMARY);
    if (primary != nullptr && !PrimaryMessageMayQuoteData(sqlstate)) {
      absl::StrAppend(&message, ": ", Scrub(primary));
    }
    const char* constraint = PQresultErrorField(failure.get(), PG_DIAG_CONSTRAINT_NAME);
    if (constraint != nullptr) absl::StrAppend(&message, " (constraint ", constraint, ")");
    if (code == absl::StatusCode::kUnavailable) Close();  // the server is ending the session
    return absl::Status(code, message);
  }
  PgResult result;
  if (last == nullptr) return result;
  PGresult* r = last.get();
  const int nfields = PQnfields(r);
  const int ntuples = PQntuples(r);
  result.columns.reserve(nfields);
  for (int c = 0; c < nfields; ++c) result.columns.emplace_back(PQfname(r, c));
  result.rows.reserve(ntuples);
  for (int i = 0; i < ntuples; ++i) {
    std::vector<std::optional<std::string>> row;
    row.reserve(nfields);
    for (int c = 0; c < nfields; ++c) {
      if (PQgetisnull(r, i, c)) {
        row.emplace_back(std::nullopt);
      } else {
        row.emplace_back(std::string(PQgetvalue(r, i, c), PQgetlength(r, i, c)));
      }
    }
    result.rows.push_back(std::move(row));
  }
  int64_t affected = 0;
  const char* tuples = PQcmdTuples(r);
  result.affected_rows = tuples != nullptr && *tuples != '\0' && absl::SimpleAtoi(tuples, &affected)
                             ? affected
                             : ntuples;
  return result;
}

absl::Status PgConnection::InTransaction(absl::FunctionRef<absl::Status(PgConnection&)> fn) {
  if (in_transaction_) return absl::FailedPreconditionError("PostgreSQL transactions do not nest");
  absl::StatusOr<PgResult> begin = Exec("BEGIN", {}, "begin a transaction");
  if (!begin.ok()) return begin.status();
  in_transaction_ = true;
  absl::Status status = fn(*this);
  in_transaction_ = false;
  if (status.ok() && ok() && PQtransactionStatus(conn_) == PQTRANS_INERROR) {
    // A statement failed and `fn` went on: COMMIT would quietly roll back and answer OK.
    status = absl::AbortedError("a statement of the transaction failed; it was rolled back");
  }
  if (status.ok()) return Exec("COMMIT", {}, "commit the transaction").status();
  if (ok()) {
    absl::StatusOr<PgResult> rollback = Exec("ROLLBACK", {}, "roll back the transaction");
    // A session whose rollback failed is in no known state: drop it.
    if (!rollback.ok()) Close();
  }
  return status;
}

}  // namespace lora::server::pg
