#include <torch/torch.h>

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/engine/data/batcher.h"
#include "worker/engine/data/examples.h"
#include "worker/engine/data/tokenizer.h"

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

TEST(TokenizerTest, ByteTokenizerRoundTripsUtf8) {
  ByteTokenizer tok;
  std::string text = "héllo, wörld";
  std::vector<int64_t> ids = tok.Encode(text);
  EXPECT_EQ(ids.size(), text.size());
  EXPECT_EQ(tok.Decode(ids), text);
  EXPECT_EQ(tok.vocab_size(), 258);
  auto made = MakeTokenizer("byte");
  ASSERT_TRUE(made.ok());
  EXPECT_FALSE(MakeTokenizer("/nonexistent/sp.model").ok());
}

TEST(ExamplesTest, FormatsAndLossMasks) {
  testing::TempDir dir;
  ByteTokenizer tok;
  std::ofstream(dir.Join("pc.jsonl")) << R"({"prompt": "ab", "completion": "cd"})"
                                      << "\n\n";
  auto pc = LoadExamples(FileDataset(dir.Join("pc.jsonl"), "prompt_completion"), tok, 300);
  ASSERT_TRUE(pc.ok()) << pc.status();
  ASSERT_EQ(pc->size(), 1u);
  EXPECT_THAT((*pc)[0].tokens, ElementsAre(256, 'a', 'b', 'c', 'd', 257));
  EXPECT_THAT((*pc)[0].target, ElementsAre(0, 0, 0, 1, 1, 1));

  std::ofstream(dir.Join("t.jsonl")) << R"({"text": "hi"})"
                                     << "\n";
  auto text = LoadExamples(FileDataset(dir.Join("t.jsonl"), "text"), tok, 300);
  ASSERT_TRUE(text.ok());
  EXPECT_THAT((*text)[0].tokens, ElementsAre(256, 'h', 'i', 257));
  EXPECT_THAT((*text)[0].target, ElementsAre(0, 1, 1, 1));  // BOS is never predicted

  std::ofstream(dir.Join("ids.jsonl")) << R"({"input_ids": [5, 6, 7]})"
                                       << "\n";
  auto ids = LoadExamples(FileDataset(dir.Join("ids.jsonl"), "input_ids"), tok, 300);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT((*ids)[0].tokens, ElementsAre(5, 6, 7));
}

TEST(ExamplesTest, MalformedLinesNameFileAndLine) {
  testing::TempDir dir;
  ByteTokenizer tok;
  struct Case {
    const char* content;
    const char* format;
    const char* phrase;
  };
  std::vector<Case> cases = {
      {"{\"text\": \"ok\"}\n{\"text\": 5}\n", "text", "bad.jsonl:2: \"text\" must be a string"},
      {"{\"text\": \"ok\"}\n{oops\n", "text", "bad.jsonl:2: invalid JSON"},
      {"{\"prompt\": \"a\"}\n", "prompt_completion", "bad.jsonl:1: missing \"completion\""},
      {"{\"input_ids\": [1, 999]}\n", "input_ids",
       "bad.jsonl:1: token id 999 is outside the model's vocabulary"},
      {"[1, 2]\n", "text", "bad.jsonl:1: expected a JSON object"},
      {"\n\n", "text", "dataset has no examples"},
  };
  for (const Case& c : cases) {
    std::ofstream(dir.Join("bad.jsonl")) << c.content;
    auto r = LoadExamples(FileDataset(dir.Join("bad.jsonl"), c.format), tok, 300);
    ASSERT_FALSE(r.ok()) << c.phrase;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.phrase));
  }
  auto missing = LoadExamples(FileDataset(dir.Join("none.jsonl"), "text"), tok, 300);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(ExamplesTest, BuiltinDatasetsAreDeterministic) {
  ByteTokenizer tok;
  auto a = GenerateExamples("synthetic-arith", 50, tok);
  auto b = GenerateExamples("synthetic-arith", 50, tok);
  ASSERT_TRUE(a.ok());
  for (size_t i = 0; i < a->size(); ++i) EXPECT_EQ((*a)[i].tokens, (*b)[i].tokens);
  std::string first = tok.Decode((*a)[0].tokens);
  size_t plus = first.find('+'), eq = first.find('=');
  ASSERT_NE(plus, std::string::npos);
  ASSERT_NE(eq, std::string::npos);
  EXPECT_EQ(std::stoi(first.substr(0, plus)) + std::stoi(first.substr(plus + 1, eq - plus - 1)),
            std::stoi(first.substr(eq + 1)));
  EXPECT_TRUE(GenerateExamples("synthetic-text", 5, tok).ok());
  EXPECT_FALSE(GenerateExamples("imagenet", 5, tok).ok());
}

TEST(ExamplesTest, SplitIsDeterministicAndDisjoint) {
  ByteTokenizer tok;
  auto examples = *GenerateExamples("synthetic-arith", 100, tok);
  DatasetSplit a = SplitExamples(examples, 0.1), b = SplitExamples(examples, 0.1);
  EXPECT_EQ(a.validation.size(), 10u);
  EXPECT_EQ(a.train.size(), 90u);
  for (size_t i = 0; i < a.validation.size(); ++i)
    EXPECT_EQ(a.validation[i].tokens, b.validation[i].tokens);
  EXPECT_EQ(SplitExamples(examples, 0.0).validation.size(), 0u);
  EXPECT_EQ(SplitExamples({examples[0], examples[1]}, 0.001).validation.size(), 1u);
}

