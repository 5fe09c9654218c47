// SHA-256 against the FIPS 180-4 examples, whole and in pieces.
#include "common/sha256.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "common/file_util.h"
#include "tests/test_util.h"

namespace lora {
namespace {

TEST(Sha256Test, MatchesTheFipsExamples) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 million;
  const std::string a(1000, 'a');
  for (int i = 0; i < 1000; ++i) million.Update(a);
  EXPECT_EQ(million.HexDigest(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, PiecesOfAnySizeHashLikeTheWhole) {
  std::mt19937 rng(3);
  std::string data(100000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  const std::string whole = Sha256Hex(data);
  Sha256 pieces;
  size_t at = 0;
  while (at < data.size()) {
    const size_t n = std::min<size_t>(rng() % 200, data.size() - at);
    pieces.Update(data.data() + at, n);
    at += n;
  }
  EXPECT_EQ(pieces.HexDigest(), whole);
  Sha256 moved = std::move(pieces);  // a hasher travels with the upload that owns it
  (void)moved;
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomically(dir.Join("f"), data).ok());
  EXPECT_EQ(*Sha256File(dir.Join("f")), whole);
}

}  // namespace
}  // namespace lora
