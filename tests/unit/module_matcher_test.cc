#include "worker/engine/lora/module_matcher.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lora {
namespace {

using ::testing::HasSubstr;

TEST(ModuleMatcherTest, ListMatchesEqualOrDotSuffix) {
  auto m = ModuleMatcher::Create(ModuleSelector::List({"q_proj", "mlp.up_proj"}), {});
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->Matches("q_proj"));
  EXPECT_TRUE(m->Matches("model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(m->Matches("model.layers.0.mlp.up_proj"));
  EXPECT_FALSE(m->Matches("model.layers.0.self_attn.xq_proj"));  // suffix must follow a dot
  EXPECT_FALSE(m->Matches("model.layers.0.self_attn.q_proj.lora_a"));
  EXPECT_FALSE(m->Matches("up_proj"));
}

TEST(ModuleMatcherTest, RegexMustMatchWholeName) {
  auto m =
      ModuleMatcher::Create(ModuleSelector::Regex(R"(.*layers\.[01]\.self_attn\.(q|v)_proj)"), {});
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->Matches("model.layers.1.self_attn.v_proj"));
  EXPECT_FALSE(m->Matches("model.layers.2.self_attn.v_proj"));
  EXPECT_FALSE(m->Matches("model.layers.1.self_attn.v_proj.lora_a"));
}

TEST(ModuleMatcherTest, ExcludeRemovesTargets) {
  auto m = ModuleMatcher::Create(ModuleSelector::List({"q_proj", "v_proj"}),
                                 ModuleSelector::Regex(R"(model\.layers\.0\..*)"));
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->Matches("model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(m->MatchesTarget("model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(m->Matches("model.layers.1.self_attn.q_proj"));
}

TEST(ModuleMatcherTest, AllLinearSkipsOutputLayer) {
  auto m = ModuleMatcher::Create(ModuleSelector::Regex("all-linear"), {});
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->Matches("model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(m->Matches("lm_head", /*is_output_layer=*/true));
}

TEST(ModuleMatcherTest, ErrorsNameTheField) {
  auto empty = ModuleMatcher::Create(ModuleSelector::List({}), {}, "lora.target_modules");
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("lora.target_modules"));
  auto bad = ModuleMatcher::Create(ModuleSelector::Regex("(unclosed"), {}, "lora.target_modules");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("lora.target_modules: invalid regular expression"));
  auto bad_ex = ModuleMatcher::Create(ModuleSelector::List({"q_proj"}),
                                      ModuleSelector::Regex("[z-a]"), "t", "lora.exclude_modules");
  EXPECT_THAT(std::string(bad_ex.status().message()), HasSubstr("lora.exclude_modules"));
}

TEST(PatternMapTest, PeftPatternRule) {
  auto m = PatternMap<int64_t>::Create({{"down_proj", 16}, {R"(layers\.1\..*)", 4}},
                                       "lora.rank_pattern");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->Lookup("model.layers.0.mlp.down_proj"), 16);
  EXPECT_EQ(m->Lookup("model.layers.1.mlp.down_proj"), 16);  // first matching key wins
  EXPECT_EQ(m->Lookup("model.layers.1.self_attn.q_proj"), 4);
  EXPECT_EQ(m->Lookup("model.layers.0.self_attn.q_proj"), std::nullopt);
  EXPECT_EQ(m->Lookup("model.layers.0.mlp.xdown_proj"), std::nullopt);
  auto bad = PatternMap<double>::Create({{"(", 1.0}}, "lora.alpha_pattern");
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("lora.alpha_pattern.("));
}

// Issue 12, finding 1: std::regex recursed once per group, so 20,000 nested parentheses (a
// 40 KB CreateJob) crashed every binary that compiled the pattern. RE2 refuses it by length,
// and nested groups within the cap are a parse error or a linear-time match, never a crash.
TEST(UserPatternTest, HostilePatternsAreErrorsNotCrashes) {
  const std::string deep = std::string(20000, '(') + std::string(20000, ')');
  auto long_one = ModuleMatcher::Create(ModuleSelector::Regex(deep), {}, "lora.target_modules");
  EXPECT_EQ(long_one.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(long_one.status().message()),
              HasSubstr("lora.target_modules: regular expression of 40000 bytes; at most 4096"));
  EXPECT_LT(long_one.status().message().size(), 200u) << "the pattern is not echoed";

  const std::string nested = std::string(2000, '(') + "q_proj" + std::string(2000, ')');
  auto within = ModuleMatcher::Create(ModuleSelector::Regex(nested), {}, "lora.target_modules");
  if (within.ok()) {
    EXPECT_TRUE(within->Matches("q_proj"));
  } else {
    EXPECT_THAT(std::string(within.status().message()), HasSubstr("lora.target_modules"));
  }
  auto keys = PatternMap<int64_t>::Create({{deep, 4}}, "lora.rank_pattern");
  EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument);
  auto excluded = ModuleMatcher::Create(ModuleSelector::List({"q_proj"}),
                                        ModuleSelector::Regex(deep), "t", "lora.exclude_modules");
  EXPECT_THAT(std::string(excluded.status().message()), HasSubstr("lora.exclude_modules"));

  // Catastrophic backtracking for a backtracking engine; linear for RE2.
  auto evil = UserPattern::Compile("(a+)+$", "lora.target_modules");
  ASSERT_TRUE(evil.ok());
  EXPECT_FALSE(evil->FullMatch(std::string(100000, 'a') + "!"));
  // Python features RE2 lacks are refused by name, not misread.
  auto lookahead = UserPattern::Compile("q_proj(?!x)", "lora.target_modules");
  EXPECT_THAT(std::string(lookahead.status().message()),
              HasSubstr("lora.target_modules: invalid regular expression (RE2 syntax)"));
}

}  // namespace
}  // namespace lora
