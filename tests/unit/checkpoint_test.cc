#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/train/checkpointer.h"

namespace lora {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

LlamaConfig Config() {
  LlamaConfig c = *LlamaConfig::FromFlavor("tiny");
  c.vocab_size = 96;
  return c;
}

LlamaForCausalLM MakeModel(const LlamaConfig& c, torch::Dtype dtype = torch::kFloat32,
                           uint64_t seed = 1) {
  LlamaForCausalLM m(c, dtype);
  InitializeWeights(*m, seed);
  return m;
}

void ExpectSameParameters(const torch::nn::Module& a, const torch::nn::Module& b) {
  auto pb = b.named_parameters();
  ASSERT_EQ(a.named_parameters().size(), pb.size());
  for (const auto& item : a.named_parameters()) {
    ASSERT_TRUE(pb.contains(item.key())) << item.key();
    EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  }
}

TEST(HfCheckpointTest, SaveLoadRoundTripSingleFile) {
  testing::TempDir dir;
  LlamaForCausalLM model = MakeModel(Config());
  ASSERT_TRUE(SaveHfModel(*model, dir.path(), {}).ok());
  EXPECT_TRUE(fs::exists(dir.Join("model.safetensors")));
  auto loaded = LoadHfModel(dir.path(), torch::kFloat32);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameParameters(*model, **loaded);
  auto config = ReadJsonFile(dir.Join("config.json"));
  EXPECT_EQ((*config)["torch_dtype"], "float32");
  EXPECT_EQ((*config)["architectures"][0], "LlamaForCausalLM");
}

TEST(HfCheckpointTest, ShardedRoundTripWithIndex) {
  testing::TempDir dir;
  LlamaForCausalLM model = MakeModel(Config());
  SaveOptions options;
  options.max_shard_bytes = 100'000;
  ASSERT_TRUE(SaveHfModel(*model, dir.path(), options).ok());
  auto index = ReadJsonFile(dir.Join("model.safetensors.index.json"));
  ASSERT_TRUE(index.ok());
  EXPECT_FALSE(fs::exists(dir.Join("model.safetensors")));
  std::set<std::string> files;
  for (const auto& [k, v] : (*index)["weight_map"].items()) files.insert(v.get<std::string>());
  EXPECT_GT(files.size(), 2u);
  EXPECT_TRUE(files.count("model-00001-of-" +
                          std::string(5 - std::to_string(files.size()).size(), '0') +
                          std::to_string(files.size()) + ".safetensors"));
  uint64_t total = 0;
  for (const auto& p : model->parameters()) total += p.numel() * 4;
  EXPECT_EQ((*index)["metadata"]["total_size"].get<uint64_t>(), total);
  auto loaded = LoadHfModel(dir.path(), torch::kFloat32);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameParameters(*model, **loaded);
}

TEST(HfCheckpointTest, DtypeConversionOnLoadAndSave) {
  testing::TempDir dir;
  LlamaForCausalLM model = MakeModel(Config());
  SaveOptions bf16;
  bf16.dtype = torch::kBFloat16;
  ASSERT_TRUE(SaveHfModel(*model, dir.path(), bf16).ok());
  auto file = SafetensorsFile::Open(dir.Join("model.safetensors"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->Find("model.norm.weight")->dtype, DType::kBF16);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  auto as_fp32 = LoadHfModel(dir.path(), torch::kFloat32);
  ASSERT_TRUE(as_fp32.ok());
  auto w = (*as_fp32)->named_parameters()["model.layers.0.mlp.up_proj.weight"];
  EXPECT_EQ(w.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(w, model->named_parameters()["model.layers.0.mlp.up_proj.weight"]
                                  .to(torch::kBFloat16)
                                  .to(torch::kFloat32)));
  auto as_fp16 = LoadHfModel(dir.path(), torch::kFloat16);
  ASSERT_TRUE(as_fp16.ok());
  EXPECT_EQ((*as_fp16)->named_parameters()["model.norm.weight"].scalar_type(), torch::kFloat16);
}

TEST(HfCheckpointTest, TiedModelOmitsLmHeadAndToleratesIt) {
  testing::TempDir dir;
  LlamaConfig c = Config();
  c.tie_word_embeddings = true;
  LlamaForCausalLM model = MakeModel(c);
  ASSERT_TRUE(SaveHfModel(*model, dir.path(), {}).ok());
  auto file = SafetensorsFile::Open(dir.Join("model.safetensors"));
  EXPECT_EQ((*file)->Find("lm_head.weight"), nullptr);
  auto loaded = LoadHfModel(dir.path(), torch::kFloat32);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE((*loaded)->config().tie_word_embeddings);
}

// Writes a checkpoint whose tensors are those of `model` edited by `edit`.
void WriteEdited(const LlamaForCausalLMImpl& model, const std::string& dir,
                 const std::function<void(NamedTensors&)>& edit) {
  ASSERT_TRUE(MakeDirectories(dir).ok());
  ASSERT_TRUE(
      WriteFileAtomically(JoinPath(dir, "config.json"), model.config().ToHfJson().dump()).ok());
  NamedTensors tensors = BaseStateDict(model);
  edit(tensors);
  ASSERT_TRUE(WriteTensors(JoinPath(dir, "model.safetensors"), tensors, torch::kFloat32, {}).ok());
}

TEST(HfCheckpointTest, MismatchesAreListed) {
  testing::TempDir dir;
  LlamaForCausalLM model = MakeModel(Config());
  WriteEdited(*model, dir.path(), [](NamedTensors& t) {
    t.erase(std::remove_if(t.begin(), t.end(),
                           [](auto& p) {
                             return p.first == "model.norm.weight" || p.first == "lm_head.weight";
                           }),
            t.end());
    t.emplace_back("model.layers.9.mlp.up_proj.weight", torch::zeros({2, 2}));
    for (auto& p : t) {
      if (p.first == "model.layers.0.self_attn.q_proj.weight") p.second = torch::zeros({64, 63});
    }
    t.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", torch::zeros({8}));  // ignored
  });
  auto loaded = LoadHfModel(dir.path(), torch::kFloat32);
  ASSERT_FALSE(loaded.ok());
  std::string msg(loaded.status().message());
  EXPECT_THAT(msg, HasSubstr("2 missing: model.norm.weight, lm_head.weight"));
  EXPECT_THAT(msg, HasSubstr("1 unexpected: model.layers.9.mlp.up_proj.weight"));
  EXPECT_THAT(msg, HasSubstr("1 mis-shaped: model.layers.0.self_attn.q_proj.weight (checkpoint "
                             "[64, 63], model [64, 64])"));
  EXPECT_THAT(msg, ::testing::Not(HasSubstr("inv_freq")));
}

TEST(HfCheckpointTest, CorruptOrMissingFilesAreClearErrors) {
  testing::TempDir dir;
  auto none = LoadHfModel(dir.Join("nope"), torch::kFloat32);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  LlamaForCausalLM model = MakeModel(Config());
  ASSERT_TRUE(SaveHfModel(*model, dir.path(), {}).ok());
  // Truncate the weights file.
  fs::resize_file(dir.Join("model.safetensors"), fs::file_size(dir.Join("model.safetensors")) - 10);
  auto truncated = LoadHfModel(dir.path(), torch::kFloat32);
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(truncated.status().message()), HasSubstr("model.safetensors"));
  std::ofstream(dir.Join("config.json")) << "{\"hidden_size\": 4";
  auto bad_json = LoadHfModel(dir.path(), torch::kFloat32);
  EXPECT_THAT(std::string(bad_json.status().message()), HasSubstr("config.json: invalid JSON"));
}

TEST(HfCheckpointTest, IndexMustAgreeWithShards) {
  testing::TempDir dir;
  LlamaForCausalLM model = MakeModel(Config());
  SaveOptions options;
  options.max_shard_bytes = 100'000;
  ASSERT_TRUE(SaveHfModel(*model, dir.path(), options).ok());
  auto index = *ReadJsonFile(dir.Join("model.safetensors.index.json"));
  index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors";
  index["weight_map"]["model.norm.weight"] = "../../etc/passwd";
  std::ofstream(dir.Join("model.safetensors.index.json")) << index.dump();
  auto loaded = LoadHfModel(dir.path(), torch::kFloat32);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("leaves the directory"));
}

