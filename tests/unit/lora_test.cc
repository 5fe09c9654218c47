#include <torch/torch.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/llama_reference.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/model/llama.h"

namespace lora {
namespace {

using ::testing::HasSubstr;

LlamaConfig Config(bool tied = false, bool bias = false) {
  LlamaConfig c = *LlamaConfig::FromFlavor("tiny");
  c.vocab_size = 101;
  c.tie_word_embeddings = tied;
  c.attention_bias = bias;
  c.mlp_bias = bias;
  return c;
}

LlamaForCausalLM MakeModel(const LlamaConfig& c, uint64_t seed = 1) {
  LlamaForCausalLM m(c, torch::kFloat32);
  InitializeWeights(*m, seed);
  if (c.attention_bias) {  // non-zero biases so they matter
    torch::NoGradGuard g;
    for (auto& item : m->named_parameters()) {
      if (item.key().find(".bias") != std::string::npos) item.value().normal_(0, 0.1);
    }
  }
  return m;
}

std::map<std::string, torch::Tensor> Snapshot(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : m.named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

class LoraAtInitTest : public ::testing::TestWithParam<std::tuple<bool, bool, int>> {};

TEST_P(LoraAtInitTest, ConvertedModelComputesExactlyTheBase) {
  auto [tied, bias, kv_heads] = GetParam();
  LlamaConfig c = Config(tied, bias);
  c.num_key_value_heads = kv_heads;
  LlamaForCausalLM model = MakeModel(c);
  torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 11});
  torch::Tensor before = model->forward(ForwardInputs{ids});
  LoraConfig lc;
  if (!tied) lc.target_modules = ModuleSelector::Regex("all-linear");
  auto report = ConvertToLora(*model, lc);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->modules.size(), static_cast<size_t>(7 * c.num_hidden_layers));
  torch::Tensor after = model->forward(ForwardInputs{ids});
  EXPECT_TRUE(torch::equal(before, after)) << "B = 0 must make the adapter contribute exactly zero";
}

INSTANTIATE_TEST_SUITE_P(Shapes, LoraAtInitTest,
                         ::testing::Values(std::make_tuple(false, false, 2),  // GQA
                                           std::make_tuple(true, false, 4),   // tied, MHA
                                           std::make_tuple(false, true, 1),   // bias, MQA
                                           std::make_tuple(true, true, 2)));

TEST(LoraConverterTest, BaseKeysUnchangedAndAdaptersAdded) {
  LlamaForCausalLM model = MakeModel(Config());
  auto before = Snapshot(*model);
  ASSERT_TRUE(ConvertToLora(*model, LoraConfig{}).ok());
  auto after = model->named_parameters();
  for (const auto& [name, value] : before) {
    ASSERT_TRUE(after.contains(name)) << name;
    EXPECT_TRUE(torch::equal(after[name], value)) << name;
  }
  EXPECT_EQ(after["model.layers.0.self_attn.q_proj.lora_a.weight"].sizes(),
            torch::IntArrayRef({8, 64}));
  EXPECT_EQ(after["model.layers.0.self_attn.k_proj.lora_b.weight"].sizes(),
            torch::IntArrayRef({32, 8}));
  EXPECT_EQ(after.size(), before.size() + 2 * 7 * 2);
  EXPECT_FALSE(after.contains("lm_head.lora_a.weight"));
}

TEST(LoraConverterTest, OnlyAdaptersRequireGrad) {
  LlamaForCausalLM model = MakeModel(Config());
  auto report = ConvertToLora(*model, LoraConfig{});
  ASSERT_TRUE(report.ok());
  int64_t trainable = 0;
  for (const auto& item : model->named_parameters()) {
    bool adapter = item.key().find(".lora_a.") != std::string::npos ||
                   item.key().find(".lora_b.") != std::string::npos;
    EXPECT_EQ(item.value().requires_grad(), adapter) << item.key();
    if (adapter) trainable += item.value().numel();
  }
  EXPECT_EQ(report->trainable_parameters, trainable);
  EXPECT_EQ(report->adapter_parameters, trainable);
  // 2 layers x (q,k,v,o,gate,up,down): r * (in + out) each.
  const int64_t r = 8;
  int64_t expected = 2 * r * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 160) * 2 + (160 + 64));
  EXPECT_EQ(trainable, expected);
  EXPECT_EQ(report->AdapterBytes(torch::kBFloat16), static_cast<uint64_t>(expected * 2));
}

