#include "server/grpc/credentials.h"

#include <sys/stat.h>

#include <cstdio>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/sha256.h"
#include "server/grpc/auth.h"

namespace lora::server {
namespace {

// A tokens file is a short list; anything larger is a mistake (or an attack on the reloader).
constexpr size_t kMaxTokensFileBytes = 1 << 20;

std::string Fingerprint(const std::string& digest_hex) {
  return absl::StrCat("token:", digest_hex.substr(0, 12));
}

absl::StatusOr<Role> ParseRole(absl::string_view s) {
  if (s == "user") return Role::kUser;
  if (s == "admin") return Role::kAdmin;
  if (s == "worker") return Role::kWorker;
  return absl::InvalidArgumentError("role: must be user, admin or worker");
}

bool Allowed(Role role, Plane plane) {
  return plane == Plane::kWorker ? role == Role::kWorker : role != Role::kWorker;
}

// mtime and size: a rewrite in place or a rename over the file both change one of them.
std::string FileStamp(const std::string& path) {
  struct stat st = {};
  if (::stat(path.c_str(), &st) != 0) return "";
  return absl::StrCat(st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, ":", st.st_size, ":", st.st_ino);
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kUser:
      return "user";
    case Role::kAdmin:
      return "admin";
    case Role::kWorker:
      return "worker";
  }
  return "user";
}

bool IsValidTenantName(absl::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '-') return false;
  }
  return name.front() != '-' && name.back() != '-';
}

CredentialStore::CredentialStore(const Options& options) : options_(options) {}

CredentialStore::~CredentialStore() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
}

absl::StatusOr<std::unique_ptr<CredentialStore>> CredentialStore::Create(const Options& options) {
  std::unique_ptr<CredentialStore> store(new CredentialStore(options));
  for (const auto& [token, name, principal] :
       {std::tuple{options.user_token, "the client token (--auth-token-file / LORAD_AUTH_TOKEN)",
                   Principal{"default", Role::kAdmin, ""}},
        std::tuple{options.worker_token,
                   "the worker token (--worker-token-file / LORAD_WORKER_TOKEN)",
                   Principal{"default", Role::kWorker, ""}},
        std::tuple{options.local_worker_token, "the local workers' secret",
                   Principal{"local", Role::kWorker, "local"}}}) {
    if (token.empty()) continue;
    if (absl::Status s = CheckServingSecret(token, name); !s.ok()) return s;
    if (absl::Status s = store->AddStatic(token, principal); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
    }
  }
  if (!options.tokens_file.empty()) {
    if (absl::Status s = store->Reload(); !s.ok()) return s;
    store->poller_ = std::thread([s = store.get()] { s->Poll(); });
  }
  return store;
}

absl::Status CredentialStore::AddStatic(const std::string& token, Principal p) {
  const std::string digest = Sha256Hex(token);
  if (p.id.empty()) p.id = Fingerprint(digest);
  absl::MutexLock lock(&mu_);
  if (!static_.emplace(digest, std::move(p)).second) {
    return absl::InvalidArgumentError("the same secret is configured twice");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, Principal>> CredentialStore::ParseTokensFile(
    const std::string& path) {
  struct stat st = {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("--auth-tokens-file ", path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth-tokens-file ", path, ": not a regular file"));
  }
  if (static_cast<size_t>(st.st_size) > kMaxTokensFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat("--auth-tokens-file ", path, ": ", st.st_size,
                                                   " bytes; at most ", kMaxTokensFileBytes));
  }
  auto text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("--auth-tokens-file ", path, ": cannot read"));
  }
  std::map<std::string, Principal> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    // Errors name the line and the field, never the line's text (it holds a secret).
    auto where = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth-tokens-file ", path, ": line ", line_no, ": ", what));
    };
    std::vector<std::string> fields = absl::StrSplit(line, ',');
    if (fields.size() != 3) return where("want token,tenant,role");
    for (auto& f : fields) f = std::string(absl::StripAsciiWhitespace(f));
    if (absl::Status s = CheckServingSecret(fields[0], "token"); !s.ok()) {
      return where(s.message());
    }
    if (!IsValidTenantName(fields[1])) {
      return where("tenant: 1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit");
    }
    auto role = ParseRole(fields[2]);
    if (!role.ok()) return where(role.status().message());
    const std::string digest = Sha256Hex(fields[0]);
    Principal p{fields[1], *role, Fingerprint(digest)};
    if (!out.emplace(digest, std::move(p)).second) return where("token: the same token twice");
  }
  return out;
}

