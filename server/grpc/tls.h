// TLS for lorad's gRPC port. The certificate and key are read from files and re-read while
// serving, so a renewed certificate (cert-manager, a Kubernetes Secret volume, a cron job)
// reaches new connections without a restart; connections already open keep the certificate
// they were made with.
//
// With a client CA, lorad asks every peer for a client certificate, verifies one that is
// presented against that CA (a certificate from another CA ends the handshake), and accepts
// peers that present none: users authenticate with bearer tokens, workers may authenticate
// with a certificate. The certificate a peer proved is read with VerifiedPeerIdentity.
#ifndef LORA_SERVER_GRPC_TLS_H_
#define LORA_SERVER_GRPC_TLS_H_

#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lora::server {

// How often the files are checked for a new certificate/key/CA. A rotated pair is served to
// new connections at most this long after it is on disk.
inline constexpr unsigned kTlsRefreshIntervalSeconds = 5;

struct TlsServerOptions {
  std::string cert_file;       // PEM, the server certificate first, then its intermediates
  std::string key_file;        // PEM private key of that certificate (not encrypted)
  std::string client_ca_file;  // PEM CA certificate(s) client certificates must chain to
  unsigned refresh_interval_s = kTlsRefreshIntervalSeconds;
};

// Reads and checks the files lorad will serve with: each readable and PEM, at least one
// certificate in cert_file and client_ca_file, an unencrypted key that belongs to the first
// certificate of cert_file, that certificate not expired. Errors name the flag (--tls-cert,
// --tls-key, --tls-client-ca) and the path, and never quote file contents.
absl::Status CheckTlsServerFiles(const TlsServerOptions& options);

// Insecure credentials when cert_file and key_file are both empty; otherwise
// CheckTlsServerFiles, then TLS credentials that reload the files every refresh_interval_s
// (mTLS as described above when client_ca_file is set). INVALID_ARGUMENT when only one of
// cert_file/key_file is set, or client_ca_file is set without them.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsServerOptions& options);

// The identity of the client certificate this call's peer presented and gRPC verified, or ""
// when there is none (a plaintext connection, TLS without a client certificate, or a server
// without a client CA, which never asks for one). The identity is the certificate's subject
// common name when it has a non-empty one, otherwise its first subject alternative name (DNS,
// URI, email or IP, as gRPC lists them). Only meaningful on a server whose credentials came
// from MakeServerCredentials: that is what guarantees a presented certificate was verified
// against the client CA before any call reached the service.
std::string VerifiedPeerIdentity(const grpc::AuthContext& auth);
std::string VerifiedPeerIdentity(const grpc::ServerContextBase& context);

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_TLS_H_