TEST(LoraConverterTest, TrainingChangesOnlyAdapters) {
  LlamaConfig c = Config(false, true);
  LlamaForCausalLM model = MakeModel(c);
  LoraConfig lc;
  lc.dropout = 0.1;
  ASSERT_TRUE(ConvertToLora(*model, lc).ok());
  auto before = Snapshot(*model);
  std::vector<torch::Tensor> trainable;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::AdamW opt(trainable, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  model->train();
  for (int step = 0; step < 3; ++step) {
    torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 10});
    torch::Tensor logits = model->forward(ForwardInputs{ids});
    torch::Tensor loss = torch::cross_entropy_loss(logits.view({-1, c.vocab_size}), ids.view({-1}));
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  for (const auto& item : model->named_parameters()) {
    bool adapter = item.key().find("lora_") != std::string::npos;
    bool same = torch::equal(item.value(), before[item.key()]);
    if (adapter) {
      EXPECT_FALSE(same) << item.key() << " should have trained";
    } else {
      EXPECT_TRUE(same) << item.key() << " must stay bitwise unchanged";
      EXPECT_FALSE(item.value().grad().defined()) << item.key();
    }
  }
}

// Gives every adapter non-zero B so merge has something to do.
void PerturbAdapters(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard g;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& item : m.named_parameters()) {
    if (item.key().find("lora_b") != std::string::npos) item.value().normal_(0, 0.05, gen);
  }
}

TEST(LoraConverterTest, MergeMatchesUnmergedAndUnmergeRestores) {
  LlamaConfig c = Config(false, true);
  LlamaForCausalLM model = MakeModel(c);
  LoraConfig lc;
  lc.rank_pattern = {{"down_proj", 4}};
  lc.alpha_pattern = {{"q_proj", 3.0}};
  ASSERT_TRUE(ConvertToLora(*model, lc).ok());
  PerturbAdapters(*model, 9);
  model->eval();
  auto base = Snapshot(*model);
  torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 13});
  torch::Tensor unmerged = model->forward(ForwardInputs{ids});
  MergeAdapters(*model);
  torch::Tensor merged = model->forward(ForwardInputs{ids});
  double rel = ((merged - unmerged).abs().max() / unmerged.abs().max()).item<double>();
  EXPECT_LT(rel, 1e-5);
  EXPECT_FALSE(torch::equal(model->named_parameters()["model.layers.0.mlp.up_proj.weight"],
                            base["model.layers.0.mlp.up_proj.weight"]));
  UnmergeAdapters(*model);
  for (const auto& item : model->named_parameters()) {
    EXPECT_TRUE(torch::allclose(item.value(), base[item.key()], 0, 1e-6)) << item.key();
  }
}