// ---------------------------------------------------------------- PEFT adapters

LoraConfig TestLoraConfig() {
  LoraConfig lc;
  lc.rank = 4;
  lc.alpha = 8;
  lc.seed = 5;
  return lc;
}

void Perturb(torch::nn::Module& m) {
  torch::NoGradGuard g;
  for (auto& item : m.named_parameters()) {
    if (item.key().find("lora_b") != std::string::npos) item.value().normal_(0, 0.1);
  }
}

TEST(PeftAdapterTest, ExportUsesPeftKeysShapesAndConfig) {
  testing::TempDir dir;
  LlamaForCausalLM model = MakeModel(Config());
  LoraConfig lc = TestLoraConfig();
  lc.target_modules = ModuleSelector::List({"v_proj", "q_proj", "down_proj"});
  ASSERT_TRUE(ConvertToLora(*model, lc).ok());
  PeftExportOptions options;
  options.base_model_name_or_path = "meta-llama/Llama-3.2-1B";
  options.dtype = torch::kBFloat16;
  ASSERT_TRUE(ExportPeftAdapter(*model, lc, dir.Join("adapter"), options).ok());

  auto config = ReadJsonFile(dir.Join("adapter/adapter_config.json"));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ((*config)["peft_type"], "LORA");
  EXPECT_EQ((*config)["task_type"], "CAUSAL_LM");
  EXPECT_EQ((*config)["r"], 4);
  EXPECT_EQ((*config)["lora_alpha"], 8);
  EXPECT_EQ((*config)["target_modules"], nlohmann::json({"down_proj", "q_proj", "v_proj"}));
  EXPECT_EQ((*config)["bias"], "none");
  EXPECT_EQ((*config)["use_rslora"], false);
  EXPECT_EQ((*config)["use_dora"], false);
  EXPECT_EQ((*config)["fan_in_fan_out"], false);
  EXPECT_TRUE((*config)["modules_to_save"].is_null());
  EXPECT_EQ((*config)["init_lora_weights"], true);
  EXPECT_EQ((*config)["base_model_name_or_path"], "meta-llama/Llama-3.2-1B");

  auto file = SafetensorsFile::Open(dir.Join("adapter/adapter_model.safetensors"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->tensors().size(), 2u * 3 * 2);
  const TensorInfo* a =
      (*file)->Find("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight");
  const TensorInfo* b =
      (*file)->Find("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 64}));
  EXPECT_EQ(b->shape, (std::vector<int64_t>{32, 4}));
  EXPECT_EQ(a->dtype, DType::kBF16);
}

TEST(PeftAdapterTest, ExportImportRoundTripReproducesOutputs) {
  testing::TempDir dir;
  LlamaConfig c = Config();
  LlamaForCausalLM model = MakeModel(c);
  LoraConfig lc = TestLoraConfig();
  lc.use_rslora = true;
  lc.rank_pattern = {{"down_proj", 2}};
  lc.alpha_pattern = {{R"(layers\.1\.self_attn\.q_proj)", 3.5}};
  ASSERT_TRUE(ConvertToLora(*model, lc).ok());
  Perturb(*model);
  ASSERT_TRUE(ExportPeftAdapter(*model, lc, dir.Join("a"), {}).ok());
  auto config = *ReadJsonFile(dir.Join("a/adapter_config.json"));
  EXPECT_EQ(config["rank_pattern"]["down_proj"], 2);
  EXPECT_EQ(config["alpha_pattern"][R"(layers\.1\.self_attn\.q_proj)"], 3.5);

  LlamaForCausalLM fresh = MakeModel(c);
  auto imported = ImportPeftAdapter(*fresh, dir.Join("a"));
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->report.modules.size(), 14u);
  ExpectSameParameters(*model, *fresh);
  for (const auto& [name, linear] : AdaptedLinears(*fresh)) {
    const int64_t r = name.find("down_proj") != std::string::npos ? 2 : 4;
    const double alpha = name == "model.layers.1.self_attn.q_proj" ? 3.5 : 8.0;
    EXPECT_EQ(linear->rank(), r) << name;
    EXPECT_DOUBLE_EQ(linear->scale(), alpha / std::sqrt(r)) << name;
  }
  torch::Tensor ids = torch::randint(0, c.vocab_size, {1, 9});
  model->eval();
  fresh->eval();
  EXPECT_TRUE(torch::equal(model->forward(ForwardInputs{ids}), fresh->forward(ForwardInputs{ids})));
  for (const auto& item : fresh->named_parameters()) {
    EXPECT_EQ(item.value().requires_grad(), item.key().find("lora_") != std::string::npos)
        << item.key();
  }
}

// An adapter as PEFT itself would save it for a model trained elsewhere: adapter-name segments
// in keys, only some layers, string target_modules, ranks that differ per module.
TEST(PeftAdapterTest, ImportsForeignAdapters) {
  testing::TempDir dir;
  LlamaConfig c = Config();
  ASSERT_TRUE(MakeDirectories(dir.Join("foreign")).ok());
  nlohmann::json config = {{"peft_type", "LORA"},
                           {"r", 4},
                           {"lora_alpha", 32},
                           {"target_modules", ".*layers\\.1.*(q|o)_proj"},
                           {"rank_pattern", {{"o_proj", 2}}},
                           {"bias", "none"},
                           {"use_dora", false},
                           {"task_type", "CAUSAL_LM"},
                           {"some_future_field", 123}};
  ASSERT_TRUE(WriteFileAtomically(dir.Join("foreign/adapter_config.json"), config.dump()).ok());
  NamedTensors t = {
      {"base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight",
       torch::randn({4, 64})},
      {"base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight",
       torch::randn({64, 4})},
      {"base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight", torch::randn({2, 64})},
      {"base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight", torch::randn({64, 2})},
  };
  ASSERT_TRUE(
      WriteTensors(dir.Join("foreign/adapter_model.safetensors"), t, torch::kFloat16, {}).ok());
  LlamaForCausalLM model = MakeModel(c);
  auto imported = ImportPeftAdapter(*model, dir.Join("foreign"));
  ASSERT_TRUE(imported.ok()) << imported.status();
  ASSERT_EQ(imported->report.modules.size(), 2u);
  auto params = model->named_parameters();
  EXPECT_TRUE(torch::equal(params["model.layers.1.self_attn.q_proj.lora_a.weight"],
                           t[0].second.to(torch::kFloat16).to(torch::kFloat32)));
  EXPECT_DOUBLE_EQ(AdaptedLinears(*model)[1].second->scale(), 32.0 / 2);
  // Re-export: PEFT must get back exactly these two modules.
  ASSERT_TRUE(ExportPeftAdapter(*model, imported->config.lora, dir.Join("again"), {}).ok());
  auto again = *ReadJsonFile(dir.Join("again/adapter_config.json"));
  EXPECT_EQ(again["target_modules"], ".*layers\\.1.*(q|o)_proj");
}

TEST(PeftAdapterTest, ImportErrorsNameTheProblem) {
  testing::TempDir dir;
  LlamaConfig c = Config();
  auto write = [&](const std::string& name, nlohmann::json config, const NamedTensors& tensors) {
    std::string d = dir.Join(name);
    EXPECT_TRUE(MakeDirectories(d).ok());
    EXPECT_TRUE(WriteFileAtomically(JoinPath(d, "adapter_config.json"), config.dump()).ok());
    if (!tensors.empty()) {
      EXPECT_TRUE(
          WriteTensors(JoinPath(d, "adapter_model.safetensors"), tensors, torch::kFloat32, {})
              .ok());
    }
    return d;
  };
  nlohmann::json ok = {
      {"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj"}}};
  const std::string qa = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  const std::string qb = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
  struct Case {
    std::string dir;
    const char* phrase;
  };
  nlohmann::json dora = ok;
  dora["use_dora"] = true;
  nlohmann::json prefix = ok;
  prefix["peft_type"] = "PREFIX_TUNING";
  nlohmann::json save = ok;
  save["modules_to_save"] = {"lm_head"};
  std::vector<Case> cases = {
      {dir.Join("absent"), "adapter directory does not exist"},
      {write("dora", dora, {{qa, torch::zeros({4, 64})}, {qb, torch::zeros({64, 4})}}), "use_dora"},
      {write("prefix", prefix, {{qa, torch::zeros({4, 64})}}), "peft_type"},
      {write("save", save, {{qa, torch::zeros({4, 64})}}), "modules_to_save"},
      {write("noweights", ok, {}), "adapter_model.safetensors: missing"},
      {write("onlyA", ok, {{qa, torch::zeros({4, 64})}}), "has lora_A but no lora_B"},
      {write("shape", ok, {{qa, torch::zeros({4, 60})}, {qb, torch::zeros({64, 4})}}),
       "does not fit in_features 64"},
      {write("rank", ok, {{qa, torch::zeros({3, 64})}, {qb, torch::zeros({64, 3})}}),
       "rank 3 disagrees"},
      {write("nomodule", ok,
             {{"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
               torch::zeros({4, 64})},
              {"base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight",
               torch::zeros({64, 4})}}),
       "no Linear module 'model.layers.7.self_attn.q_proj'"},
      {write("embedding", ok,
             {{"base_model.model.model.embed_tokens.lora_embedding_A", torch::zeros({4, 96})}}),
       "embedding LoRA adapters are not supported"},
      {write("prefixkey", ok,
             {{"model.layers.0.self_attn.q_proj.lora_A.weight", torch::zeros({4, 64})}}),
       "does not start with 'base_model.model.'"},
  };
  for (const Case& k : cases) {
    LlamaForCausalLM model = MakeModel(c);
    auto imported = ImportPeftAdapter(*model, k.dir);
    ASSERT_FALSE(imported.ok()) << k.phrase;
    EXPECT_THAT(std::string(imported.status().message()), HasSubstr(k.phrase));
    EXPECT_TRUE(AdaptedLinears(*model).empty()) << "a failed import must leave the model as it was";
  }
}

