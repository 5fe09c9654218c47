#include "server/store/postgres/leader_lease.h"

#include <unistd.h>

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace lora::server::pg {
namespace {

constexpr char kCreateTable[] = R"sql(
CREATE TABLE IF NOT EXISTS lorad_leader (
  name TEXT PRIMARY KEY,
  holder TEXT NOT NULL,
  epoch BIGINT NOT NULL,
  expires_at TIMESTAMPTZ NOT NULL))sql";

// The one statement that decides leadership. The conflicting row is locked before the WHERE is
// judged, so two candidates racing for an expired lease cannot both win. The outer SELECT
// reports the holder when the attempt changed nothing (its snapshot predates the attempt).
constexpr char kTryAcquire[] = R"sql(
WITH attempt AS (
  INSERT INTO lorad_leader AS l (name, holder, epoch, expires_at)
  VALUES ($1, $2, 1, now() + $3::bigint * interval '1 microsecond')
  ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder,
        epoch = l.epoch + 1,
        expires_at = excluded.expires_at
    WHERE l.expires_at <= now() OR l.holder = excluded.holder
  RETURNING holder, epoch, expires_at)
SELECT true, holder, epoch, extract(epoch FROM expires_at - now()) FROM attempt
UNION ALL
SELECT false, holder, epoch, extract(epoch FROM expires_at - now()) FROM lorad_leader
  WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM attempt))sql";

constexpr char kRenew[] = R"sql(
UPDATE lorad_leader SET expires_at = now() + $4::bigint * interval '1 microsecond'
  WHERE name = $1 AND holder = $2 AND epoch = $3::bigint AND expires_at > now()
  RETURNING true, holder, epoch, extract(epoch FROM expires_at - now()))sql";

constexpr char kRelease[] = R"sql(
UPDATE lorad_leader SET expires_at = now()
  WHERE name = $1 AND holder = $2 AND epoch = $3::bigint AND expires_at > now())sql";

constexpr char kCurrent[] = R"sql(
SELECT false, holder, epoch, extract(epoch FROM expires_at - now()) FROM lorad_leader
  WHERE name = $1)sql";

constexpr char kFence[] = "SELECT epoch, holder FROM lorad_leader WHERE name = $1 FOR SHARE";

std::string Micros(absl::Duration d) { return absl::StrCat(absl::ToInt64Microseconds(d)); }

// A row (held_by_caller, holder, epoch, seconds left) of the statements above.
absl::StatusOr<LeaseState> ParseLease(const PgResult& r) {
  LeaseState s;
  if (r.empty()) return s;
  double seconds = 0;
  if (r.rows[0].size() != 4 || !r.at(0, 1) || !r.at(0, 2) || !r.at(0, 3) ||
      !absl::SimpleAtoi(*r.at(0, 2), &s.epoch) || !absl::SimpleAtod(*r.at(0, 3), &seconds)) {
    return absl::InternalError("the lorad_leader row has an unexpected shape");
  }
  s.held_by_caller = r.at(0, 0).value_or("f") == "t";
  s.holder = *r.at(0, 1);
  s.remaining = absl::Seconds(seconds);
  return s;
}

std::string DefaultHolder() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::random_device rd;
  return absl::StrCat(host[0] != '\0' ? host : "unknown-host", "/", ::getpid(), "/",
                      absl::Hex(rd(), absl::kZeroPad8));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LeaderLease>> LeaderLease::Create(std::unique_ptr<PgConnection> conn,
                                                                 std::string name) {
  if (conn == nullptr) return absl::InvalidArgumentError("LeaderLease needs a connection");
  if (name.empty()) return absl::InvalidArgumentError("the leader lease needs a name");
  std::unique_ptr<LeaderLease> lease(new LeaderLease(std::move(conn), std::move(name)));
  LORA_RETURN_IF_ERROR(lease->EnsureConnected());
  absl::StatusOr<PgResult> created =
      lease->conn_->Exec(kCreateTable, {}, "create the lorad_leader table");
  // Two replicas creating the table at once: the loser trips over the winner's catalog row.
  if (!created.ok() && created.status().code() != absl::StatusCode::kAlreadyExists) {
    return created.status();
  }
  return lease;
}

absl::Status LeaderLease::EnsureConnected() {
  if (conn_->ok() || conn_->in_transaction()) return absl::OkStatus();
  return conn_->Reconnect();
}