Example Ex(std::vector<int64_t> tokens, std::vector<uint8_t> target = {}) {
  if (target.empty()) target.assign(tokens.size(), 1);
  return {std::move(tokens), std::move(target)};
}

TEST(BatcherTest, PackingMasksDocumentBoundaries) {
  // Two documents: [1 2 3] and [4 5 6 7], window of 6 tokens (+1 target).
  Batcher b({Ex({1, 2, 3}), Ex({4, 5, 6, 7}, {0, 0, 1, 1})},
            {.seq_len = 6, .pack = true, .seed = 0, .shuffle = false});
  EXPECT_EQ(b.windows_per_epoch(), 1);
  Batch batch = b.MakeBatch(0, 1);
  auto row = [](const torch::Tensor& t) {
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  };
  EXPECT_THAT(row(batch.input_ids), ElementsAre(1, 2, 3, 4, 5, 6));
  // 3 -> 4 crosses documents; 4 -> 5 has target 0 (prompt); 5 -> 6 and 6 -> 7 count.
  EXPECT_THAT(row(batch.targets), ElementsAre(2, 3, -100, -100, 6, 7));
  EXPECT_THAT(row(batch.position_ids), ElementsAre(0, 1, 2, 0, 1, 2));
  EXPECT_THAT(row(batch.document_ids), ElementsAre(0, 0, 0, 1, 1, 1));
  EXPECT_EQ(batch.num_targets, 4);
}

TEST(BatcherTest, StreamIsAFunctionOfPosition) {
  ByteTokenizer tok;
  auto examples = *GenerateExamples("synthetic-text", 200, tok);
  BatcherOptions o{.seq_len = 32, .pack = true, .seed = 7, .shuffle = true};
  Batcher a(examples, o), b(examples, o);
  const int64_t per_epoch = a.windows_per_epoch();
  // b jumps straight to a later batch (as a resumed run does) and must agree with a.
  Batch from_b = b.MakeBatch(per_epoch + 5, 4);
  for (int64_t i = 0; i < per_epoch + 5; i += 4) a.MakeBatch(i, 4);
  Batch from_a = a.MakeBatch(per_epoch + 5, 4);
  EXPECT_TRUE(torch::equal(from_a.input_ids, from_b.input_ids));
  EXPECT_TRUE(torch::equal(from_a.targets, from_b.targets));
  // Epochs are reshuffled; seeds differ.
  EXPECT_FALSE(torch::equal(a.MakeBatch(0, 4).input_ids, a.MakeBatch(per_epoch, 4).input_ids));
  Batcher c(examples, {.seq_len = 32, .pack = true, .seed = 8, .shuffle = true});
  EXPECT_FALSE(torch::equal(c.MakeBatch(0, 4).input_ids, b.MakeBatch(0, 4).input_ids));
}

TEST(BatcherTest, UnpackedRowsArePaddedAndTruncated) {
  Batcher b({Ex({1, 2, 3}), Ex({4, 5, 6, 7, 8, 9})},
            {.seq_len = 4, .pack = false, .seed = 0, .shuffle = false});
  EXPECT_EQ(b.windows_per_epoch(), 2);
  Batch batch = b.MakeBatch(0, 2);
  EXPECT_FALSE(batch.document_ids.defined());
  EXPECT_TRUE(torch::equal(batch.input_ids,
                           torch::tensor({1, 2, 3, 0, 4, 5, 6, 7}, torch::kInt64).view({2, 4})));
  EXPECT_TRUE(torch::equal(
      batch.targets, torch::tensor({2, 3, -100, -100, 5, 6, 7, 8}, torch::kInt64).view({2, 4})));
  EXPECT_EQ(batch.Slice(1, 1).num_targets, 4);
}

}  // namespace
}  // namespace lora

namespace lora {
namespace {

// A real SentencePiece model, trained here with spm_train (Debian's sentencepiece package), loaded
// through the plugin.
TEST(TokenizerTest, SentencePieceModelLoadsAndRoundTrips) {
  testing::TempDir dir;
  {
    std::ofstream corpus(dir.Join("corpus.txt"));
    for (int i = 0; i < 200; ++i)
      corpus << "the quick brown fox " << i << " jumps over the lazy dog\n";
  }
  std::string cmd = "spm_train --input=" + dir.Join("corpus.txt") +
                    " --model_prefix=" + dir.Join("sp") +
                    " --vocab_size=60 --model_type=bpe > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0)
      << "spm_train failed (is the sentencepiece package installed?)";
  auto tok = MakeTokenizer(dir.Join("sp.model"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 60);
  std::vector<int64_t> ids = (*tok)->Encode("the lazy dog");
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ((*tok)->Decode(ids), "the lazy dog");
  EXPECT_GE((*tok)->eos_id(), 0);
  std::ofstream(dir.Join("bad.model")) << "not a model";
  auto bad = MakeTokenizer(dir.Join("bad.model"));
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("model.tokenizer: cannot load SentencePiece model"));
}

}  // namespace
}  // namespace lora