TEST(PeftAdapterTest, RefusesToOverwriteForeignDirectories) {
  testing::TempDir dir;
  std::ofstream(dir.Join("precious.txt")) << "keep me";
  LlamaForCausalLM model = MakeModel(Config());
  ASSERT_TRUE(ConvertToLora(*model, TestLoraConfig()).ok());
  absl::Status s = ExportPeftAdapter(*model, TestLoraConfig(), dir.path(), {});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(fs::exists(dir.Join("precious.txt")));
  // Replacing our own earlier output is fine, and leaves no staging directories behind.
  ASSERT_TRUE(ExportPeftAdapter(*model, TestLoraConfig(), dir.Join("out"), {}).ok());
  ASSERT_TRUE(ExportPeftAdapter(*model, TestLoraConfig(), dir.Join("out"), {}).ok());
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path()))
    entries += e.path().filename() != "precious.txt";
  EXPECT_EQ(entries, 1);
}

// ---------------------------------------------------------------- training checkpoints

// trainer_state.json exactly as lora-train has always written it (one process, then a rank of
// a mesh): read into TrainerState and written back byte for byte, so older checkpoints resume.
TEST(TrainerStateTest, ReadsAndRewritesTheExistingFormat) {
  const std::string single = R"({
  "data_cursor_windows": 12,
  "eval_loss": null,
  "format_version": 1,
  "initial_eval_loss": 6.311512791833212,
  "optimizer_step": 3,
  "step": 3,
  "tokens": 768,
  "train_loss": 6.257533281698994,
  "world_size": 1
}
)";
  auto s = ParseTrainerState(single);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->step, 3);
  EXPECT_EQ(s->optimizer_step, 3);
  EXPECT_EQ(s->tokens, 768);
  EXPECT_EQ(s->data_cursor_windows, 12);
  EXPECT_DOUBLE_EQ(s->train_loss, 6.257533281698994);
  EXPECT_TRUE(std::isnan(s->eval_loss)) << "null is a loss never computed";
  EXPECT_DOUBLE_EQ(s->initial_eval_loss, 6.311512791833212);
  EXPECT_EQ(s->world_size, 1);
  EXPECT_EQ(s->mesh, "");
  EXPECT_EQ(FormatTrainerState(*s), single);

  const std::string ranks = R"({
  "data_cursor_windows": 24,
  "eval_loss": 2.5,
  "format_version": 1,
  "initial_eval_loss": null,
  "mesh": "pp 2 x dp_shard 2",
  "optimizer_step": 3,
  "step": 3,
  "tokens": 1536,
  "train_loss": 2.75,
  "world_size": 4
}
)";
  auto r = ParseTrainerState(ranks);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->world_size, 4);
  EXPECT_EQ(r->mesh, "pp 2 x dp_shard 2");
  EXPECT_TRUE(std::isnan(r->initial_eval_loss));
  EXPECT_EQ(FormatTrainerState(*r), ranks);

  // Only "step" is required; AdamW's count defaults to it.
  auto minimal = ParseTrainerState(R"({"step": 7})");
  ASSERT_TRUE(minimal.ok()) << minimal.status();
  EXPECT_EQ(minimal->optimizer_step, 7);
  EXPECT_TRUE(std::isnan(minimal->train_loss));
}