absl::StatusOr<LeaseState> LeaderLease::TryAcquire(const std::string& holder, absl::Duration ttl) {
  if (holder.empty()) return absl::InvalidArgumentError("a lease holder needs a name");
  if (ttl <= absl::ZeroDuration()) return absl::InvalidArgumentError("the lease ttl must be > 0");
  LORA_RETURN_IF_ERROR(EnsureConnected());
  LORA_ASSIGN_OR_RETURN(PgResult r, conn_->Exec(kTryAcquire, {name_, holder, Micros(ttl)},
                                                "acquire the leader lease"));
  return ParseLease(r);
}

absl::StatusOr<LeaseState> LeaderLease::Renew(const std::string& holder, int64_t epoch,
                                              absl::Duration ttl) {
  if (ttl <= absl::ZeroDuration()) return absl::InvalidArgumentError("the lease ttl must be > 0");
  LORA_RETURN_IF_ERROR(EnsureConnected());
  LORA_ASSIGN_OR_RETURN(PgResult r,
                        conn_->Exec(kRenew, {name_, holder, absl::StrCat(epoch), Micros(ttl)},
                                    "renew the leader lease"));
  if (r.empty()) {
    std::string now_held;
    absl::StatusOr<LeaseState> current = Current();
    if (current.ok() && current->epoch != 0) {
      now_held = absl::StrCat(" (it is at epoch ", current->epoch, ", held by ", current->holder,
                              current->remaining > absl::ZeroDuration() ? "" : ", expired", ")");
    }
    return absl::FailedPreconditionError(absl::StrCat("the leader lease '", name_,
                                                      "' is no longer held by ", holder,
                                                      " at epoch ", epoch, now_held));
  }
  return ParseLease(r);
}

absl::Status LeaderLease::Release(const std::string& holder, int64_t epoch) {
  LORA_RETURN_IF_ERROR(EnsureConnected());
  return conn_->Exec(kRelease, {name_, holder, absl::StrCat(epoch)}, "release the leader lease")
      .status();
}

absl::StatusOr<LeaseState> LeaderLease::Current() {
  LORA_RETURN_IF_ERROR(EnsureConnected());
  LORA_ASSIGN_OR_RETURN(PgResult r, conn_->Exec(kCurrent, {name_}, "read the leader lease"));
  return ParseLease(r);
}

absl::Status CheckLeaderFence(PgConnection& txn, const std::string& lease_name, int64_t epoch) {
  // Outside a transaction the row lock would be dropped before the caller's writes.
  if (!txn.in_transaction()) {
    return absl::FailedPreconditionError("the leader fence is only checked inside a transaction");
  }
  LORA_ASSIGN_OR_RETURN(PgResult r, txn.Exec(kFence, {lease_name}, "check the leader fence"));
  int64_t current = 0;
  if (r.empty() || !r.at(0, 0) || !absl::SimpleAtoi(*r.at(0, 0), &current)) {
    return absl::FailedPreconditionError(absl::StrCat("fenced: the leader lease '", lease_name,
                                                      "' does not exist, so epoch ", epoch,
                                                      " is not current"));
  }
  if (current != epoch) {
    return absl::FailedPreconditionError(
        absl::StrCat("fenced: epoch ", epoch, " of the leader lease '", lease_name,
                     "' is no longer current (it is at epoch ", current, ", held by ",
                     r.at(0, 1).value_or(""), ")"));
  }
  return absl::OkStatus();
}

absl::Status LeaderLease::RunFenced(int64_t epoch,
                                    absl::FunctionRef<absl::Status(PgConnection&)> fn) {
  LORA_RETURN_IF_ERROR(EnsureConnected());
  return conn_->InTransaction([&](PgConnection& txn) -> absl::Status {
    LORA_RETURN_IF_ERROR(CheckFence(txn, epoch));
    return fn(txn);
  });
}

absl::StatusOr<std::unique_ptr<LeaderElector>> LeaderElector::Create(Options options) {
  if (options.conninfo.empty()) {
    return absl::InvalidArgumentError("the leader elector needs a PostgreSQL conninfo");
  }
  if (options.ttl < absl::Milliseconds(100)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the leader lease ttl must be at least 100ms, not ", absl::FormatDuration(options.ttl)));
  }
  if (options.holder.empty()) options.holder = DefaultHolder();
  LORA_ASSIGN_OR_RETURN(auto conn,
                        PgConnection::Connect(options.conninfo, options.connect_timeout));
  LORA_ASSIGN_OR_RETURN(auto lease, LeaderLease::Create(std::move(conn), options.lease_name));
  std::unique_ptr<LeaderElector> elector(new LeaderElector(std::move(options), std::move(lease)));
  elector->thread_ = std::thread([e = elector.get()] { e->Run(); });
  return elector;
}