TEST(LoraConverterTest, ForwardMatchesIndependentReferenceWithAdapters) {
  LlamaConfig c = Config();
  LlamaForCausalLM model = MakeModel(c);
  LoraConfig lc;
  lc.use_rslora = true;
  lc.rank = 4;
  lc.alpha = 6;
  lc.rank_pattern = {{"v_proj", 2}};
  ASSERT_TRUE(ConvertToLora(*model, lc).ok());
  PerturbAdapters(*model, 4);
  std::map<std::string, testing::ReferenceAdapter> adapters;
  std::map<std::string, torch::Tensor> weights;
  for (const auto& [name, linear] : AdaptedLinears(*model)) {
    const int64_t r = name.find("v_proj") != std::string::npos ? 2 : 4;
    EXPECT_EQ(linear->rank(), r);
    adapters[name] = {linear->lora_a->weight.detach(), linear->lora_b->weight.detach(),
                      6.0 / std::sqrt(r)};
  }
  for (const auto& item : model->named_parameters()) {
    if (item.key().find("lora_") == std::string::npos) weights[item.key()] = item.value().detach();
  }
  testing::ReferenceConfig rc{c.hidden_size,         c.intermediate_size,
                              c.num_hidden_layers,   c.num_attention_heads,
                              c.num_key_value_heads, c.head_dim,
                              c.vocab_size,          c.rms_norm_eps,
                              c.rope_theta,          false};
  testing::ReferenceLlama ref(rc, weights, adapters);
  std::vector<int64_t> ids = {5, 17, 29, 3, 77, 41};
  torch::Tensor expected = ref.Forward(ids, {0, 1, 2, 3, 4, 5});
  model->eval();
  torch::Tensor got =
      model->forward(ForwardInputs{torch::tensor(ids).unsqueeze(0)}).squeeze(0).to(torch::kFloat64);
  EXPECT_LT(((got - expected).abs().max() / expected.abs().max()).item<double>(), 2e-5);
}

TEST(LoraConverterTest, InitializationRules) {
  LlamaForCausalLM model = MakeModel(Config());
  LoraConfig lc;
  lc.seed = 3;
  ASSERT_TRUE(ConvertToLora(*model, lc).ok());
  auto adapted = AdaptedLinears(*model);
  for (const auto& [name, linear] : adapted) {
    EXPECT_TRUE(torch::equal(linear->lora_b->weight, torch::zeros_like(linear->lora_b->weight)))
        << name;
    double bound =
        std::sqrt(1.0 / 3.0) * std::sqrt(3.0 / static_cast<double>(linear->options().in_features));
    EXPECT_LE(linear->lora_a->weight.abs().max().item<double>(), bound) << name;
    EXPECT_GT(linear->lora_a->weight.abs().max().item<double>(), 0.8 * bound) << name;
  }
  // Same seed and name -> same init, independent of which other modules exist.
  LlamaForCausalLM other = MakeModel(Config());
  LoraConfig only_q = lc;
  only_q.target_modules = ModuleSelector::List({"q_proj"});
  ASSERT_TRUE(ConvertToLora(*other, only_q).ok());
  EXPECT_TRUE(
      torch::equal(other->named_parameters()["model.layers.1.self_attn.q_proj.lora_a.weight"],
                   model->named_parameters()["model.layers.1.self_attn.q_proj.lora_a.weight"]));

  LlamaConfig big = Config();
  big.hidden_size = 512;
  big.num_attention_heads = 8;
  big.head_dim = 64;
  LlamaForCausalLM g = MakeModel(big);
  LoraConfig gauss;
  gauss.init = LoraInit::kGaussian;
  gauss.rank = 16;
  gauss.target_modules = ModuleSelector::List({"up_proj"});
  ASSERT_TRUE(ConvertToLora(*g, gauss).ok());
  double std =
      g->named_parameters()["model.layers.0.mlp.up_proj.lora_a.weight"].std().item<double>();
  EXPECT_NEAR(std, 1.0 / 16, 0.005);
}

TEST(LoraConverterTest, ScalingRules) {
  EXPECT_DOUBLE_EQ(LoraScale(16, 8, false), 2.0);
  EXPECT_DOUBLE_EQ(LoraScale(16, 4, true), 8.0);
}

TEST(LoraConverterTest, TargetsByRegexAndExclude) {
  LlamaForCausalLM model = MakeModel(Config());
  LoraConfig lc;
  lc.target_modules = ModuleSelector::Regex(R"(model\.layers\.\d+\.self_attn\.(q|v)_proj)");
  lc.exclude_modules = ModuleSelector::List({"layers.0.self_attn.v_proj"});
  auto report = ConvertToLora(*model, lc);
  ASSERT_TRUE(report.ok()) << report.status();
  std::vector<std::string> names;
  for (const auto& m : report->modules) names.push_back(m.name);
  EXPECT_THAT(names, ::testing::ElementsAre("model.layers.0.self_attn.q_proj",
                                            "model.layers.1.self_attn.q_proj",
                                            "model.layers.1.self_attn.v_proj"));
}

