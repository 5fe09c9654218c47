// Throwaway certificates for TLS tests and benchmarks, made with the openssl CLI at run time
// (never checked in: nothing in the repository is a key anyone could reuse). EC P-256 keys,
// valid for two days, each step bounded in time.
//
//   TestPki pki(dir.Join("pki"));
//   auto ca = pki.MakeCa("ca");                                   // ca.crt, ca.key
//   auto server = pki.MakeLeaf(*ca, "server", "lorad", /*server=*/true);  // SAN 127.0.0.1
//   auto worker = pki.MakeLeaf(*ca, "worker", "worker-7", /*server=*/false);
#ifndef LORA_TESTS_INTEGRATION_TEST_PKI_H_
#define LORA_TESTS_INTEGRATION_TEST_PKI_H_

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "tests/integration/subprocess.h"

namespace lora::testing {

struct CertFiles {
  std::string cert, key;
};

class TestPki {
 public:
  explicit TestPki(std::string dir) : dir_(std::move(dir)) {
    std::filesystem::create_directories(dir_);
  }

  const std::string& dir() const { return dir_; }
  // The last openssl failure (command output), for test messages.
  const std::string& error() const { return error_; }

  std::optional<CertFiles> MakeCa(const std::string& name) {
    const CertFiles out{Path(name + ".crt"), Path(name + ".key")};
    Write(name + ".cnf", "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=" + name +
                             " test CA\n[ext]\nbasicConstraints=critical,CA:TRUE\n"
                             "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n");
    if (!Run({"req", "-x509", "-config", Path(name + ".cnf"), "-extensions", "ext", "-newkey", "ec",
              "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-keyout",
              out.key, "-out", out.cert})) {
      return std::nullopt;
    }
    return out;
  }

  // A certificate for `common_name` signed by `ca`: for a server (SAN IP:127.0.0.1 and
  // DNS:localhost, serverAuth) or a client (clientAuth).
  std::optional<CertFiles> MakeLeaf(const CertFiles& ca, const std::string& name,
                                    const std::string& common_name, bool server) {
    const CertFiles out{Path(name + ".crt"), Path(name + ".key")};
    Write(name + ".cnf", "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=" + common_name + "\n");
    Write(name + ".ext",
          std::string("[ext]\nbasicConstraints=CA:FALSE\n"
                      "keyUsage=critical,digitalSignature,keyEncipherment\n"
                      "authorityKeyIdentifier=keyid\n") +
              (server ? "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                      : "extendedKeyUsage=clientAuth\n"));
    if (!Run({"req", "-new", "-config", Path(name + ".cnf"), "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", out.key, "-out",
              Path(name + ".csr")}) ||
        !Run({"x509", "-req", "-in", Path(name + ".csr"), "-CA", ca.cert, "-CAkey", ca.key,
              "-set_serial", std::to_string(++serial_), "-days", "2", "-extfile",
              Path(name + ".ext"), "-extensions", "ext", "-out", out.cert})) {
      return std::nullopt;
    }
    return out;
  }

 private:
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  void Write(const std::string& name, const std::string& text) const {
    std::ofstream(Path(name)) << text;
  }
  bool Run(std::vector<std::string> args) {
    args.insert(args.begin(), "/usr/bin/openssl");
    ProcessResult r = RunProcess(args, 30);
    if (r.exit_code != 0) {
      error_ = "openssl " + args[1] + " exited " + std::to_string(r.exit_code) + ": " + r.err;
      return false;
    }
    return true;
  }

  std::string dir_;
  std::string error_;
  int serial_ = 1000;
};

}  // namespace lora::testing

#endif  // LORA_TESTS_INTEGRATION_TEST_PKI_H_
