#include "common/safetensors.h"

#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace lora {
namespace {

using ::testing::HasSubstr;

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A file from a raw header text and a data buffer of `data_bytes` zero bytes.
std::string RawFile(const std::string& header, size_t data_bytes) {
  return LengthPrefix(header.size()) + header + std::string(data_bytes, '\0');
}

absl::Status Parse(const std::string& bytes) {
  return ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                "t.safetensors")
      .status();
}

TEST(SafetensorsTest, WriteThenReadRoundTrips) {
  testing::TempDir dir;
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b = {0x3f80, 0x4000};  // bf16 1.0, 2.0
  std::vector<TensorToWrite> tensors = {
      {"layer.a", DType::kF32, {2, 3}, a.data(), a.size() * 4},
      {"layer.b", DType::kBF16, {2}, b.data(), b.size() * 2},
      {"empty", DType::kF32, {0, 4}, nullptr, 0},
      {"scalar", DType::kF32, {}, a.data(), 4},
  };
  const std::string path = dir.Join("x.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  ASSERT_EQ((*file)->tensors().size(), 4u);
  const TensorInfo* ta = (*file)->Find("layer.a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, DType::kF32);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp((*file)->Data(*ta), a.data(), 24), 0);
  const TensorInfo* tb = (*file)->Find("layer.b");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(tb->dtype, DType::kBF16);
  EXPECT_EQ(std::memcmp((*file)->Data(*tb), b.data(), 4), 0);
  EXPECT_EQ((*file)->Find("scalar")->numel(), 1);
  EXPECT_EQ((*file)->Find("empty")->nbytes(), 0u);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
}

TEST(SafetensorsTest, HeaderIsPaddedToEightBytes) {
  std::vector<float> a = {1};
  auto header = SerializeSafetensorsHeader({{"abc", DType::kF32, {1}, a.data(), 4}}, {});
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->size() % 8, 0u);
}

TEST(SafetensorsTest, WriterRejectsInconsistentInput) {
  std::vector<float> a = {1, 2};
  EXPECT_FALSE(SerializeSafetensorsHeader({{"a", DType::kF32, {3}, a.data(), 8}}, {}).ok());
  EXPECT_FALSE(SerializeSafetensorsHeader(
                   {{"a", DType::kF32, {2}, a.data(), 8}, {"a", DType::kF32, {2}, a.data(), 8}}, {})
                   .ok());
  EXPECT_FALSE(
      SerializeSafetensorsHeader({{"__metadata__", DType::kF32, {2}, a.data(), 8}}, {}).ok());
}

TEST(SafetensorsTest, AcceptsMinimalValidFile) {
  EXPECT_TRUE(Parse(RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8)).ok());
  EXPECT_TRUE(Parse(RawFile("{}", 0)).ok());
}

struct HostileCase {
  const char* name;
  std::string bytes;
  const char* expected;  // a phrase the error must contain
};

