// What counts as a serving secret. Secrets reach lorad from files or the environment, never its
// command line (visible in ps), and known placeholders or short values are refused at start.
// Callers are authenticated by CredentialStore (credentials.h).
#ifndef LORA_SERVER_GRPC_AUTH_H_
#define LORA_SERVER_GRPC_AUTH_H_

#include <string>

#include "absl/status/status.h"

namespace lora::server {

inline constexpr size_t kMinSecretBytes = 16;

// OK for an empty secret (no check) or a real one; INVALID_ARGUMENT naming `name` for a known
// placeholder ("change-me", ...) or one shorter than kMinSecretBytes. Never echoes the value.
absl::Status CheckServingSecret(const std::string& secret, const std::string& name);

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_AUTH_H_
