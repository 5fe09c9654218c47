#include "worker/engine/model/llama.h"

#include <torch/torch.h>

#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/llama_reference.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/rope.h"

namespace lora {
namespace {

testing::ReferenceConfig ToReference(const LlamaConfig& c) {
  testing::ReferenceConfig r{c.hidden_size,         c.intermediate_size,   c.num_hidden_layers,
                             c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                             c.vocab_size,          c.rms_norm_eps,        c.rope_theta,
                             c.tie_word_embeddings};
  if (c.has_rope_scaling) {
    r.rope_llama3 = true;
    r.factor = c.rope_scaling.factor;
    r.low = c.rope_scaling.low_freq_factor;
    r.high = c.rope_scaling.high_freq_factor;
    r.original_max = c.rope_scaling.original_max_position_embeddings;
  }
  return r;
}

std::map<std::string, torch::Tensor> Weights(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : m.named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

LlamaConfig SmallConfig() {
  LlamaConfig c = *LlamaConfig::FromFlavor("tiny");
  c.num_hidden_layers = 2;
  c.vocab_size = 97;
  return c;
}

// Non-trivial weights everywhere (norm weights and biases too), so every term is exercised.
void RandomizeAll(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard g;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : m.parameters()) {
    torch::Tensor t = torch::empty(p.sizes(), torch::kFloat32).normal_(0, 0.3, gen);
    if (p.dim() == 1) t = t * 0.5 + 1.0;
    p.copy_(t);
  }
}

void ExpectMatchesReference(LlamaConfig config, const std::vector<int64_t>& ids,
                            std::vector<int64_t> positions = {}) {
  LlamaForCausalLM model(config, torch::kFloat32);
  RandomizeAll(*model, 7);
  if (positions.empty()) {
    for (size_t i = 0; i < ids.size(); ++i) positions.push_back(static_cast<int64_t>(i));
  }
  torch::Tensor input = torch::tensor(ids, torch::kInt64).unsqueeze(0);
  torch::Tensor pos = torch::tensor(positions, torch::kInt64);
  torch::Tensor logits = model->forward(ForwardInputs{input, pos}).squeeze(0).to(torch::kFloat64);
  testing::ReferenceLlama ref(ToReference(config), Weights(*model));
  torch::Tensor expected = ref.Forward(ids, positions);
  double scale = expected.abs().max().item<double>();
  double err = (logits - expected).abs().max().item<double>();
  EXPECT_LT(err / scale, 2e-5) << "max abs err " << err << " scale " << scale;
}

TEST(LlamaTest, ParameterNamesAreHuggingFaceNames) {
  LlamaConfig c = SmallConfig();
  LlamaForCausalLM model(c, torch::kFloat32);
  auto params = model->named_parameters();
  EXPECT_TRUE(params.contains("model.embed_tokens.weight"));
  EXPECT_TRUE(params.contains("model.layers.1.self_attn.q_proj.weight"));
  EXPECT_TRUE(params.contains("model.layers.0.mlp.down_proj.weight"));
  EXPECT_TRUE(params.contains("model.layers.0.input_layernorm.weight"));
  EXPECT_TRUE(params.contains("model.layers.0.post_attention_layernorm.weight"));
  EXPECT_TRUE(params.contains("model.norm.weight"));
  EXPECT_TRUE(params.contains("lm_head.weight"));
  EXPECT_EQ(params["model.layers.0.self_attn.k_proj.weight"].sizes(), torch::IntArrayRef({32, 64}));
  int64_t total = 0;
  for (const auto& p : model->parameters()) total += p.numel();
  EXPECT_EQ(total, c.NumParameters());
}

TEST(LlamaTest, GqaMatchesReference) {
  ExpectMatchesReference(SmallConfig(), {3, 14, 15, 92, 65, 35, 89, 79, 32, 38});
}

TEST(LlamaTest, MultiQueryMatchesReference) {
  LlamaConfig c = SmallConfig();
  c.num_key_value_heads = 1;
  ExpectMatchesReference(c, {1, 2, 3, 4, 5, 6});
}

TEST(LlamaTest, TiedEmbeddingsAndBiasMatchReference) {
  LlamaConfig c = SmallConfig();
  c.tie_word_embeddings = true;
  c.attention_bias = true;
  c.mlp_bias = true;
  LlamaForCausalLM model(c, torch::kFloat32);
  EXPECT_FALSE(model->named_parameters().contains("lm_head.weight"));
  EXPECT_TRUE(model->named_parameters().contains("model.layers.0.self_attn.o_proj.bias"));
  ExpectMatchesReference(c, {5, 6, 7, 8, 9, 10, 11});
}

TEST(LlamaTest, Qwen2BiasOnlyOnQkv) {
  LlamaConfig c = SmallConfig();
  c.model_type = "qwen2";
  c.attention_bias = true;
  LlamaForCausalLM model(c, torch::kFloat32);
  EXPECT_TRUE(model->named_parameters().contains("model.layers.0.self_attn.v_proj.bias"));
  EXPECT_FALSE(model->named_parameters().contains("model.layers.0.self_attn.o_proj.bias"));
  ExpectMatchesReference(c, {5, 6, 7, 8});
}

TEST(LlamaTest, Llama3RopeScalingAtLongPositions) {
  LlamaConfig c = SmallConfig();
  c.rope_theta = 500000;
  c.has_rope_scaling = true;
  c.rope_scaling =
      RopeScaling{"llama3", 8.0, 1.0, 4.0, 64};  // small original window: all 3 bands used
  torch::Tensor inv = RopeInverseFrequencies(c);
  LlamaConfig unscaled = c;
  unscaled.has_rope_scaling = false;
  EXPECT_FALSE(torch::allclose(inv, RopeInverseFrequencies(unscaled)));
  ExpectMatchesReference(c, {1, 2, 3, 4, 5}, {1000, 1001, 1002, 1003, 1004});
}

TEST(LlamaTest, DocumentMaskIsolatesPackedSequences) {
  LlamaConfig c = SmallConfig();
  LlamaForCausalLM model(c, torch::kFloat32);
  RandomizeAll(*model, 3);
  std::vector<int64_t> a = {4, 8, 15, 16}, b = {23, 42, 7};
  std::vector<int64_t> packed = a;
  packed.insert(packed.end(), b.begin(), b.end());
  ForwardInputs in;
  in.input_ids = torch::tensor(packed).unsqueeze(0);
  in.position_ids = torch::tensor(std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2}).unsqueeze(0);
  in.document_ids = torch::tensor(std::vector<int64_t>{0, 0, 0, 0, 1, 1, 1}).unsqueeze(0);
  torch::Tensor logits = model->forward(in).squeeze(0);
  torch::Tensor la = model->forward(ForwardInputs{torch::tensor(a).unsqueeze(0)}).squeeze(0);
  torch::Tensor lb = model->forward(ForwardInputs{torch::tensor(b).unsqueeze(0)}).squeeze(0);
  const double tol = 1e-5 * la.abs().max().item<double>();
  EXPECT_LT((logits.narrow(0, 0, 4) - la).abs().max().item<double>(), tol);
  EXPECT_LT((logits.narrow(0, 4, 3) - lb).abs().max().item<double>(), tol);
}

TEST(LlamaTest, BatchRowsAreIndependent) {
  LlamaConfig c = SmallConfig();
  LlamaForCausalLM model(c, torch::kFloat32);
  RandomizeAll(*model, 5);
  torch::Tensor ids = torch::randint(0, c.vocab_size, {3, 9});
  torch::Tensor batched = model->forward(ForwardInputs{ids});
  for (int64_t r = 0; r < 3; ++r) {
    torch::Tensor single = model->forward(ForwardInputs{ids.narrow(0, r, 1)});
    // Different batch sizes may take different BLAS blocking, so allow fp32 rounding.
    double err = (batched.narrow(0, r, 1) - single).abs().max().item<double>();
    EXPECT_LT(err, 1e-5 * single.abs().max().item<double>() + 1e-6);
  }
}

TEST(LlamaTest, InitializationIsDeterministicAndHfLike) {
  LlamaConfig c = SmallConfig();
  LlamaForCausalLM a(c, torch::kFloat32), b(c, torch::kBFloat16);
  InitializeWeights(*a, 11);
  InitializeWeights(*b, 11);
  auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& item : pa) {
    EXPECT_TRUE(torch::equal(item.value().to(torch::kBFloat16), pb[item.key()])) << item.key();
  }
  EXPECT_TRUE(torch::equal(pa["model.norm.weight"], torch::ones({c.hidden_size})));
  double std = pa["model.embed_tokens.weight"].std().item<double>();
  EXPECT_NEAR(std, 0.02, 0.002);
}

