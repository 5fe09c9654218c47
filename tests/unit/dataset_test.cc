// Dataset formats beyond plain text: input_ids with labels or a loss mask, format detection,
// a held-out validation file, and epochs turned into steps.
#include <fstream>

#include "nlohmann/json.hpp"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/engine/data/examples.h"
#include "worker/engine/data/tokenizer.h"
#include "worker/engine/data/training_data.h"

namespace lora {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

lora::v1::DatasetSection FileDataset(const std::string& path, const std::string& format) {
  lora::v1::DatasetSection d;
  d.set_path(path);
  d.set_format(format);
  return d;
}

TEST(DatasetTest, InputIdsCarryLabelsOrALossMask) {
  testing::TempDir dir;
  ByteTokenizer tok;
  std::ofstream(dir.Join("d.jsonl"))
      << R"({"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]})"
      << "\n"
      << R"({"input_ids": [5, 6, 7], "loss_mask": [0, 1, 0]})"
      << "\n"
      << R"({"input_ids": [9, 10]})"
      << "\n";
  auto r = LoadExamples(FileDataset(dir.Join("d.jsonl"), "input_ids"), tok, 300);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_THAT((*r)[0].target, ElementsAre(0, 0, 1, 1));
  EXPECT_THAT((*r)[1].target, ElementsAre(0, 1, 0));
  EXPECT_THAT((*r)[2].target, ElementsAre(1, 1));
}

TEST(DatasetTest, BadLabelsAndMasksNameTheLineAndTheEntry) {
  testing::TempDir dir;
  ByteTokenizer tok;
  struct Case {
    const char* line;
    const char* phrase;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"input_ids": [5, 6], "labels": [5]})", "d.jsonl:1: \"labels\" has 1 entries but"},
           {R"({"input_ids": [5, 6], "labels": [5, 9]})", "d.jsonl:1: labels[1] is 9"},
           {R"({"input_ids": [5, 6], "loss_mask": [1, 2]})",
            "d.jsonl:1: loss_mask[1] must be 0 or 1"},
           {R"({"input_ids": [5, 6], "labels": [5, 6], "loss_mask": [1, 1]})", "not both"},
           {R"({"input_ids": [5, 6], "labels": "x"})", "\"labels\" must be a list of integers"},
       }) {
    std::ofstream(dir.Join("d.jsonl")) << c.line << "\n";
    auto r = LoadExamples(FileDataset(dir.Join("d.jsonl"), "input_ids"), tok, 300);
    ASSERT_FALSE(r.ok()) << c.line;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.phrase));
  }
}

TEST(DatasetTest, AutoDetectsTheFormatAndHoldsEveryLineToIt) {
  testing::TempDir dir;
  ByteTokenizer tok;
  std::ofstream(dir.Join("pc.jsonl")) << R"({"prompt": "a", "completion": "b"})"
                                      << "\n";
  auto pc = LoadExamples(FileDataset(dir.Join("pc.jsonl"), "auto"), tok, 300);
  ASSERT_TRUE(pc.ok()) << pc.status();
  EXPECT_THAT((*pc)[0].target, ElementsAre(0, 0, 1, 1));

  std::ofstream(dir.Join("mixed.jsonl")) << R"({"text": "abc"})"
                                         << "\n\n"
                                         << R"({"input_ids": [1, 2]})"
                                         << "\n";
  auto mixed = LoadExamples(FileDataset(dir.Join("mixed.jsonl"), "auto"), tok, 300);
  ASSERT_FALSE(mixed.ok());
  EXPECT_THAT(std::string(mixed.status().message()),
              HasSubstr("mixed.jsonl:3: this line is not in the dataset's format \"text\" "
                        "(detected from line 1)"));

  std::ofstream(dir.Join("odd.jsonl")) << R"({"question": "?"})"
                                       << "\n";
  auto odd = LoadExamples(FileDataset(dir.Join("odd.jsonl"), "auto"), tok, 300);
  ASSERT_FALSE(odd.ok());
  EXPECT_THAT(std::string(odd.status().message()),
              HasSubstr("odd.jsonl:1: cannot tell the dataset's format"));
}

TEST(DatasetTest, ATokenizerLargerThanTheModelIsRefusedNamingBothSizes) {
  testing::TempDir dir;
  ByteTokenizer tok;  // 258 ids
  std::ofstream(dir.Join("t.jsonl")) << R"({"text": "abc"})"
                                     << "\n";
  auto r = LoadExamples(FileDataset(dir.Join("t.jsonl"), "text"), tok, 200);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("the tokenizer has 258 tokens but the model's embeddings have only 200"));
}

TEST(DatasetTest, AValidationFileReplacesTheFraction) {
  testing::TempDir dir;
  std::ofstream train(dir.Join("train.jsonl"));
  for (int i = 0; i < 20; ++i)
    train << R"({"text": "train line"})"
          << "\n";
  train.close();
  std::ofstream(dir.Join("val.jsonl")) << R"({"text": "held out"})"
                                       << "\n"
                                       << R"({"text": "held out too"})"
                                       << "\n";
  lora::v1::JobSpec spec;
  spec.mutable_model()->set_tokenizer("byte");
  *spec.mutable_dataset() = FileDataset(dir.Join("train.jsonl"), "auto");
  spec.mutable_dataset()->set_validation_path(dir.Join("val.jsonl"));
  auto data = LoadTrainingData(spec, 300);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->train.size(), 20u);
  ASSERT_EQ(data->validation.size(), 2u);
  EXPECT_EQ(data->tokenizer->Decode(data->validation[1].tokens), "held out too");

  spec.mutable_dataset()->set_validation_path(dir.Join("missing.jsonl"));
  EXPECT_EQ(LoadTrainingData(spec, 300).status().code(), absl::StatusCode::kNotFound);
}

