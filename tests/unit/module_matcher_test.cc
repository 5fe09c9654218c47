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

}  // namespace
}  // namespace lora