TEST(LlamaTest, Bf16ForwardIsCloseToFp32) {
  LlamaConfig c = SmallConfig();
  LlamaForCausalLM a(c, torch::kFloat32), b(c, torch::kBFloat16);
  InitializeWeights(*a, 2);
  InitializeWeights(*b, 2);
  torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 12});
  torch::Tensor la = a->forward(ForwardInputs{ids});
  torch::Tensor lb = b->forward(ForwardInputs{ids}).to(torch::kFloat32);
  EXPECT_EQ(b->forward(ForwardInputs{ids}).scalar_type(), torch::kBFloat16);
  EXPECT_LT((la - lb).abs().max().item<double>(), 0.05 * la.abs().max().item<double>() + 1e-3);
}

TEST(LlamaConfigTest, FlavorsAndErrors) {
  auto debug = LlamaConfig::FromFlavor("debugmodel");
  ASSERT_TRUE(debug.ok());
  EXPECT_EQ(debug->hidden_size, 256);
  EXPECT_EQ(debug->intermediate_size, 768);
  auto one_b = LlamaConfig::FromFlavor("llama3.2-1b");
  ASSERT_TRUE(one_b.ok());
  EXPECT_NEAR(static_cast<double>(one_b->NumParameters()), 1.236e9, 0.01e9);
  auto eight_b = LlamaConfig::FromFlavor("llama3.1-8b");
  EXPECT_NEAR(static_cast<double>(eight_b->NumParameters()), 8.03e9, 0.01e9);
  EXPECT_EQ(LlamaConfig::FromFlavor("huge").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LlamaConfigTest, HfJsonRoundTripAndValidation) {
  LlamaConfig c = *LlamaConfig::FromFlavor("llama3.2-1b");
  auto back = LlamaConfig::FromHfJson(c.ToHfJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToHfJson(), c.ToHfJson());

  nlohmann::json j = c.ToHfJson();
  j.erase("num_key_value_heads");
  j.erase("head_dim");
  auto defaults = LlamaConfig::FromHfJson(j);
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->num_key_value_heads, defaults->num_attention_heads);
  EXPECT_EQ(defaults->head_dim, 64);

  j = c.ToHfJson();
  j["num_key_value_heads"] = 5;
  EXPECT_NE(LlamaConfig::FromHfJson(j).status().message().find("num_key_value_heads"),
            std::string::npos);
  j = c.ToHfJson();
  j["model_type"] = "gpt2";
  EXPECT_NE(LlamaConfig::FromHfJson(j).status().message().find("model_type"), std::string::npos);
  j = c.ToHfJson();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(LlamaConfig::FromHfJson(j).status().message().find("rope_scaling.rope_type"),
            std::string::npos);
  j = c.ToHfJson();
  j["hidden_size"] = "big";
  EXPECT_NE(LlamaConfig::FromHfJson(j).status().message().find("hidden_size: must be an integer"),
            std::string::npos);
}

