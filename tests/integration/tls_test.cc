// lorad over TLS, as real processes on 127.0.0.1 with certificates made by the openssl CLI at
// test time: who gets through (right CA, plaintext, another CA, client certificates), the
// verified identity of a client certificate, certificate rotation without a restart, and the
// start-up errors for bad files (naming the flag, never the key).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lora/v1/job_service.grpc.pb.h"
#include "server/grpc/tls.h"
#include "tests/integration/lorad_harness.h"
#include "tests/integration/subprocess.h"
#include "tests/integration/test_pki.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using testing::CertFiles;
using ::testing::HasSubstr;
using testing::Lorad;
using ::testing::Not;
using testing::ReadFile;
using testing::TinyTrainSpec;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// What a client trusts and presents (file paths; ca empty = plaintext).
struct ClientTls {
  std::string ca, cert, key;
};

// One GetJob on a fresh connection (a channel of its own with a local subchannel pool, so no
// earlier handshake is reused); `name_out` gets the returned job's name.
grpc::Status CallGetJob(const std::string& address, const ClientTls& tls,
                        std::string* name_out = nullptr) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!tls.ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ReadFile(tls.ca);
    if (!tls.cert.empty()) {
      ssl.pem_cert_chain = ReadFile(tls.cert);
      ssl.pem_private_key = ReadFile(tls.key);
    }
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = lora::v1::JobService::NewStub(grpc::CreateCustomChannel(address, credentials, args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  lora::v1::GetJobRequest request;
  request.set_name("jobs/no-such-job");
  lora::v1::Job job;
  grpc::Status status = stub->GetJob(&ctx, request, &job);
  if (name_out != nullptr) *name_out = job.name();
  return status;
}

// The call reached the service (any answer from it), i.e. the handshake succeeded.
bool Reached(const grpc::Status& s) {
  return s.error_code() != grpc::StatusCode::UNAVAILABLE &&
         s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED;
}

// The base64 body lines of a PEM key: none of them may appear in anything lorad prints.
std::vector<std::string> KeyLines(const std::string& key_file) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(ReadFile(key_file), '\n')) {
    if (line.size() >= 16 && !absl::StartsWith(line, "-----")) lines.emplace_back(line);
  }
  return lines;
}

void ExpectNoKeyMaterial(const std::string& text, const std::vector<std::string>& key_files) {
  EXPECT_THAT(text, Not(HasSubstr("PRIVATE KEY")));
  for (const auto& file : key_files) {
    const auto lines = KeyLines(file);
    ASSERT_FALSE(lines.empty()) << file;
    for (const auto& line : lines) EXPECT_THAT(text, Not(HasSubstr(line))) << file;
  }
}