TEST(TrainerStateTest, RefusesWhatItCannotTrust) {
  struct Case {
    const char* text;
    absl::StatusCode code;
    const char* phrase;
  };
  for (const Case& c : std::vector<Case>{
           {"[1]", absl::StatusCode::kDataLoss, "not a JSON object"},
           {R"({"step": 3)", absl::StatusCode::kDataLoss, "not a JSON object"},
           {R"({"tokens": 3})", absl::StatusCode::kDataLoss, "missing \"step\""},
           {R"({"step": "3"})", absl::StatusCode::kDataLoss, "\"step\" must be an integer"},
           {R"({"step": 3, "train_loss": "low"})", absl::StatusCode::kDataLoss,
            "\"train_loss\" must be a number or null"},
           {R"({"step": 3, "learning_rate": 0.1})", absl::StatusCode::kDataLoss,
            "unknown key \"learning_rate\""},
           {R"({"step": 3, "format_version": 2})", absl::StatusCode::kFailedPrecondition,
            "later lora-train"},
       }) {
    auto s = ParseTrainerState(c.text);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_EQ(s.status().code(), c.code) << c.text;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(c.phrase)) << c.text;
  }
}

class TrainingCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeModel(Config());
    lora_ = TestLoraConfig();
    ASSERT_TRUE(ConvertToLora(*model_, lora_).ok());
  }
  // step-N under run_, its adapters and moments filled with N.
  void Save(int64_t step, const CheckpointRetention& retention = {}) {
    torch::NoGradGuard no_grad;
    for (const auto& item : model_->named_parameters()) {
      if (item.value().requires_grad()) item.value().fill_(static_cast<double>(step));
    }
    CheckpointContents c;
    c.adapters = AdapterRecords(*model_);
    c.modules = ListModules(*model_);
    c.lora = &lora_;
    c.base_model = "tiny";
    c.optimizer_state = {{"exp_avg.x", torch::full({3}, static_cast<double>(step))}};
    c.optimizer_step = step;
    c.state.step = step;
    c.state.optimizer_step = step;
    c.state.tokens = 100 * step;
    auto info = SaveTrainingCheckpoint(run_.path(), c, retention);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->files.size(), 5u);
  }
  std::string StepDir(int64_t step) const {
    return run_.Join("checkpoints/" + CheckpointDirName(step));
  }

  LlamaForCausalLM model_{nullptr};
  LoraConfig lora_;
  testing::TempDir run_;
};