// transformers 5 writes RoPE settings as `rope_parameters`; before this was read, a Llama 3
// checkpoint saved by it silently got rope_theta 10000 and no llama3 scaling.
TEST(LlamaConfigTest, ReadsTransformers5RopeParameters) {
  nlohmann::json j = LlamaConfig::FromFlavor("llama3.2-1b")->ToHfJson();
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 500000.0},
                          {"factor", 32.0},          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  auto c = LlamaConfig::FromHfJson(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 500000.0);
  ASSERT_TRUE(c->has_rope_scaling);
  EXPECT_EQ(c->rope_scaling.factor, 32.0);
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 4.0}};
  EXPECT_THAT(std::string(LlamaConfig::FromHfJson(j).status().message()),
              ::testing::HasSubstr("rope_parameters.rope_type: 'yarn' is not supported"));
}

// Both found by the fuzzer in CI: a layer count that allocates per-layer tables of 2^62
// entries (std::length_error, an abort), and sizes whose product overflows int64.
TEST(LlamaConfigTest, AbsurdSizesAreFieldErrorsAndCountsSaturate) {
  nlohmann::json j = {{"model_type", "qwen2"},      {"hidden_size", 64},
                      {"intermediate_size", 128},   {"num_hidden_layers", 4611686018427387904},
                      {"num_attention_heads", 4},   {"vocab_size", 100},
                      {"use_sliding_window", true}, {"sliding_window", 8}};
  auto c = LlamaConfig::FromHfJson(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), ::testing::HasSubstr("num_hidden_layers"));
  j["num_hidden_layers"] = -3;
  EXPECT_FALSE(LlamaConfig::FromHfJson(j).ok());
  j["use_sliding_window"] = false;
  j["num_hidden_layers"] = LlamaConfig::kMaxLayers + 1;
  EXPECT_THAT(std::string(LlamaConfig::FromHfJson(j).status().message()),
              ::testing::HasSubstr("num_hidden_layers"));

  j["num_hidden_layers"] = 2;
  j["vocab_size"] = int64_t{1} << 60;
  j["hidden_size"] = int64_t{1} << 40;
  j["num_attention_heads"] = 1;
  auto huge = LlamaConfig::FromHfJson(j);
  ASSERT_TRUE(huge.ok()) << huge.status();
  EXPECT_EQ(huge->NumParameters(), std::numeric_limits<int64_t>::max());
}