std::vector<HostileCase> HostileCases() {
  const std::string good = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  std::string huge = LengthPrefix(uint64_t{1} << 62) + "{}";
  std::string over_file = LengthPrefix(1000) + "{}";
  return {
      {"empty file", "", "shorter than the 8-byte header length"},
      {"short file", "abc", "shorter than the 8-byte header length"},
      {"huge header length", huge, "exceeds the limit"},
      {"header past end", over_file, "truncated"},
      {"truncated data", RawFile(good, 15), "truncated"},
      {"trailing bytes", RawFile(good, 20), "trailing bytes"},
      {"not json", RawFile("{not json", 0), "not valid UTF-8 JSON"},
      {"invalid utf8", RawFile("{\"w\xff\":{}}", 0), "not valid UTF-8 JSON"},
      {"array header", RawFile("[1,2,3]", 0), "not a JSON object"},
      {"bad dtype", RawFile(R"({"w":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}})", 16),
       "unknown dtype 'F33'"},
      {"dtype not string", RawFile(R"({"w":{"dtype":4,"shape":[4],"data_offsets":[0,16]}})", 16),
       "dtype is not a string"},
      {"negative dim", RawFile(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", 16),
       "non-negative integers"},
      {"shape overflow",
       RawFile(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})",
               16),
       "shape overflows"},
      {"dim over int64",
       RawFile(R"({"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]}})", 1),
       "overflows int64"},
      {"wrong byte count",
       RawFile(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16),
       "byte count mismatch"},
      {"end before begin",
       RawFile(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}})", 16), "end < begin"},
      {"overlapping offsets",
       RawFile(
           R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
           16),
       "overlap"},
      {"gap between tensors",
       RawFile(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
           20),
       "gap"},
      {"offset past buffer",
       RawFile(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 8), "gap"},
      {"duplicate names",
       RawFile(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           8),
       "duplicate tensor name"},
      {"missing offsets", RawFile(R"({"w":{"dtype":"F32","shape":[1]}})", 4),
       "missing data_offsets"},
      {"three offsets", RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 4),
       "data_offsets must be"},
      {"extra field", RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4),
       "unexpected field 'x'"},
      {"metadata not strings", RawFile(R"({"__metadata__":{"format":1}})", 0), "is not a string"},
      {"tensor not object", RawFile(R"({"w":[1]})", 0), "not a JSON object"},
  };
}

TEST(SafetensorsTest, HostileInputsGiveClearErrors) {
  for (const HostileCase& c : HostileCases()) {
    absl::Status s = Parse(c.bytes);
    EXPECT_FALSE(s.ok()) << c.name;
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << c.name;
    EXPECT_THAT(std::string(s.message()), HasSubstr("t.safetensors")) << c.name;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expected)) << c.name << ": " << s.message();
  }
}

TEST(SafetensorsTest, ErrorNamesTheTensor) {
  absl::Status s = Parse(RawFile(
      R"({"model.layers.3.mlp.up_proj.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})",
      16));
  EXPECT_THAT(std::string(s.message()), HasSubstr("'model.layers.3.mlp.up_proj.weight'"));
}

TEST(SafetensorsTest, OpenReportsMissingAndCorruptFiles) {
  testing::TempDir dir;
  auto missing = SafetensorsFile::Open(dir.Join("nope.safetensors"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  const std::string path = dir.Join("bad.safetensors");
  std::ofstream(path, std::ios::binary) << LengthPrefix(100) << "{}";
  auto bad = SafetensorsFile::Open(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr(path));
}

// Random corruption of a valid file must yield either a valid parse or an error, never a
// crash or an out-of-bounds read (this suite also runs under AddressSanitizer).
TEST(SafetensorsTest, RandomCorruptionNeverCrashes) {
  std::vector<float> a(8, 1.0f), b(3, 2.0f);
  auto header = SerializeSafetensorsHeader(
      {{"alpha", DType::kF32, {2, 4}, a.data(), 32}, {"beta", DType::kF32, {3}, b.data(), 12}},
      {{"format", "pt"}});
  ASSERT_TRUE(header.ok());
  std::string valid = *header + std::string(44, '\x01');
  std::mt19937 rng(1234);
  int accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string bytes = valid;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t pos = rng() % bytes.size();
      switch (rng() % 3) {
        case 0:
          bytes[pos] = static_cast<char>(rng() & 0xff);
          break;
        case 1:
          bytes.resize(pos);
          break;
        default:
          bytes.insert(pos, 1, static_cast<char>(rng() & 0xff));
          break;
      }
      if (bytes.empty()) break;
    }
    // Copy to an exactly-sized heap buffer so ASan catches any read past the end.
    std::unique_ptr<uint8_t[]> buffer(new uint8_t[bytes.size() + 1]);
    std::memcpy(buffer.get(), bytes.data(), bytes.size());
    auto parsed = ParseSafetensorsHeader(buffer.get(), bytes.size(), "fuzz");
    if (parsed.ok()) {
      ++accepted;
      for (const TensorInfo& t : parsed->tensors) {
        ASSERT_LE(parsed->data_start + t.end, bytes.size());
      }
    }
  }
  EXPECT_LT(accepted, 20000);
}

}  // namespace
}  // namespace lora