LeaderElector::LeaderElector(Options options, std::unique_ptr<LeaderLease> lease)
    : options_(std::move(options)),
      interval_(absl::ToChronoNanoseconds(options_.ttl / 3)),
      step_down_after_(absl::ToChronoNanoseconds(options_.ttl * 9 / 10)),
      lease_(std::move(lease)) {}

LeaderElector::~LeaderElector() { Stop(); }

void LeaderElector::StepDown(const std::string& why) {
  const int64_t epoch = epoch_.exchange(0);
  if (epoch == 0) return;
  LogWarning(absl::StrCat("leader election: ", options_.holder, " steps down from epoch ", epoch,
                          " of lease '", options_.lease_name, "': ", why));
  if (options_.on_lost) options_.on_lost();
}

void LeaderElector::Run() {
  Clock::time_point next_attempt = Clock::now();
  Clock::time_point step_down_at{};  // while leading
  absl::Status last_error;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      Clock::time_point wake = next_attempt;
      if (is_leader()) wake = std::min(wake, step_down_at);
      const auto wait = wake - Clock::now();
      if (wait > Clock::duration::zero()) {
        mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::FromChrono(wait));
      }
      if (stopping_) return;
    }
    const Clock::time_point now = Clock::now();
    if (is_leader() && now >= step_down_at) {
      StepDown(absl::StrCat("no successful renewal for ",
                            absl::FormatDuration(absl::FromChrono(step_down_after_)),
                            " by its own clock (last error: ", last_error.ToString(), ")"));
      continue;
    }
    if (now < next_attempt) continue;
    const Clock::time_point started = now;
    next_attempt = started + interval_;
    if (is_leader()) {
      // The renewal may not outlive the leadership it tries to extend.
      lease_->connection().set_deadline(step_down_at);
      absl::StatusOr<LeaseState> renewed =
          lease_->Renew(options_.holder, epoch_.load(), options_.ttl);
      if (renewed.ok()) {
        step_down_at = started + step_down_after_;
      } else if (renewed.status().code() == absl::StatusCode::kFailedPrecondition) {
        StepDown(std::string(renewed.status().message()));
      } else {
        last_error = renewed.status();
      }
      continue;
    }
    // A campaign that takes longer than the interval is stale: the next one starts afresh.
    lease_->connection().set_deadline(started + interval_);
    absl::StatusOr<LeaseState> acquired = lease_->TryAcquire(options_.holder, options_.ttl);
    if (!acquired.ok()) {
      last_error = acquired.status();
      continue;
    }
    {
      absl::MutexLock lock(&seen_mu_);
      leader_seen_ = acquired->remaining > absl::ZeroDuration() ? acquired->holder : "";
    }
    // An answer that came back later than the step-down time would be a lease already lost.
    if (!acquired->held_by_caller || Clock::now() >= started + step_down_after_) continue;
    step_down_at = started + step_down_after_;
    last_error = absl::OkStatus();
    epoch_.store(acquired->epoch);
    LogInfo(absl::StrCat("leader election: ", options_.holder, " leads lease '",
                         options_.lease_name, "' at epoch ", acquired->epoch));
    if (options_.on_elected) options_.on_elected(acquired->epoch);
  }
}

void LeaderElector::Halt(bool crash) {
  if (halted_) return;
  halted_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (crash) {
    epoch_.store(0);
    lease_.reset();  // the session ends as the process's would
    return;
  }
  const int64_t epoch = epoch_.load();
  if (epoch == 0) return;
  // Stop acting as leader before anyone else can start.
  StepDown("stopping");
  lease_->connection().set_deadline(Clock::now() + interval_);
  absl::Status released = lease_->Release(options_.holder, epoch);
  if (!released.ok()) {
    LogWarning(absl::StrCat("leader election: could not release lease '", options_.lease_name,
                            "' (it expires by itself): ", released.ToString()));
  }
}

void LeaderElector::Stop() { Halt(/*crash=*/false); }

std::string LeaderElector::leader() const {
  absl::MutexLock lock(&seen_mu_);
  return leader_seen_;
}

void LeaderElector::CrashForTesting() { Halt(/*crash=*/true); }

}  // namespace lora::server::pg