TEST(LlamaConfigTest, Qwen3HasQkNormAndSlidingWindowsFollowTransformersRules) {
  nlohmann::json j = {
      {"model_type", "qwen3"},  {"hidden_size", 64},        {"intermediate_size", 128},
      {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
      {"head_dim", 24},         {"vocab_size", 100},        {"use_sliding_window", false},
      {"sliding_window", 8}};
  auto c = LlamaConfig::FromHfJson(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->sliding_window, 0);  // present but not used
  EXPECT_FALSE(c->SlidingWindowBinds(1000));

  j["use_sliding_window"] = true;
  j["max_window_layers"] = 1;
  c = LlamaConfig::FromHfJson(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_layers, (std::vector<bool>{false, true, true}));
  EXPECT_TRUE(c->SlidingWindowBinds(9));
  EXPECT_FALSE(c->SlidingWindowBinds(8));
  j["layer_types"] = {"sliding_attention", "full_attention", "full_attention"};
  c = LlamaConfig::FromHfJson(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_layers, (std::vector<bool>{true, false, false}));
  auto back = LlamaConfig::FromHfJson(c->ToHfJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->sliding_layers, c->sliding_layers);
  EXPECT_TRUE(back->qk_norm);
  EXPECT_EQ(back->NumParameters(), c->NumParameters());

  j["layer_types"] = {"sliding_attention", "chunked_attention", "full_attention"};
  EXPECT_THAT(std::string(LlamaConfig::FromHfJson(j).status().message()),
              ::testing::HasSubstr("layer_types[1]"));
  j["layer_types"] = {"sliding_attention"};
  EXPECT_THAT(std::string(LlamaConfig::FromHfJson(j).status().message()),
              ::testing::HasSubstr("layer_types: must be a list of num_hidden_layers (3)"));

  nlohmann::json m = {{"model_type", "mistral"},  {"hidden_size", 64},
                      {"intermediate_size", 128}, {"num_hidden_layers", 2},
                      {"num_attention_heads", 4}, {"vocab_size", 100},
                      {"sliding_window", 4096}};
  auto mistral = LlamaConfig::FromHfJson(m);
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->sliding_layers, (std::vector<bool>{true, true}));
  m["sliding_window"] = nullptr;
  EXPECT_EQ(LlamaConfig::FromHfJson(m)->sliding_window, 0);
}

}  // namespace
}  // namespace lora