TEST(LoraConverterTest, LmHeadCanBeTargeted) {
  LlamaForCausalLM model = MakeModel(Config());
  LoraConfig lc;
  lc.target_modules = ModuleSelector::List({"lm_head"});
  auto report = ConvertToLora(*model, lc);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->modules.size(), 1u);
}

TEST(LoraConverterTest, BadConfigsNameTheField) {
  struct Case {
    std::function<void(LoraConfig&)> edit;
    const char* phrase;
  };
  std::vector<Case> cases = {
      {[](LoraConfig& c) { c.rank = 0; }, "lora.rank: must be > 0"},
      {[](LoraConfig& c) { c.rank = -3; }, "lora.rank: must be > 0"},
      {[](LoraConfig& c) { c.alpha = 0; }, "lora.alpha: must be > 0"},
      {[](LoraConfig& c) { c.dropout = 1.0; }, "lora.dropout: must be in [0, 1)"},
      {[](LoraConfig& c) { c.dropout = -0.1; }, "lora.dropout"},
      {[](LoraConfig& c) { c.target_modules = ModuleSelector::List({"wq"}); },
       "lora.target_modules: [wq] matches no module"},
      {[](LoraConfig& c) { c.target_modules = ModuleSelector::List({}); },
       "lora.target_modules: must name at least one"},
      {[](LoraConfig& c) { c.target_modules = ModuleSelector::List({"self_attn"}); },
       "which is not a Linear"},
      {[](LoraConfig& c) {
         c.target_modules = ModuleSelector::List({"q_proj"});
         c.exclude_modules = ModuleSelector::List({"q_proj"});
       },
       "matches only modules removed by lora.exclude_modules"},
      {[](LoraConfig& c) {
         c.rank_pattern = {{"q_proj", 0}};
       },
       "lora.rank_pattern.q_proj: must be > 0"},
      {[](LoraConfig& c) { c.target_modules = ModuleSelector::Regex("(("); },
       "lora.target_modules: invalid regular"},
  };
  for (const Case& k : cases) {
    LlamaForCausalLM model = MakeModel(Config());
    auto before = Snapshot(*model);
    LoraConfig lc;
    k.edit(lc);
    auto report = ConvertToLora(*model, lc);
    ASSERT_FALSE(report.ok()) << k.phrase;
    EXPECT_THAT(std::string(report.status().message()), HasSubstr(k.phrase));
    EXPECT_EQ(model->named_parameters().size(), before.size())
        << "a failed conversion must not touch the model";
  }
}

TEST(LoraConverterTest, ConvertingTwiceIsAnError) {
  LlamaForCausalLM model = MakeModel(Config());
  ASSERT_TRUE(ConvertToLora(*model, LoraConfig{}).ok());
  auto again = ConvertToLora(*model, LoraConfig{});
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(LoraConverterTest, WorksOnAnyModuleTree) {
  struct TwoLayerImpl : torch::nn::Module {
    TwoLayerImpl() {
      encoder = register_module("encoder", Linear(LinearOptions{6, 5, true}));
      head = register_module("head", Linear(LinearOptions{5, 3, false}));
      for (auto& p : parameters()) p.data().normal_();
    }
    torch::Tensor forward(torch::Tensor x) { return head(torch::relu(encoder(x))); }
    Linear encoder{nullptr}, head{nullptr};
  };
  auto net = std::make_shared<TwoLayerImpl>();
  torch::Tensor x = torch::randn({4, 6});
  torch::Tensor before = net->forward(x);
  LoraConfig lc;
  lc.rank = 2;
  lc.target_modules = ModuleSelector::List({"encoder", "head"});
  auto report = ConvertToLora(*net, lc);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->modules.size(), 2u);
  EXPECT_TRUE(torch::equal(before, net->forward(x)));
  EXPECT_TRUE(net->named_parameters().contains("encoder.bias"));
  EXPECT_TRUE(net->named_parameters().contains("encoder.lora_a.weight"));
}

}  // namespace
}  // namespace lora
