#include "server/grpc/auth.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lora::server {
namespace {

// Constant-time comparison so the token cannot be guessed byte by byte from timings.
bool SameSecret(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::Status CheckServingSecret(const std::string& secret, const std::string& name) {
  if (secret.empty()) return absl::OkStatus();
  // Values from examples, docs and the shipped manifests: a deployment still holding one is
  // not secured, whatever it believes.
  for (const char* placeholder : {"change-me", "change-me-too", "changeme", "changeit", "secret",
                                  "password", "token", "admin", "test", "example"}) {
    if (absl::EqualsIgnoreCase(secret, placeholder)) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " is a placeholder value; generate a real secret (e.g. openssl rand -hex 32)"));
    }
  }
  if (secret.size() < kMinSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " is ", secret.size(), " bytes; a secret needs at least ", kMinSecretBytes));
  }
  return absl::OkStatus();
}

absl::Status CheckBearerToken(const grpc::CallbackServerContext* context,
                              const std::string& expected) {
  if (expected.empty()) return absl::OkStatus();
  const auto& md = context->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end())
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  std::string value(it->second.data(), it->second.size());
  // The scheme name is case-insensitive (RFC 9110, 11.1): "bearer" and "BEARER" are Bearer.
  constexpr absl::string_view kScheme = "bearer ";
  if (!absl::StartsWithIgnoreCase(value, kScheme) ||
      !SameSecret(value.substr(kScheme.size()), expected)) {
    return absl::UnauthenticatedError("invalid bearer token");
  }
  return absl::OkStatus();
}

}  // namespace lora::server
