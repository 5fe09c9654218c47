#include "server/grpc/tls.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lora::server {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

// OpenSSL's default would prompt on the terminal for an encrypted key; refuse instead (gRPC
// cannot use an encrypted key either).
int NoPassphrase(char*, int, int, void*) { return -1; }

// Key bytes should not outlive the check in this process's heap.
struct WipedString {
  std::string value;
  ~WipedString() {
    if (!value.empty()) OPENSSL_cleanse(value.data(), value.size());
  }
};

absl::StatusOr<std::string> ReadFor(const char* flag, const std::string& path) {
  absl::StatusOr<std::string> data = ReadFileToString(path);
  if (!data.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": cannot read ", data.status().message()));
  }
  return data;
}

absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(const char* flag, const std::string& path,
                                                       const std::string& pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<X509Ptr> certs;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    certs.emplace_back(x);
  }
  ERR_clear_error();  // the loop always ends on an error (no more PEM blocks)
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": no PEM certificate in it"));
  }
  return certs;
}

}  // namespace

absl::Status CheckTlsServerFiles(const TlsServerOptions& options) {
  auto cert_pem = ReadFor("--tls-cert", options.cert_file);
  if (!cert_pem.ok()) return cert_pem.status();
  auto certs = ParseCertificates("--tls-cert", options.cert_file, *cert_pem);
  if (!certs.ok()) return certs.status();
  X509* leaf = (*certs)[0].get();
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", options.cert_file, ": the certificate has expired; renew it"));
  }

  WipedString key_pem;
  {
    auto read = ReadFor("--tls-key", options.key_file);
    if (!read.ok()) return read.status();
    key_pem.value = std::move(*read);
  }
  std::unique_ptr<BIO, BioFree> bio(
      BIO_new_mem_buf(key_pem.value.data(), static_cast<int>(key_pem.value.size())));
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  // OpenSSL's error strings do not carry key bytes, but none is passed on: the flag and path
  // are what an operator needs.
  ERR_clear_error();
  if (!key) {
    const bool encrypted = absl::StrContains(key_pem.value, "ENCRYPTED");
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", options.key_file, ": ",
                     encrypted ? "the private key is encrypted; lorad needs an unencrypted PEM key "
                                 "(protect the file with its permissions instead)"
                               : "no PEM private key in it"));
  }
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key ", options.key_file, " is not the private key of the certificate in --tls-cert ",
        options.cert_file, " (mismatched pair)"));
  }

  if (!options.client_ca_file.empty()) {
    auto ca_pem = ReadFor("--tls-client-ca", options.client_ca_file);
    if (!ca_pem.ok()) return ca_pem.status();
    auto cas = ParseCertificates("--tls-client-ca", options.client_ca_file, *ca_pem);
    if (!cas.ok()) return cas.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsServerOptions& options) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: give both (TLS) or neither (plaintext)");
  }
  if (options.cert_file.empty()) {
    if (!options.client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "--tls-client-ca needs --tls-cert and --tls-key: client certificates are only "
          "asked for over TLS");
    }
    return grpc::InsecureServerCredentials();
  }
  if (absl::Status s = CheckTlsServerFiles(options); !s.ok()) return s;

  // The provider re-reads the files on its own thread; a pair it cannot load (say, read
  // between the key's and the certificate's replacement) is skipped and the previous one kept.
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.key_file, options.cert_file, options.client_ca_file,
      std::max(1u, options.refresh_interval_s));
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_identity_key_cert_pairs();
  if (options.client_ca_file.empty()) {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    tls.watch_root_certs();
    // Ask, verify what is presented, accept no certificate: bearer tokens remain the users'
    // credential, and VerifiedPeerIdentity is "" for them.
    tls.set_cert_request_type(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::experimental::TlsServerCredentials(tls);
  if (credentials == nullptr) {
    return absl::InternalError("gRPC refused the TLS server options");
  }
  return credentials;
}

std::string VerifiedPeerIdentity(const grpc::AuthContext& auth) {
  // gRPC names a TLS peer's identity property only when the peer presented a certificate; with
  // REQUEST_CLIENT_CERTIFICATE_AND_VERIFY a presented certificate that does not chain to the
  // client CA fails the handshake, so a call that got here with one has a verified one.
  if (!auth.IsPeerAuthenticated()) return "";
  const auto type = auth.FindPropertyValues(GRPC_TRANSPORT_SECURITY_TYPE_PROPERTY_NAME);
  if (type.empty() || (type[0] != GRPC_TLS_TRANSPORT_SECURITY_TYPE &&
                       type[0] != GRPC_SSL_TRANSPORT_SECURITY_TYPE)) {
    return "";
  }
  for (const auto& cn : auth.FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME)) {
    if (!cn.empty()) return std::string(cn.data(), cn.size());
  }
  for (const auto& san : auth.FindPropertyValues(GRPC_X509_SAN_PROPERTY_NAME)) {
    if (!san.empty()) return std::string(san.data(), san.size());
  }
  return "";
}

std::string VerifiedPeerIdentity(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  return auth ? VerifiedPeerIdentity(*auth) : "";
}

}  // namespace lora::server
