// Leader election for lorad replicas sharing one PostgreSQL database: a lease row that one
// replica holds at a time, and fencing that refuses a deposed leader's writes.
//
//   // Each replica:
//   LORA_ASSIGN_OR_RETURN(auto elector, LeaderElector::Create({
//       .conninfo = conninfo,
//       .ttl = absl::Seconds(10),
//       .on_elected = [&](int64_t epoch) { manager.StartLeading(epoch); },
//       .on_lost = [&] { manager.StopLeading(); }}));
//   ...
//   elector->Stop();  // hands over at once if it leads
//
//   // The leader's writes, on its own connection (not the elector's):
//   LORA_ASSIGN_OR_RETURN(auto lease, LeaderLease::Create(std::move(conn)));
//   LORA_RETURN_IF_ERROR(lease->RunFenced(epoch, [&](PgConnection& txn) -> absl::Status {
//     return txn.Exec("UPDATE jobs SET ... WHERE id = $1", {id}).status();
//   }));
//
// Invariants:
//   - Expiry is judged by the database's clock (now()) alone, so clock skew between replicas
//     does not matter; only the replicas' clock RATE matters, which is why a leader steps down
//     by its own monotonic clock a little before `ttl` has passed since the start of its last
//     successful renewal (the database's expiry is at least `ttl` after that start).
//   - Every acquisition (TryAcquire) starts a new term with the next epoch, even by the holder
//     of the previous one: epochs are the fencing tokens, strictly increasing across terms.
//     Only Renew keeps an epoch, and only while the term has not expired.
//   - The database must not lose acknowledged commits (synchronous_commit on, the default): one
//     that forgets an acquisition after a crash hands out the same epoch twice. (The tests run
//     PostgreSQL with fsync off, which a killed server survives, but not with
//     synchronous_commit off, which it does not.)
//   - RunFenced locks the lease row FOR SHARE in its transaction, so a takeover waits for that
//     transaction to end: every write committed under epoch N precedes the start of epoch N+1,
//     and a write under an older epoch is refused (FAILED_PRECONDITION) and not made.
#ifndef LORA_SERVER_STORE_POSTGRES_LEADER_LEASE_H_
#define LORA_SERVER_STORE_POSTGRES_LEADER_LEASE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/store/postgres/pg_connection.h"

namespace lora::server::pg {

// The lease as one statement saw it.
struct LeaseState {
  bool held_by_caller = false;  // the caller acquired or renewed it
  std::string holder;           // current holder ("" when no lease row exists yet)
  int64_t epoch = 0;            // current epoch (0 when no lease row exists yet)
  absl::Duration remaining;     // until expiry, by the database's clock (<= 0: expired)
};

// Inside a transaction of `txn`: locks the lease row `lease_name` FOR SHARE until the transaction
// ends and checks that `epoch` is the current one; FAILED_PRECONDITION naming both epochs
// otherwise. What every write of a replicated store runs first (PgJobStore).
absl::Status CheckLeaderFence(PgConnection& txn, const std::string& lease_name, int64_t epoch);

// The lease row `name` in table lorad_leader, operated on through one connection. Thread-
// compatible: give each thread its own (the elector's statements must never queue behind an
// application's transaction, nor the other way round).
class LeaderLease {
 public:
  // Creates the lorad_leader table if missing. The lease reconnects `conn` before a statement
  // when it was lost (never inside a transaction).
  static absl::StatusOr<std::unique_ptr<LeaderLease>> Create(std::unique_ptr<PgConnection> conn,
                                                             std::string name = "lorad");

  // One atomic statement: takes the lease if it expired or is already ours, always under a new
  // epoch (a new term: whatever the previous term of the same holder still had in flight is
  // fenced off too); Renew, not this, extends a term. held_by_caller false: someone else holds
  // it.
  absl::StatusOr<LeaseState> TryAcquire(const std::string& holder, absl::Duration ttl);
  // Extends the lease only while `holder` still holds `epoch` unexpired; FAILED_PRECONDITION
  // when it does not (it was lost: stop leading).
  absl::StatusOr<LeaseState> Renew(const std::string& holder, int64_t epoch, absl::Duration ttl);
  // Graceful handover: expires the lease now if `holder` holds `epoch`, so the next candidate
  // need not wait out the ttl. OK when there was nothing to release.
  absl::Status Release(const std::string& holder, int64_t epoch);
  // Who holds the lease now (held_by_caller is always false).
  absl::StatusOr<LeaseState> Current();