TEST(DatasetTest, EpochsBecomeStepsRoundedUp) {
  lora::v1::TrainingSection t;
  t.set_steps(7);
  EXPECT_EQ(TotalSteps(t, 1000, 16), 7);  // steps as given
  t.clear_steps();
  t.set_epochs(1);
  EXPECT_EQ(TotalSteps(t, 1000, 16), 63);  // 1000 / 16 = 62.5
  t.set_epochs(2.5);
  EXPECT_EQ(TotalSteps(t, 1000, 16), 157);
  t.set_epochs(0.001);
  EXPECT_EQ(TotalSteps(t, 10, 16), 1);
}

// Chat data, judged by transformers (tests/python/chat_data.py, run at build time): the ids
// equal apply_chat_template's, and the loss mask equals the one found from the tokenizer's
// character offsets, for the Llama 3, Qwen2.5 (ChatML) and Mistral templates.
class ChatDataTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatDataTest, IdsAndLossMaskEqualTransformers) {
  const std::string dir = std::string(LORA_BINARY_DIR) + "/tests/chat_data/" + GetParam();
  auto tok = MakeTokenizer(dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto examples =
      LoadExamples(FileDataset(dir + "/data.jsonl", "auto"), **tok, (*tok)->vocab_size());
  ASSERT_TRUE(examples.ok()) << examples.status();
  std::ifstream in(dir + "/reference.json");
  const nlohmann::json ref = nlohmann::json::parse(in);
  ASSERT_EQ(examples->size(), ref.size());
  int64_t trained = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    SCOPED_TRACE(ref[i]["text"].get<std::string>());
    EXPECT_EQ((*examples)[i].tokens, ref[i]["ids"].get<std::vector<int64_t>>());
    std::vector<int> mask((*examples)[i].target.begin(), (*examples)[i].target.end());
    EXPECT_EQ(mask, ref[i]["mask"].get<std::vector<int>>());
    for (uint8_t t : (*examples)[i].target) trained += t;
  }
  EXPECT_GT(trained, 0);
}

INSTANTIATE_TEST_SUITE_P(Templates, ChatDataTest, ::testing::Values("llama3", "qwen2", "mistral"));

TEST(ChatData, BadMessagesNameTheLineAndTheField) {
  testing::TempDir dir;
  const std::string tok_dir = std::string(LORA_BINARY_DIR) + "/tests/chat_data/qwen2";
  auto tok = MakeTokenizer(tok_dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  struct Case {
    const char* line;
    const char* phrase;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"messages": []})", "c.jsonl:1: \"messages\" must be a non-empty list"},
           {R"({"messages": [{"role": "robot", "content": "x"}]})",
            "c.jsonl:1: messages[0].role: must be \"system\", \"user\" or \"assistant\""},
           {R"({"messages": [{"role": "user", "content": 5}]})",
            "c.jsonl:1: messages[0].content: must be a string"},
           {R"({"messages": [{"role": "user", "content": "a", "weight": 0}]})",
            "messages[0].weight: only assistant turns are trained"},
           {R"({"messages": [{"role": "assistant", "content": "a", "weight": 0.5}]})",
            "messages[0].weight: must be 0 or 1"},
       }) {
    std::ofstream(dir.Join("c.jsonl")) << c.line << "\n";
    auto r = LoadExamples(FileDataset(dir.Join("c.jsonl"), "messages"), **tok, 100000);
    ASSERT_FALSE(r.ok()) << c.line;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.phrase));
  }
  // A tokenizer without a chat template: an error naming model.tokenizer, not a default format.
  ByteTokenizer bytes;
  std::ofstream(dir.Join("c.jsonl")) << R"({"messages": [{"role": "user", "content": "a"}]})"
                                     << "\n";
  auto none = LoadExamples(FileDataset(dir.Join("c.jsonl"), "auto"), bytes, 300);
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("model.tokenizer: the tokenizer has no chat_template"));
}

// Issue 12: a dataset line nested 100,000 deep is an error naming the file and line.
TEST(DatasetTest, ADeeplyNestedLineIsAnErrorNotACrash) {
  testing::TempDir dir;
  ByteTokenizer tok;
  std::ofstream(dir.Join("deep.jsonl")) << R"({"text": "ok"})"
                                        << "\n"
                                        << std::string(100000, '[') << "\n";
  auto r = LoadExamples(FileDataset(dir.Join("deep.jsonl"), "auto"), tok, 300);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("deep.jsonl:2: nested deeper than 64 levels"));
}

// Issue 12, finding 6: dataset.path = /dev/zero grew lora-train to gigabytes. Only regular
// files are read, and a line has a size cap.
TEST(DatasetTest, ADeviceIsNotADataset) {
  ByteTokenizer tok;
  auto r = LoadExamples(FileDataset("/dev/zero", "auto"), tok, 300);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("/dev/zero: not a regular file"));
}

}  // namespace
}  // namespace lora