absl::Status CredentialStore::Reload() {
  if (options_.tokens_file.empty()) return absl::OkStatus();
  const std::string stamp = FileStamp(options_.tokens_file);
  auto parsed = ParseTokensFile(options_.tokens_file);
  if (!parsed.ok()) return parsed.status();
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [digest, p] : *parsed) {
      if (static_.count(digest)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--auth-tokens-file ", options_.tokens_file,
                         ": a token is also configured as another secret"));
      }
    }
    file_ = std::move(*parsed);
    file_stamp_ = stamp;
  }
  reloads_.fetch_add(1);
  return absl::OkStatus();
}

void CredentialStore::Poll() {
  const auto interval = absl::ToChronoMilliseconds(options_.poll_interval);
  while (true) {
    {
      std::unique_lock<std::mutex> lock(stop_mu_);
      if (stop_cv_.wait_for(lock, interval, [this] { return stop_; })) return;
    }
    const bool asked = reload_requested_.exchange(false);
    std::string stamp = FileStamp(options_.tokens_file);
    {
      absl::MutexLock lock(&mu_);
      if (!asked && stamp == file_stamp_) continue;
    }
    if (absl::Status s = Reload(); !s.ok()) {
      // Keep serving with the previous set; say why once per change.
      LogWarning(absl::StrCat("credentials not reloaded (previous ones stay): ", s.message()));
      absl::MutexLock lock(&mu_);
      file_stamp_ = stamp;
    }
  }
}

bool CredentialStore::has_user_credentials() const {
  absl::MutexLock lock(&mu_);
  for (const auto* m : {&static_, &file_}) {
    for (const auto& [d, p] : *m) {
      if (p.role != Role::kWorker) return true;
    }
  }
  return !options_.tokens_file.empty();
}

bool CredentialStore::has_worker_credentials() const {
  if (options_.client_certificates_are_workers) return true;
  absl::MutexLock lock(&mu_);
  for (const auto* m : {&static_, &file_}) {
    for (const auto& [d, p] : *m) {
      if (p.role == Role::kWorker && p.id != "local") return true;
    }
  }
  return false;
}

absl::StatusOr<Principal> CredentialStore::AuthenticateToken(absl::string_view token,
                                                             Plane plane) const {
  const std::string digest = Sha256Hex(token);
  absl::MutexLock lock(&mu_);
  const Principal* found = nullptr;
  if (auto it = static_.find(digest); it != static_.end()) found = &it->second;
  if (auto it = file_.find(digest); found == nullptr && it != file_.end()) found = &it->second;
  if (found == nullptr) return absl::UnauthenticatedError("invalid bearer token");
  if (!Allowed(found->role, plane)) {
    return absl::PermissionDeniedError(
        absl::StrCat("a ", RoleName(found->role), " credential cannot call the ",
                     plane == Plane::kWorker ? "worker" : "job", " service"));
  }
  return *found;
}

absl::StatusOr<Principal> CredentialStore::Authenticate(const grpc::ServerContextBase& context,
                                                        Plane plane) const {
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) {
    absl::string_view value(it->second.data(), it->second.size());
    // The scheme name is case-insensitive (RFC 9110, 11.1).
    if (!absl::StartsWithIgnoreCase(value, "bearer ")) {
      return absl::UnauthenticatedError("authorization: want 'Bearer <token>'");
    }
    value.remove_prefix(7);
    return AuthenticateToken(value, plane);
  }
  if (plane == Plane::kWorker && options_.client_certificates_are_workers) {
    // A certificate the TLS layer verified against --tls-client-ca names the worker.
    std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
    if (auth != nullptr && auth->IsPeerAuthenticated()) {
      std::vector<grpc::string_ref> ids = auth->GetPeerIdentity();
      if (!ids.empty()) {
        std::string name(ids.front().data(), ids.front().size());
        return Principal{name, Role::kWorker, absl::StrCat("cert:", name)};
      }
    }
  }
  // Development mode (loopback only; lorad refuses a network listener without a worker
  // credential): nothing configured at all. Once any user credential exists, the worker plane
  // needs one too, or anyone who can reach the port could pose as a worker.
  if (!has_user_credentials()) {
    if (plane == Plane::kUser) return Principal{"default", Role::kAdmin, "anonymous"};
    if (!has_worker_credentials()) return Principal{"anonymous", Role::kWorker, "anonymous"};
  }
  return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
}

}  // namespace lora::server
