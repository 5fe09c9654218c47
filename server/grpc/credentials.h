// Who is calling: bearer tokens (a Kubernetes-style static token file, reloaded when it changes)
// and verified client certificates, mapped to a tenant and a role.
//
//   // /etc/lorad/tokens.csv, one credential per line ('#' comments, blank lines ignored):
//   //   3f9c...e1,team-a,user
//   //   77ab...09,ops,admin
//   //   c0de...42,gpu-pool,worker
//   CredentialStore::Options o;
//   o.tokens_file = "/etc/lorad/tokens.csv";
//   LORA_ASSIGN_OR_RETURN(auto creds, CredentialStore::Create(o));
//   LORA_ASSIGN_OR_RETURN(Principal p, creds->Authenticate(*context, Plane::kUser));
//   if (!p.SeesTenant(job.tenant())) return NotFound(...);
//
// Invariants:
// - Token values never leave this class: not in errors, logs or Principal (a Principal carries
//   a short SHA-256 fingerprint to tell credentials apart).
// - Lookup is by the token's SHA-256 digest, so no comparison leaks the token byte by byte.
// - A reload that fails (unreadable file, bad line) keeps the previous credentials and reports
//   why (line number and field, never the value); the new set replaces the old atomically.
// - The user plane accepts user and admin; the worker plane accepts worker credentials and
//   client certificates verified against lorad's client CA. Any other role is
//   PERMISSION_DENIED, an unknown or missing credential UNAUTHENTICATED.
// - With no credential configured at all (development on loopback), every caller of the user
//   plane is an admin of tenant "default" and the worker plane is open. As soon as any user or
//   worker credential exists, the worker plane needs a worker credential: lorad's own local
//   workers present their per-process secret, others a worker token or client certificate.
#ifndef LORA_SERVER_GRPC_CREDENTIALS_H_
#define LORA_SERVER_GRPC_CREDENTIALS_H_

#include <grpcpp/server_context.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace lora::server {

enum class Role { kUser, kAdmin, kWorker };
enum class Plane { kUser, kWorker };

struct Principal {
  std::string tenant;  // for workers: the credential's name (e.g. the pool)
  Role role = Role::kUser;
  // Tells credentials apart without revealing them: "token:<12 hex of sha256>",
  // "cert:<common name>", "local", or "anonymous".
  std::string id;

  bool admin() const { return role == Role::kAdmin; }
  // Whether this caller may see a job of `job_tenant` (its own tenant, or any as admin).
  bool SeesTenant(const std::string& job_tenant) const { return admin() || job_tenant == tenant; }
};

absl::string_view RoleName(Role role);

// Tenant and worker names: 1-63 of [a-z0-9-], starting and ending alphanumeric (a DNS label,
// so they can name Kubernetes objects and Prometheus label values).
bool IsValidTenantName(absl::string_view name);

class CredentialStore {
 public:
  struct Options {
    // token,tenant,role lines; empty = none. Reloaded when its mtime or size changes.
    std::string tokens_file;
    // Single-secret shorthands (--auth-token-file, --worker-token-file): tenant "default",
    // roles admin and worker.
    std::string user_token;
    std::string worker_token;
    // lorad's own local workers (generated per process; role worker, id "local").
    std::string local_worker_token;
    // Certificates verified by the TLS layer are workers when this is set (--tls-client-ca).
    bool client_certificates_are_workers = false;
    absl::Duration poll_interval = absl::Seconds(1);
  };

  static absl::StatusOr<std::unique_ptr<CredentialStore>> Create(const Options& options);
  ~CredentialStore();
  CredentialStore(const CredentialStore&) = delete;
  CredentialStore& operator=(const CredentialStore&) = delete;

  // The caller of an RPC on `plane`, from its "authorization: Bearer" metadata (scheme in any
  // case) or its verified client certificate.
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& context, Plane plane) const;
  // Same, for a bare token (tests, tools).
  absl::StatusOr<Principal> AuthenticateToken(absl::string_view token, Plane plane) const;

  // Re-reads the tokens file now (SIGHUP); on failure the previous credentials stay.
  absl::Status Reload();
  // Async-signal-safe: asks the poller to reload at its next tick.
  void RequestReload() { reload_requested_.store(true); }

  bool has_user_credentials() const;
  bool has_worker_credentials() const;  // beyond the local workers' secret
  int64_t reloads() const { return reloads_.load(); }

 private:
  explicit CredentialStore(const Options& options);
  static absl::StatusOr<std::map<std::string, Principal>> ParseTokensFile(const std::string& path);
  absl::Status AddStatic(const std::string& token, Principal p);
  void Poll();

  const Options options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Principal> static_ ABSL_GUARDED_BY(mu_);  // by sha256 hex
  std::map<std::string, Principal> file_ ABSL_GUARDED_BY(mu_);
  std::string file_stamp_ ABSL_GUARDED_BY(mu_);  // mtime and size last loaded
  std::atomic<bool> reload_requested_{false};
  std::atomic<int64_t> reloads_{0};
  // The poller's stop signal (std primitives: ThreadSanitizer sees them natively).
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread poller_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_CREDENTIALS_H_