TEST_F(TrainingCheckpointTest, KeepLatestDeletesTheOldestStepDirectories) {
  for (int64_t step : {5, 10, 15, 20}) Save(step, {2});
  EXPECT_FALSE(fs::exists(StepDir(5)));
  EXPECT_FALSE(fs::exists(StepDir(10)));
  EXPECT_TRUE(fs::exists(StepDir(15)));
  EXPECT_TRUE(fs::exists(StepDir(20)));
}

// lora-worker uploads a checkpoint after the engine reports it; a fast engine used to delete
// step directories the worker had not uploaded yet, so the controller never recorded them.
TEST_F(TrainingCheckpointTest, KeepLatestNeverDeletesAStepTheLauncherHasNotCopied) {
  CheckpointRetention retention;
  retention.keep_latest = 1;
  retention.copied_through_step = 0;
  for (int64_t step : {5, 10, 15}) Save(step, retention);
  for (int64_t step : {5, 10, 15}) EXPECT_TRUE(fs::exists(StepDir(step))) << step;
  retention.copied_through_step = 10;  // the launcher caught up with step 10
  Save(20, retention);
  EXPECT_FALSE(fs::exists(StepDir(5)));
  EXPECT_FALSE(fs::exists(StepDir(10)));
  EXPECT_TRUE(fs::exists(StepDir(15)));  // beyond keep_latest, but not copied yet
  EXPECT_TRUE(fs::exists(StepDir(20)));
}