  // CheckLeaderFence on this lease's row.
  absl::Status CheckFence(PgConnection& txn, int64_t epoch) const {
    return CheckLeaderFence(txn, name_, epoch);
  }
  // Runs `fn` in a transaction on this lease's connection after CheckFence(epoch); commits only
  // when both succeed.
  absl::Status RunFenced(int64_t epoch, absl::FunctionRef<absl::Status(PgConnection&)> fn);

  const std::string& name() const { return name_; }
  PgConnection& connection() { return *conn_; }

 private:
  LeaderLease(std::unique_ptr<PgConnection> conn, std::string name)
      : conn_(std::move(conn)), name_(std::move(name)) {}
  absl::Status EnsureConnected();

  std::unique_ptr<PgConnection> conn_;
  const std::string name_;
};

// Campaigns for the lease on its own thread and tells the replica when it leads.
//
// Every campaign interval (ttl / 3) a follower tries to acquire the lease and a leader renews
// it. A leader steps down (on_lost) when its renewal failed for good (someone else holds the
// lease) or, by its own monotonic clock, when 9/10 of the ttl have passed since its last
// successful renewal started without another success: a leader cut off from the database stops
// before the lease can expire in the database and anyone else can take over. Statements of a
// leader are bounded by that same deadline, so a hung connection cannot keep it leading.
//
// Callbacks run on the elector's thread, one at a time, alternating on_elected / on_lost; they
// must return promptly and must not call Stop().
class LeaderElector {
 public:
  struct Options {
    std::string conninfo;                    // libpq conninfo or URI
    std::string lease_name = "lorad";        // the lease row (one per group of replicas)
    std::string holder;                      // unique per replica ("" = host/pid/random)
    absl::Duration ttl = absl::Seconds(10);  // at least 100 ms
    // The first connect; reconnects are bounded by the campaign's deadlines instead.
    absl::Duration connect_timeout = absl::Seconds(5);
    std::function<void(int64_t epoch)> on_elected;
    std::function<void()> on_lost;
  };

  // Connects (the database must be reachable now: a wrong conninfo fails here, not silently
  // later), creates the table if missing and starts campaigning.
  static absl::StatusOr<std::unique_ptr<LeaderElector>> Create(Options options);
  ~LeaderElector();  // Stop()
  LeaderElector(const LeaderElector&) = delete;
  LeaderElector& operator=(const LeaderElector&) = delete;

  // Ends campaigning; a leader calls on_lost and then releases the lease (handover at once).
  // Idempotent.
  void Stop();
  // For tests: ends the thread and drops the connection as a crash would, with no on_lost and
  // no release (the lease stays until it expires in the database).
  void CrashForTesting();

  bool is_leader() const { return epoch_.load() != 0; }
  // The holder of an unexpired lease at the last campaign ("" = none seen yet, or it had
  // expired): where a follower sends writers and workers.
  std::string leader() const ABSL_LOCKS_EXCLUDED(seen_mu_);
  int64_t epoch() const { return epoch_.load(); }  // 0 when not leading
  const std::string& holder() const { return options_.holder; }
  absl::Duration campaign_interval() const { return options_.ttl / 3; }

 private:
  using Clock = PgConnection::Clock;
  LeaderElector(Options options, std::unique_ptr<LeaderLease> lease);
  void Run();
  void StepDown(const std::string& why);
  void Halt(bool crash);

  const Options options_;
  const Clock::duration interval_;
  const Clock::duration step_down_after_;
  std::unique_ptr<LeaderLease> lease_;  // only the elector's thread uses it while it runs
  std::atomic<int64_t> epoch_{0};
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool halted_ = false;  // Stop/Crash ran (callers' thread only)
  mutable absl::Mutex seen_mu_;
  std::string leader_seen_ ABSL_GUARDED_BY(seen_mu_);
  std::thread thread_;
};

}  // namespace lora::server::pg

#endif  // LORA_SERVER_STORE_POSTGRES_LEADER_LEASE_H_