bool WaitForFileContaining(const std::string& path, const std::string& needle, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (Clock::now() < deadline) {
    if (absl::StrContains(ReadFile(path), needle)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

void ReplaceFile(const std::string& from, const std::string& to) {
  fs::copy_file(from, to + ".new", fs::copy_options::overwrite_existing);
  fs::rename(to + ".new", to);
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pki_ = std::make_unique<testing::TestPki>(dir_.Join("pki"));
    auto ca = pki_->MakeCa("ca");
    auto other_ca = pki_->MakeCa("other-ca");
    ASSERT_TRUE(ca && other_ca) << pki_->error();
    ca_ = *ca;
    other_ca_ = *other_ca;
    auto server = pki_->MakeLeaf(ca_, "server", "lorad", true);
    auto worker = pki_->MakeLeaf(ca_, "worker", "worker-7", false);
    auto stranger = pki_->MakeLeaf(other_ca_, "stranger", "worker-7", false);
    ASSERT_TRUE(server && worker && stranger) << pki_->error();
    server_ = *server;
    worker_ = *worker;
    stranger_ = *stranger;
  }

  std::vector<std::string> TlsArgs(bool client_ca) const {
    std::vector<std::string> args = {"--tls-cert", server_.cert, "--tls-key", server_.key};
    if (client_ca) args.insert(args.end(), {"--tls-client-ca", ca_.cert});
    return args;
  }

  // lorad run to completion (for configurations it must refuse).
  testing::ProcessResult RunLorad(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {testing::BinaryPath("server/lorad"),
                                     "--data-dir",
                                     dir_.Join("refused"),
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--metrics-listen",
                                     ""};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return testing::RunProcess(argv, 30);
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::TestPki> pki_;
  CertFiles ca_, other_ca_, server_, worker_, stranger_;
};

TEST_F(TlsTest, ClientTrustingTheCaCreatesAndGetsJobs) {
  Lorad lorad({dir_.Join("lorad"), 0, 0, TlsArgs(false)});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  ClientOptions o;
  o.address = lorad.address();
  o.tls_ca = ca_.cert;
  auto client = LoraClient::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto job = (*client)->CreateJob(TinyTrainSpec(2), "tls-1");
  ASSERT_TRUE(job.ok()) << job.status();
  auto got = (*client)->GetJob(job->name());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->id(), job->id());
  EXPECT_THAT(lorad.log(), HasSubstr("with TLS"));
}

TEST_F(TlsTest, PlaintextAndOtherCaClientsAreRefused) {
  Lorad lorad({dir_.Join("lorad"), 0, 0, TlsArgs(false)});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  EXPECT_TRUE(Reached(CallGetJob(lorad.address(), {ca_.cert})));
  const grpc::Status plaintext = CallGetJob(lorad.address(), {});
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE) << plaintext.error_message();
  const grpc::Status other = CallGetJob(lorad.address(), {other_ca_.cert});
  EXPECT_EQ(other.error_code(), grpc::StatusCode::UNAVAILABLE) << other.error_message();
  // The plaintext client library gets the same answer.
  auto job = lorad.Client()->CreateJob(TinyTrainSpec(2), "");
  EXPECT_EQ(job.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(TlsTest, ClientCertificatesAreVerifiedButNotRequired) {
  Lorad lorad({dir_.Join("lorad"), 0, 0, TlsArgs(true)});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  // Users without a certificate still get in (they authenticate with tokens).
  EXPECT_TRUE(Reached(CallGetJob(lorad.address(), {ca_.cert})));
  EXPECT_TRUE(Reached(CallGetJob(lorad.address(), {ca_.cert, worker_.cert, worker_.key})));
  // A certificate from another CA ends the handshake, whatever its name says.
  const grpc::Status stranger =
      CallGetJob(lorad.address(), {ca_.cert, stranger_.cert, stranger_.key});
  EXPECT_EQ(stranger.error_code(), grpc::StatusCode::UNAVAILABLE) << stranger.error_message();
}

// VerifiedPeerIdentity through a small in-process server on MakeServerCredentials: the
// service answers GetJob with the identity it sees.
class IdentityService final : public lora::v1::JobService::CallbackService {
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const lora::v1::GetJobRequest*, lora::v1::Job* job) override {
    job->set_name(server::VerifiedPeerIdentity(*context));
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

TEST_F(TlsTest, VerifiedPeerIdentityIsTheClientCertificateCommonName) {
  server::TlsServerOptions options;
  options.cert_file = server_.cert;
  options.key_file = server_.key;
  options.client_ca_file = ca_.cert;
  auto credentials = server::MakeServerCredentials(options);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  IdentityService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", *credentials, &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  ASSERT_TRUE(grpc_server != nullptr && port != 0);
  const std::string address = absl::StrCat("127.0.0.1:", port);

  std::string identity = "unset";
  ASSERT_TRUE(CallGetJob(address, {ca_.cert, worker_.cert, worker_.key}, &identity).ok());
  EXPECT_EQ(identity, "worker-7");
  identity = "unset";
  ASSERT_TRUE(CallGetJob(address, {ca_.cert}, &identity).ok());
  EXPECT_EQ(identity, "");
  EXPECT_EQ(CallGetJob(address, {ca_.cert, stranger_.cert, stranger_.key}).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  // Without a client CA nobody is asked for a certificate: no identity even when one is sent.
  options.client_ca_file.clear();
  auto no_ca = server::MakeServerCredentials(options);
  ASSERT_TRUE(no_ca.ok()) << no_ca.status();
  grpc::ServerBuilder builder2;
  int port2 = 0;
  builder2.AddListeningPort("127.0.0.1:0", *no_ca, &port2);
  builder2.RegisterService(&service);
  std::unique_ptr<grpc::Server> server2 = builder2.BuildAndStart();
  ASSERT_TRUE(server2 != nullptr && port2 != 0);
  identity = "unset";
  ASSERT_TRUE(CallGetJob(absl::StrCat("127.0.0.1:", port2), {ca_.cert, worker_.cert, worker_.key},
                         &identity)
                  .ok());
  EXPECT_EQ(identity, "");

  // Plaintext: no identity.
  auto plain = server::MakeServerCredentials({});
  ASSERT_TRUE(plain.ok());
  grpc::ServerBuilder builder3;
  int port3 = 0;
  builder3.AddListeningPort("127.0.0.1:0", *plain, &port3);
  builder3.RegisterService(&service);
  std::unique_ptr<grpc::Server> server3 = builder3.BuildAndStart();
  ASSERT_TRUE(server3 != nullptr && port3 != 0);
  identity = "unset";
  ASSERT_TRUE(CallGetJob(absl::StrCat("127.0.0.1:", port3), {}, &identity).ok());
  EXPECT_EQ(identity, "");
  for (auto* s : {grpc_server.get(), server2.get(), server3.get()}) {
    s->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
}

TEST_F(TlsTest, WorkerWithCertificateRegistersAndOneFromAnotherCaDoesNot) {
  Lorad lorad({dir_.Join("lorad"), 0, 0, TlsArgs(true)});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  auto worker = [&](const std::string& id, const CertFiles& cert) {
    std::vector<std::string> argv = {testing::BinaryPath("worker/lora-worker"),
                                     "--controller",
                                     lorad.address(),
                                     "--worker-id",
                                     id,
                                     "--work-dir",
                                     dir_.Join(id),
                                     "--tls-ca",
                                     ca_.cert,
                                     "--tls-cert",
                                     cert.cert,
                                     "--tls-key",
                                     cert.key};
    return std::make_unique<testing::ChildProcess>(argv, dir_.Join(id + ".out"),
                                                   dir_.Join(id + ".err"));
  };
  auto good = worker("good", worker_);
  auto bad = worker("bad", stranger_);
  EXPECT_TRUE(WaitForFileContaining(dir_.Join("good.err"), "registered with", 60))
      << ReadFile(dir_.Join("good.err"));
  // The other worker had as long plus a few reconnects: it never got through the handshake.
  EXPECT_TRUE(WaitForFileContaining(dir_.Join("bad.err"), "cannot reach", 30))
      << ReadFile(dir_.Join("bad.err"));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_THAT(ReadFile(dir_.Join("bad.err")), Not(HasSubstr("registered with")));
  // SIGTERM reaches the agent's signal thread (no gRPC thread may take it and kill the
  // process): both stop cleanly.
  good->Signal(SIGTERM);
  bad->Signal(SIGTERM);
  EXPECT_EQ(good->Wait(30), 0);
  EXPECT_EQ(bad->Wait(30), 0);
  ExpectNoKeyMaterial(lorad.log(), {server_.key, worker_.key, stranger_.key});
}

// Client certificates are short-lived where they are rotated automatically (cert-manager):
// the worker must present what its files hold now, not what they held when it started.
TEST_F(TlsTest, AWorkerPicksUpRenewedCertificateFilesWithoutARestart) {
  Lorad lorad({dir_.Join("lorad"), 0, 0, TlsArgs(true)});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  const std::string cert = dir_.Join("renewed-cert.pem");
  const std::string key = dir_.Join("renewed-key.pem");
  auto install = [&](const CertFiles& from) {
    // Key first, then certificate, each replaced atomically (as a secret volume does).
    ASSERT_TRUE(WriteFileAtomically(key, ReadFile(from.key)).ok());
    ASSERT_TRUE(WriteFileAtomically(cert, ReadFile(from.cert)).ok());
  };
  install(stranger_);  // lorad's client CA did not sign this one
  testing::ChildProcess worker(
      {testing::BinaryPath("worker/lora-worker"), "--controller", lorad.address(), "--worker-id",
       "rotating", "--work-dir", dir_.Join("rotating"), "--tls-ca", ca_.cert, "--tls-cert", cert,
       "--tls-key", key, "--tls-refresh-interval", "1"},
      dir_.Join("rotating.out"), dir_.Join("rotating.err"));
  // A few handshakes fail meanwhile (the worker's reconnect backoff stays short this early).
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_THAT(ReadFile(dir_.Join("rotating.err")), Not(HasSubstr("registered with")));
  const auto renewed = std::chrono::steady_clock::now();
  install(worker_);  // renewed: signed by the CA lorad trusts
  EXPECT_TRUE(WaitForFileContaining(dir_.Join("rotating.err"), "registered with", 60))
      << ReadFile(dir_.Join("rotating.err"));
  std::cout << "[ measured ] registered "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - renewed).count()
            << " s after the renewed files were written\n";
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(30), 0);
  ExpectNoKeyMaterial(ReadFile(dir_.Join("rotating.err")), {worker_.key, stranger_.key});
}

TEST_F(TlsTest, WorkerTlsFlagErrorsNameTheFlag) {
  const std::string worker = testing::BinaryPath("worker/lora-worker");
  const std::string missing = dir_.Join("no-such.pem");
  testing::ProcessResult r =
      testing::RunProcess({worker, "--work-dir", dir_.Join("w"), "--tls-ca", missing}, 30);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--tls-ca: cannot read"));
  r = testing::RunProcess(
      {worker, "--work-dir", dir_.Join("w"), "--tls-cert", worker_.cert, "--tls-key", worker_.key},
      30);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("need --tls-ca"));
  r = testing::RunProcess(
      {worker, "--work-dir", dir_.Join("w"), "--tls-ca", ca_.cert, "--tls-cert", worker_.cert}, 30);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("go together"));
  ExpectNoKeyMaterial(r.out + r.err, {worker_.key});
}

TEST_F(TlsTest, LocalWorkersConnectOverTheDataDirectorySocket) {
  Lorad lorad({dir_.Join("lorad"), 1, 0, TlsArgs(true)});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  const std::string log = dir_.Join("lorad/workers/local-0/worker.log");
  EXPECT_TRUE(WaitForFileContaining(log, "registered with unix:", 60)) << ReadFile(log);
}

TEST_F(TlsTest, RotatedCertificateIsServedWithoutRestart) {
  auto next_ca = pki_->MakeCa("next-ca");
  ASSERT_TRUE(next_ca) << pki_->error();
  auto next_server = pki_->MakeLeaf(*next_ca, "next-server", "lorad", true);
  ASSERT_TRUE(next_server) << pki_->error();
  const std::string live_cert = dir_.Join("live.crt"), live_key = dir_.Join("live.key");
  ReplaceFile(server_.cert, live_cert);
  ReplaceFile(server_.key, live_key);
  Lorad lorad({dir_.Join("lorad"), 0, 0, {"--tls-cert", live_cert, "--tls-key", live_key}});
  ASSERT_TRUE(lorad.Start()) << lorad.log();
  ASSERT_TRUE(Reached(CallGetJob(lorad.address(), {ca_.cert})));
  ASSERT_FALSE(Reached(CallGetJob(lorad.address(), {next_ca->cert})));

  // As a renewal lands: each file replaced by a rename, the key first.
  ReplaceFile(next_server->key, live_key);
  ReplaceFile(next_server->cert, live_cert);
  const auto replaced = Clock::now();
  bool rotated = false;
  while (Clock::now() - replaced < std::chrono::seconds(3 * server::kTlsRefreshIntervalSeconds)) {
    if (Reached(CallGetJob(lorad.address(), {next_ca->cert}))) {
      rotated = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - replaced).count();
  ASSERT_TRUE(rotated) << lorad.log();
  EXPECT_LE(seconds, server::kTlsRefreshIntervalSeconds + 2.0);
  EXPECT_FALSE(Reached(CallGetJob(lorad.address(), {ca_.cert})));  // the old one is gone
  EXPECT_EQ(lorad.WaitExit(0.1), -1);  // the same process, still running
  ExpectNoKeyMaterial(lorad.log(), {server_.key, next_server->key});
}

TEST_F(TlsTest, BadFilesStopLoradNamingTheFlagNotTheKey) {
  struct Case {
    std::vector<std::string> args;
    std::string flag, says;
  };
  const std::string missing = dir_.Join("no-such.pem");
  const std::vector<Case> cases = {
      {{"--tls-cert", server_.cert, "--tls-key", worker_.key}, "--tls-key", "mismatched"},
      {{"--tls-cert", missing, "--tls-key", server_.key}, "--tls-cert", "cannot read"},
      {{"--tls-cert", server_.cert, "--tls-key", missing}, "--tls-key", "cannot read"},
      {{"--tls-cert", server_.key, "--tls-key", server_.key}, "--tls-cert", "no PEM certificate"},
      {{"--tls-cert", server_.cert, "--tls-key", server_.cert}, "--tls-key", "no PEM private key"},
      {{"--tls-cert", server_.cert}, "--tls-key", "go together"},
      {{"--tls-key", server_.key}, "--tls-cert", "go together"},
      {{"--tls-client-ca", ca_.cert}, "--tls-client-ca", "needs --tls-cert"},
      {{"--tls-cert", server_.cert, "--tls-key", server_.key, "--tls-client-ca", missing},
       "--tls-client-ca",
       "cannot read"},
      {{"--tls-cert", server_.cert, "--tls-key", server_.key, "--tls-client-ca", server_.key},
       "--tls-client-ca",
       "no PEM certificate"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(absl::StrJoin(c.args, " "));
    testing::ProcessResult r = RunLorad(c.args);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr("lorad: error: ")) << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.flag));
    EXPECT_THAT(r.err, HasSubstr(c.says));
    ExpectNoKeyMaterial(r.out + r.err, {server_.key, worker_.key});
  }
}

TEST_F(TlsTest, ClientCaIsAWorkerCredentialBeyondLoopback) {
  // Without a worker token or client CA, listening on every interface is refused ...
  testing::ProcessResult refused = testing::RunProcess(
      [&] {
        std::vector<std::string> argv = {testing::BinaryPath("server/lorad"),
                                         "--data-dir",
                                         dir_.Join("any"),
                                         "--listen",
                                         "0.0.0.0:0",
                                         "--metrics-listen",
                                         ""};
        for (const auto& a : TlsArgs(false)) argv.push_back(a);
        return argv;
      }(),
      30);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, HasSubstr("no worker credential"));
  // ... and with client certificates as the worker credential it serves.
  std::vector<std::string> argv = {testing::BinaryPath("server/lorad"),
                                   "--data-dir",
                                   dir_.Join("any"),
                                   "--listen",
                                   "0.0.0.0:0",
                                   "--metrics-listen",
                                   "",
                                   "--port-file",
                                   dir_.Join("any.port")};
  for (const auto& a : TlsArgs(true)) argv.push_back(a);
  testing::ChildProcess lorad(argv, dir_.Join("any.out"), dir_.Join("any.err"));
  ASSERT_TRUE(WaitForFileContaining(dir_.Join("any.port"), "\n", 30))
      << ReadFile(dir_.Join("any.err"));
  const int port = std::atoi(ReadFile(dir_.Join("any.port")).c_str());
  EXPECT_TRUE(Reached(CallGetJob(absl::StrCat("127.0.0.1:", port), {ca_.cert})));
  lorad.Signal(SIGTERM);
  EXPECT_EQ(lorad.Wait(30), 0);
}

}  // namespace
}  // namespace lora
