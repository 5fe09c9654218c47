// The credential store: the tokens file (token,tenant,role), its reload, role planes.
#include "server/grpc/credentials.h"

#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace lora::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kAlice = "alice-0123456789abcdef";
const std::string kBob = "bob-0123456789abcdef00";
const std::string kRoot = "root-0123456789abcdef0";
const std::string kPool = "pool-0123456789abcdef0";

class CredentialsTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& text) {
    const std::string path = dir_.Join("tokens.csv");
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp) << text;
    std::filesystem::rename(tmp, path);
    return path;
  }
  absl::StatusOr<std::unique_ptr<CredentialStore>> Load(const std::string& text) {
    CredentialStore::Options o;
    o.tokens_file = Write(text);
    o.poll_interval = absl::Milliseconds(20);
    return CredentialStore::Create(o);
  }
  testing::TempDir dir_;
};

TEST_F(CredentialsTest, TokensFileMapsTokensToTenantsAndRoles) {
  auto store = Load("# token,tenant,role\n" + kAlice + ",team-a,user\n\n" + kBob +
                    ", team-b , user\n" + kRoot + ",ops,admin\n" + kPool + ",gpu-pool,worker\n");
  ASSERT_TRUE(store.ok()) << store.status();
  auto alice = (*store)->AuthenticateToken(kAlice, Plane::kUser);
  ASSERT_TRUE(alice.ok());
  EXPECT_EQ(alice->tenant, "team-a");
  EXPECT_EQ(alice->role, Role::kUser);
  EXPECT_TRUE(alice->SeesTenant("team-a"));
  EXPECT_FALSE(alice->SeesTenant("team-b"));
  EXPECT_EQ((*store)->AuthenticateToken(kBob, Plane::kUser)->tenant, "team-b");
  auto root = (*store)->AuthenticateToken(kRoot, Plane::kUser);
  EXPECT_TRUE(root->admin());
  EXPECT_TRUE(root->SeesTenant("team-b"));
  EXPECT_EQ((*store)->AuthenticateToken(kPool, Plane::kWorker)->tenant, "gpu-pool");
  // A Principal tells credentials apart without carrying the token.
  EXPECT_THAT(alice->id, HasSubstr("token:"));
  EXPECT_THAT(alice->id, Not(HasSubstr(kAlice)));
  EXPECT_EQ((*store)->AuthenticateToken("nope-0123456789abcdef", Plane::kUser).status().code(),
            absl::StatusCode::kUnauthenticated);
}

// Issue 12, finding 2: a user token could act as a worker. Roles are bound to planes.
TEST_F(CredentialsTest, UserCredentialsCannotCallTheWorkerPlaneNorWorkersTheJobPlane) {
  auto store = Load(kAlice + ",team-a,user\n" + kRoot + ",ops,admin\n" + kPool + ",p,worker\n");
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->AuthenticateToken(kAlice, Plane::kWorker).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*store)->AuthenticateToken(kRoot, Plane::kWorker).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*store)->AuthenticateToken(kPool, Plane::kUser).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE((*store)->has_worker_credentials());
}

TEST_F(CredentialsTest, BadLinesNameTheLineAndFieldNeverTheToken) {
  struct Case {
    std::string text, want;
  } cases[] = {
      {kAlice + ",team-a\n", "line 1: want token,tenant,role"},
      {"# c\n" + kAlice + ",Team_A,user\n", "line 2: tenant:"},
      {kAlice + ",team-a,root\n", "line 1: role: must be user, admin or worker"},
      {"change-me,team-a,user\n", "line 1: token is a placeholder value"},
      {"short-token,team-a,user\n", "line 1: token is 11 bytes"},
      {kAlice + ",team-a,user\n" + kAlice + ",team-b,user\n", "line 2: token: the same token"},
  };
  for (const Case& c : cases) {
    auto store = Load(c.text);
    ASSERT_FALSE(store.ok()) << c.text;
    EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(store.status().message(), HasSubstr(c.want));
    EXPECT_THAT(store.status().message(), Not(HasSubstr(kAlice)));
  }
}

TEST_F(CredentialsTest, ReloadsWhenTheFileChangesAndKeepsTheOldSetOnABadEdit) {
  auto store = Load(kAlice + ",team-a,user\n");
  ASSERT_TRUE(store.ok());
  EXPECT_FALSE((*store)->AuthenticateToken(kBob, Plane::kUser).ok());
  Write(kAlice + ",team-a,user\n" + kBob + ",team-b,user\n");
  auto wait_for = [&](const std::function<bool()>& pred) {
    for (int i = 0; i < 200 && !pred(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return pred();
  };
  EXPECT_TRUE(wait_for([&] { return (*store)->AuthenticateToken(kBob, Plane::kUser).ok(); }));
  // Revocation: a removed line stops working.
  Write(kBob + ",team-b,user\n");
  EXPECT_TRUE(wait_for([&] { return !(*store)->AuthenticateToken(kAlice, Plane::kUser).ok(); }));
  // A broken edit keeps the last good set.
  const int64_t before = (*store)->reloads();
  Write(kBob + ",team-b\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ((*store)->reloads(), before);
  EXPECT_TRUE((*store)->AuthenticateToken(kBob, Plane::kUser).ok());
  // An explicit reload (SIGHUP) reports the same error.
  EXPECT_THAT((*store)->Reload().message(), HasSubstr("line 1: want token,tenant,role"));
}

TEST_F(CredentialsTest, SingleSecretShorthandsAndTheLocalWorkersSecret) {
  CredentialStore::Options o;
  o.user_token = kAlice;
  o.local_worker_token = kPool;
  auto store = CredentialStore::Create(o);
  ASSERT_TRUE(store.ok());
  auto alice = (*store)->AuthenticateToken(kAlice, Plane::kUser);
  ASSERT_TRUE(alice.ok());
  EXPECT_TRUE(alice->admin());
  EXPECT_EQ(alice->tenant, "default");
  EXPECT_EQ((*store)->AuthenticateToken(kPool, Plane::kWorker)->id, "local");
  // The local workers' secret is not a credential for remote workers.
  EXPECT_FALSE((*store)->has_worker_credentials());
  o.local_worker_token = "change-me";
  EXPECT_FALSE(CredentialStore::Create(o).ok());
}

TEST(TenantNameTest, DnsLabels) {
  for (const std::string& ok :
       {std::string("a"), std::string("team-a"), std::string("t0"), std::string(63, 'x')})
    EXPECT_TRUE(IsValidTenantName(ok)) << ok;
  for (const char* bad : {"", "-a", "a-", "Team", "a_b", "a.b", "a b"})
    EXPECT_FALSE(IsValidTenantName(bad)) << bad;
  EXPECT_FALSE(IsValidTenantName(std::string(64, 'x')));
}

}  // namespace
}  // namespace lora::server