TEST(CopiedThroughStepTest, AMissingOrGarbledFileMeansNothingWasCopied) {
  testing::TempDir dir;
  EXPECT_EQ(ReadCopiedThroughStep(dir.Join("absent")), 0);
  std::ofstream(dir.Join("garbled")) << "ten";
  EXPECT_EQ(ReadCopiedThroughStep(dir.Join("garbled")), 0);
  std::ofstream(dir.Join("negative")) << "-4";
  EXPECT_EQ(ReadCopiedThroughStep(dir.Join("negative")), 0);
  std::ofstream(dir.Join("good")) << "40\n";
  EXPECT_EQ(ReadCopiedThroughStep(dir.Join("good")), 40);
}

TEST_F(TrainingCheckpointTest, ResumeLoadsTheNewestIntactCheckpointNamingTheCorruptOnes) {
  for (int64_t step : {1, 2, 3}) Save(step);
  // step 3: one flipped byte; step 2: a truncated file.
  const std::string adapter = StepDir(3) + "/adapter/adapter_model.safetensors";
  std::string bytes = *ReadFileToString(adapter);
  bytes[bytes.size() - 2] ^= 0x10;
  std::ofstream(adapter, std::ios::binary | std::ios::trunc) << bytes;
  fs::resize_file(StepDir(2) + "/optimizer.safetensors",
                  fs::file_size(StepDir(2) + "/optimizer.safetensors") - 1);

  for (const std::string& from : {run_.path(), run_.Join("checkpoints")}) {
    std::vector<std::pair<std::string, absl::Status>> skipped;
    auto loaded = LoadLatestCheckpoint(
        from, torch::kCPU,
        [&](const std::string& dir, const absl::Status& s) { skipped.emplace_back(dir, s); });
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->dir, StepDir(1));
    EXPECT_EQ(loaded->state.step, 1);
    EXPECT_EQ(loaded->state.tokens, 100);
    ASSERT_FALSE(loaded->adapters.empty());
    EXPECT_EQ(loaded->adapters[0].a.max().item<float>(), 1.0f);
    ASSERT_EQ(loaded->optimizer_state.size(), 1u);
    EXPECT_TRUE(torch::equal(loaded->optimizer_state[0].second, torch::full({3}, 1.0f)));
    ASSERT_EQ(skipped.size(), 2u);
    EXPECT_EQ(skipped[0].first, StepDir(3));
    EXPECT_EQ(skipped[0].second.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(skipped[0].second.message()),
                AllOf(HasSubstr("adapter_model.safetensors"), HasSubstr("sha256 mismatch")));
    EXPECT_EQ(skipped[1].first, StepDir(2));
    EXPECT_THAT(std::string(skipped[1].second.message()),
                AllOf(HasSubstr("optimizer.safetensors"), HasSubstr("the manifest says")));
  }

  // A step directory named outright is loaded or refused, never swapped for another.
  auto named = LoadLatestCheckpoint(StepDir(3), torch::kCPU, nullptr);
  EXPECT_EQ(named.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(named.status().message()), HasSubstr("adapter_model.safetensors"));
  EXPECT_TRUE(LoadLatestCheckpoint(StepDir(1), torch::kCPU, nullptr).ok());

  // Nothing intact, or nothing at all, is an error.
  fs::remove(StepDir(1) + "/trainer_state.json");
  auto none = LoadLatestCheckpoint(run_.path(), torch::kCPU, nullptr);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("every checkpoint is corrupt"));
  testing::TempDir empty;
  EXPECT_EQ(LoadLatestCheckpoint(empty.path(), torch::kCPU, nullptr).status().code(),
            absl::StatusCode::kNotFound);
}

// The manifest and trainer_state.json a checkpoint holds are the ones the event reports.
TEST_F(TrainingCheckpointTest, ManifestListsEveryFileWithItsSizeAndDigest) {
  Save(4);
  EXPECT_TRUE(VerifyCheckpoint(StepDir(4)).ok());
  auto manifest = ReadJsonFile(StepDir(4) + "/manifest.json");
  ASSERT_TRUE(manifest.ok());
  EXPECT_EQ((*manifest)["step"], 4);
  ASSERT_EQ((*manifest)["files"].size(), 5u);
  for (const auto& f : (*manifest)["files"]) {
    const std::string path = StepDir(4) + "/" + f["path"].get<std::string>();
    EXPECT_EQ(f["bytes"].get<uint64_t>(), fs::file_size(path)) << path;
    EXPECT_EQ(f["sha256"], *Sha256File(path)) << path;
  }
  auto state = ParseTrainerState(*ReadFileToString(StepDir(4) + "/trainer_state.json"));
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->tokens, 400);
}

}  // namespace
}  // namespace lora
