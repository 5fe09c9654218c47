#include "server/grpc/auth.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lora::server {
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

}  // namespace lora::server
