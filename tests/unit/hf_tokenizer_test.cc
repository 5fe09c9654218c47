// tokenizer.json support against its judge: tests/python/make_tokenizers.py trains tokenizers
// of each supported shape with the `tokenizers` library and records its ids and decodes for
// every line of tests/data/tokenizer_corpus.txt, blocks of lines and random awkward strings;
// lora's must agree token for token. The error cases follow.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "worker/engine/data/hf_tokenizer.h"
#include "worker/engine/data/sentencepiece_pieces.h"
#include "worker/engine/data/tokenizer.h"
#include "worker/engine/data/unicode.h"

namespace lora {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Runs the reference script for `configs` into `dir`. A missing Python or library is a failure:
// these tests are the only judge of the tokenizer.
::testing::AssertionResult MakeReference(const std::string& dir, const std::string& configs) {
  const std::string cmd = std::string("HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false ") +
                          LORA_PYTHON + " " + LORA_SOURCE_DIR +
                          "/tests/python/make_tokenizers.py --corpus " + LORA_SOURCE_DIR +
                          "/tests/data/tokenizer_corpus.txt --out " + dir + " --configs " +
                          configs + " > " + dir + "/make.log 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    return ::testing::AssertionFailure() << "make_tokenizers.py failed (LORA_PYTHON=" << LORA_PYTHON
                                         << " needs the `tokenizers` of requirements.txt):\n"
                                         << ReadFile(dir + "/make.log");
  }
  return ::testing::AssertionSuccess();
}

struct Expectations {
  const char* name;
  bool byte_level_round_trip;  // Decode(Encode(x), keep specials) == x
  const char* bos;             // nullptr: bos_id() == -1
  const char* eos;
  bool has_chat_template;
};

class ReferenceTest : public ::testing::TestWithParam<Expectations> {};

TEST_P(ReferenceTest, MatchesTokenizersOnEveryText) {
  const Expectations& want = GetParam();
  testing::TempDir dir;
  ASSERT_TRUE(MakeReference(dir.path(), want.name));
  const std::string tok_dir = dir.Join(want.name);
  auto made = MakeTokenizer(tok_dir);  // a directory: tokenizer.json + tokenizer_config.json
  ASSERT_TRUE(made.ok()) << made.status();
  const auto* tok = dynamic_cast<const hf::HfTokenizer*>(made->get());
  ASSERT_NE(tok, nullptr);
  const json ref = json::parse(ReadFile(tok_dir + "/reference.json"));
  const auto& texts = ref["texts"];
  ASSERT_GT(texts.size(), 6000u);

  size_t tokens = 0, encode_bad = 0, special_bad = 0, decode_bad = 0, round_trip_bad = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    const auto plain = ref["plain"][i].get<std::vector<int64_t>>();
    const auto special = ref["special"][i].get<std::vector<int64_t>>();
    tokens += plain.size();
    const std::vector<int64_t> ids = tok->Encode(text);
    if (ids != plain && ++encode_bad <= 5) {
      ADD_FAILURE() << want.name << " text " << i << " encodes differently: " << json(text)
                    << "\n  lora:       " << json(ids) << "\n  tokenizers: " << json(plain);
    }
    if (tok->EncodeWithSpecialTokens(text) != special) ++special_bad;
    if (tok->Decode(special) != ref["decode"][i].get<std::string>() ||
        tok->Decode(special, false) != ref["decode_keep"][i].get<std::string>()) {
      if (++decode_bad <= 5) {
        ADD_FAILURE() << want.name << " text " << i
                      << " decodes differently: " << json(tok->Decode(special, false)) << " vs "
                      << ref["decode_keep"][i];
      }
    }
    if (want.byte_level_round_trip && tok->Decode(ids, false) != text) ++round_trip_bad;
  }
  std::cout << want.name << ": " << texts.size() << " texts, " << tokens
            << " tokens compared; mismatches: encode " << encode_bad << ", with special tokens "
            << special_bad << ", decode " << decode_bad << ", round trip " << round_trip_bad
            << "\n";
  EXPECT_EQ(encode_bad, 0u);
  EXPECT_EQ(special_bad, 0u);
  EXPECT_EQ(decode_bad, 0u);
  EXPECT_EQ(round_trip_bad, 0u);

  EXPECT_EQ(tok->vocab_size(), ref["vocab_size"].get<int64_t>());
  size_t id_bad = 0;
  for (int64_t id = 0; id < tok->vocab_size(); ++id) {
    const json& t = ref["id_to_token"][id];
    const std::string want_token = t.is_null() ? "" : t.get<std::string>();
    if (tok->IdToToken(id) != want_token) ++id_bad;
    if (!t.is_null() && tok->TokenId(want_token) != id) ++id_bad;
  }
  EXPECT_EQ(id_bad, 0u);
  EXPECT_EQ(tok->TokenId("definitely not a token \x01"), -1);
  EXPECT_EQ(tok->IdToToken(-5), "");
  EXPECT_EQ(tok->IdToToken(tok->vocab_size() + 10), "");

  if (want.bos == nullptr) {
    EXPECT_EQ(tok->bos_id(), -1);
  } else {
    EXPECT_EQ(tok->bos_id(), tok->TokenId(want.bos));
    EXPECT_GE(tok->bos_id(), 0);
    EXPECT_EQ(tok->bos_token(), want.bos);
  }
  EXPECT_EQ(tok->eos_id(), tok->TokenId(want.eos));
  EXPECT_GE(tok->eos_id(), 0);
  EXPECT_EQ(tok->eos_token(), want.eos);
  EXPECT_EQ(!tok->chat_template().empty(), want.has_chat_template);
  if (want.has_chat_template) {
    EXPECT_THAT(tok->chat_template(), HasSubstr("<|im_start|>"));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, ReferenceTest,
    ::testing::Values(
        // Config strings as plain strings; eos from tokenizer_config.json.
        Expectations{"llama3", true, "<|begin_of_text|>", "<|end_of_text|>", true},
        // eos_token as an object, chat_template as a list with a "default" entry, bos null.
        Expectations{"qwen2", false, nullptr, "<|im_end|>", true},
        // No tokenizer_config.json: eos detected among the special tokens.
        Expectations{"gpt2", true, nullptr, "<|endoftext|>", false},
        Expectations{"gpt2_prefix", false, nullptr, "<|endoftext|>", false},
        Expectations{"llama2", false, "<s>", "</s>", false},
        Expectations{"mistral", false, "<s>", "</s>", false},
        Expectations{"mistral_always", false, "<s>", "</s>", false}),
    [](const ::testing::TestParamInfo<Expectations>& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Hand-made files for the error cases.

// A small byte-level tokenizer.json: "ab" and "Ġa" merge, two added tokens.
json TinyByteLevel() {
  json j = json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [
      {"id": 258, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false,
       "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "PATTERN"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
              "ignore_merges": false, "vocab": {}, "merges": [["a", "b"], "Ġ a"]}})");
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  json& vocab = j["model"]["vocab"];
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::AppendUtf8(hf::ByteLevelCodePoint(static_cast<uint8_t>(b)), &s);
    vocab[s] = b;
  }
  vocab["ab"] = 256;
  vocab["Ġa"] = 257;
  return j;
}

absl::Status Load(const json& j) { return hf::HfTokenizer::FromJson(j, "t.json").status(); }

TEST(HfTokenizerTest, TinyFileEncodesAndDecodes) {
  auto tok = hf::HfTokenizer::FromJson(TinyByteLevel(), "t.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("ab a<|end|>"), (std::vector<int64_t>{256, 257, 258}));
  EXPECT_EQ((*tok)->Decode({256, 257, 258}), "ab a");
  EXPECT_EQ((*tok)->Decode({256, 257, 258}, false), "ab a<|end|>");
  EXPECT_EQ((*tok)->vocab_size(), 259);
  EXPECT_EQ((*tok)->eos_id(), -1);  // <|end|> is none of the usual names
  // Bytes that are not UTF-8 go through as bytes and come back.
  const std::string raw = "x\xff\xfe y";
  EXPECT_EQ((*tok)->Decode((*tok)->Encode(raw)), "x\xEF\xBF\xBD\xEF\xBF\xBD y");
  EXPECT_EQ((*tok)->Encode(raw).size(), 5u);
}

TEST(HfTokenizerTest, UnknownPatternIsRefused) {
  json j = TinyByteLevel();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = R"(\w+|SECRET_PATTERN)";
  absl::Status s = Load(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("pre_tokenizer"));
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("SECRET_PATTERN")));
  // One character off is still refused.
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,4}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  EXPECT_EQ(Load(j).code(), absl::StatusCode::kInvalidArgument);
  j = TinyByteLevel();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  EXPECT_THAT(std::string(Load(j).message()), HasSubstr("Isolated"));
  j = TinyByteLevel();
  j["pre_tokenizer"] = json::parse(R"({"type": "Whitespace"})");
  EXPECT_THAT(std::string(Load(j).message()), HasSubstr("pre_tokenizer: type Whitespace"));
}

TEST(HfTokenizerTest, UnsupportedComponentsAreRefusedByName) {
  struct Case {
    const char* pointer;
    const char* value;
    const char* phrase;
  };
  const Case cases[] = {
      {"/normalizer", R"({"type": "NFKC"})", "normalizer: type NFKC is not supported"},
      {"/normalizer", R"({"type": "MyOwnNormalizer"})", "normalizer: type (unknown)"},
      {"/normalizer", R"({"type": "Replace", "pattern": {"Regex": "x"}, "content": ""})",
       "normalizer: Replace supports only"},
      {"/model/type", R"("WordPiece")", "model: type WordPiece is not supported"},
      {"/model/dropout", "0.1", "model.dropout"},
      {"/model/continuing_subword_prefix", R"("##")", "model.continuing_subword_prefix"},
      {"/model/end_of_word_suffix", R"("</w>")", "model.end_of_word_suffix"},
      {"/model/unk_token", R"("<nope>")", "model.unk_token: is not in model.vocab"},
      {"/model/merges/0", R"("a b c")", "model.merges: entry 0"},
      {"/model/merges/0", R"(["a", "zz"])", "model.merges: entry 0 names a token"},
      {"/model/vocab/a", "-1", "model.vocab: id -1 is out of range"},
      {"/model/vocab/a", "99999999", "model.vocab: id 99999999 is out of range"},
      {"/decoder", R"({"type": "WordPiece"})", "decoder: type WordPiece is not supported"},
      {"/post_processor", R"({"type": "Mystery"})", "post_processor: type (unknown)"},
      {"/post_processor",
       R"({"type": "TemplateProcessing", "single": [{"Sequence": {"id": "B", "type_id": 0}}],
           "special_tokens": {}})",
       "post_processor: the single template may only hold sequence $A"},
      {"/added_tokens/0/id", "-3", "added_tokens[0]: id must be"},
  };
  for (const Case& c : cases) {
    json j = TinyByteLevel();
    j[json::json_pointer(c.pointer)] = json::parse(c.value);
    absl::Status s = Load(j);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.pointer << " " << c.value;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.phrase));
    EXPECT_THAT(std::string(s.message()), HasSubstr("t.json: "));
  }
}

TEST(HfTokenizerTest, BadFilesAreRefusedWithoutEchoingThem) {
  testing::TempDir dir;
  const std::string full = TinyByteLevel().dump();
  const std::vector<std::pair<std::string, std::string>> files = {
      {"truncated", full.substr(0, full.size() / 2)},
      {"garbage", std::string("\x00\xff\x13 SECRETGARBAGE", 18)},
      {"empty", ""},
      {"deep", std::string(100000, '[') + std::string(100000, ']')},
      {"deep_objects",
       [] {
         std::string s;
         for (int i = 0; i < 5000; ++i) s += "{\"k\":";
         return s + "1" + std::string(5000, '}');
       }()},
      {"not_object", "[1, 2, 3]"},
      {"bad_utf8", "{\"model\": \"\xff\xfe SECRETGARBAGE\"}"},
  };
  for (const auto& [name, content] : files) {
    const std::string path = dir.Join(name + ".json");
    WriteFile(path, content);
    auto tok = MakeTokenizer(path);
    ASSERT_FALSE(tok.ok()) << name;
    const std::string msg(tok.status().message());
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << name << ": " << msg;
    EXPECT_THAT(msg, HasSubstr("model.tokenizer: " + path)) << name;
    EXPECT_THAT(msg, Not(HasSubstr("SECRETGARBAGE"))) << name;
    EXPECT_THAT(msg, Not(HasSubstr("merges"))) << name << ": " << msg;
  }
  EXPECT_THAT(std::string(MakeTokenizer(dir.Join("deep.json")).status().message()),
              HasSubstr("nested deeper than 64"));
  // Brackets inside strings do not count as nesting.
  json j = TinyByteLevel();
  j["model"]["vocab"][std::string(200, '[')] = 258;
  WriteFile(dir.Join("brackets.json"), j.dump());
  EXPECT_TRUE(MakeTokenizer(dir.Join("brackets.json")).ok());
  // Size is checked before reading (a sparse file: no disk used).
  {
    std::ofstream(dir.Join("huge.json")) << "{}";
    fs::resize_file(dir.Join("huge.json"), hf::kMaxTokenizerJsonBytes + 1);
  }
  auto huge = MakeTokenizer(dir.Join("huge.json"));
  EXPECT_THAT(std::string(huge.status().message()), HasSubstr("allowed"));
}

TEST(HfTokenizerTest, DirectoryDetectionAndConfig) {
  testing::TempDir dir;
  // No tokenizer at all: an error naming model.tokenizer, except for built-in flavors.
  auto none = MakeTokenizerForModel("", dir.path());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("model.tokenizer"));
  auto builtin = MakeTokenizerForModel("", "");
  ASSERT_TRUE(builtin.ok());
  EXPECT_EQ((*builtin)->vocab_size(), 258);
  EXPECT_FALSE(MakeTokenizerForModel("", dir.Join("missing")).ok());
  EXPECT_EQ(MakeTokenizer(dir.Join("nope/tokenizer.json")).status().code(),
            absl::StatusCode::kNotFound);

  // tokenizer.model alone is taken (and here fails as a SentencePiece model).
  WriteFile(dir.Join("tokenizer.model"), "not a model");
  auto sp = MakeTokenizerForModel("", dir.path());
  EXPECT_THAT(std::string(sp.status().message()), HasSubstr("SentencePiece"));
  // tokenizer.json wins over tokenizer.model.
  WriteFile(dir.Join("tokenizer.json"), TinyByteLevel().dump());
  auto hf = MakeTokenizerForModel("", dir.path());
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ((*hf)->vocab_size(), 259);
  // model.tokenizer overrides the directory.
  auto forced = MakeTokenizerForModel("byte", dir.path());
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ((*forced)->vocab_size(), 258);

  // tokenizer_config.json: special tokens as strings or objects, templates as a string or a
  // list; an eos_token the tokenizer lacks is an error.
  WriteFile(dir.Join("tokenizer_config.json"),
            R"({"bos_token": {"content": "<|end|>", "lstrip": false}, "eos_token": "<|end|>",
                "chat_template": "{{ bos_token }}"})");
  auto with_config = MakeTokenizer(dir.path());
  ASSERT_TRUE(with_config.ok()) << with_config.status();
  EXPECT_EQ((*with_config)->eos_id(), 258);
  EXPECT_EQ((*with_config)->eos_token(), "<|end|>");
  EXPECT_EQ((*with_config)->bos_token(), "<|end|>");
  EXPECT_EQ((*with_config)->bos_id(), -1);  // no post-processor: nothing is prepended
  EXPECT_EQ((*with_config)->chat_template(), "{{ bos_token }}");
  WriteFile(dir.Join("tokenizer_config.json"),
            R"({"eos_token": "<|end|>", "chat_template": [{"name": "rag", "template": "x"}]})");
  EXPECT_EQ((*MakeTokenizer(dir.Join("tokenizer.json")))->chat_template(), "");
  WriteFile(dir.Join("tokenizer_config.json"), R"({"eos_token": "</nope>"})");
  EXPECT_THAT(std::string(MakeTokenizer(dir.path()).status().message()),
              HasSubstr("eos_token is not a token of this tokenizer"));
  WriteFile(dir.Join("tokenizer_config.json"), R"({"eos_token": 7})");
  EXPECT_THAT(std::string(MakeTokenizer(dir.path()).status().message()),
              HasSubstr("tokenizer_config.json: eos_token: must be a string"));
  WriteFile(dir.Join("tokenizer_config.json"), "{oops");
  EXPECT_THAT(std::string(MakeTokenizer(dir.path()).status().message()),
              HasSubstr("tokenizer_config.json: invalid JSON"));
}

TEST(HfTokenizerTest, AddedTokenOptions) {
  json j = TinyByteLevel();
  j["added_tokens"].push_back(json::parse(
      R"({"id": 259, "content": "<L>", "lstrip": true, "rstrip": false, "single_word": false,
          "normalized": false, "special": false})"));
  j["added_tokens"].push_back(json::parse(
      R"({"id": 260, "content": "<R>", "lstrip": false, "rstrip": true, "single_word": false,
          "normalized": false, "special": false})"));
  j["added_tokens"].push_back(json::parse(
      R"({"id": 261, "content": "cd", "lstrip": false, "rstrip": false, "single_word": true,
          "normalized": false, "special": false})"));
  j["added_tokens"].push_back(json::parse(
      R"({"id": 262, "content": "<|end|>x", "lstrip": false, "rstrip": false,
          "single_word": false, "normalized": false, "special": false})"));
  auto tok = hf::HfTokenizer::FromJson(j, "t.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const int64_t space = (*tok)->TokenId("Ġ");
  EXPECT_EQ((*tok)->Encode("a  <L>"), (std::vector<int64_t>{'a', 259}));
  EXPECT_EQ((*tok)->Encode("<R>  a"), (std::vector<int64_t>{260, 'a'}));
  EXPECT_EQ((*tok)->Encode("cd"), (std::vector<int64_t>{261}));             // a word on its own
  EXPECT_EQ((*tok)->Encode("cde"), (std::vector<int64_t>{'c', 'd', 'e'}));  // inside a word
  EXPECT_EQ((*tok)->Encode("<|end|>x"), (std::vector<int64_t>{262}));       // longest match
  EXPECT_EQ((*tok)->Encode(" <|end|>"), (std::vector<int64_t>{space, 258}));
  // The ids written in the file are not used: `tokenizers` gives the next free ones.
  json k = TinyByteLevel();
  k["added_tokens"][0]["id"] = 999;
  auto renumbered = hf::HfTokenizer::FromJson(k, "t.json");
  ASSERT_TRUE(renumbered.ok());
  EXPECT_EQ((*renumbered)->TokenId("<|end|>"), 258);
}

// SentencePiece models keep their plugin, plus a piece table read from the file for TokenId,
// IdToToken and tokenizer_config.json's eos_token.
TEST(SentencePieceTest, PiecesAndConfig) {
  testing::TempDir dir;
  {
    std::ofstream corpus(dir.Join("corpus.txt"));
    for (int i = 0; i < 200; ++i) corpus << "the quick brown fox " << i << " jumps over\n";
  }
  const std::string cmd = "spm_train --input=" + dir.Join("corpus.txt") +
                          " --model_prefix=" + dir.Join("tokenizer") +
                          " --vocab_size=60 --model_type=bpe > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "spm_train failed (is sentencepiece installed?)";
  auto tok = MakeTokenizerForModel("", dir.path());  // finds tokenizer.model
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 60);
  EXPECT_EQ((*tok)->IdToToken((*tok)->eos_id()), "</s>");
  EXPECT_EQ((*tok)->TokenId("</s>"), (*tok)->eos_id());
  EXPECT_EQ((*tok)->TokenId("<s>"), (*tok)->bos_id());
  EXPECT_EQ((*tok)->eos_token(), "</s>");
  EXPECT_EQ((*tok)->TokenId("no such piece"), -1);
  WriteFile(dir.Join("tokenizer_config.json"),
            R"({"eos_token": {"content": "<unk>"}, "chat_template": "T"})");
  auto configured = MakeTokenizer(dir.Join("tokenizer.model"));
  ASSERT_TRUE(configured.ok()) << configured.status();
  EXPECT_EQ((*configured)->eos_id(), (*configured)->TokenId("<unk>"));
  EXPECT_EQ((*configured)->chat_template(), "T");
  // Hostile bytes: errors, never crashes.
  for (const std::string& bad : {std::string("\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
                                 std::string("\x0a\x05"
                                             "ab"),
                                 std::string("\x0f"), std::string()}) {
    EXPECT_FALSE(ParseSentencePiecePieces(bad).ok());
  }
}

TEST(UnicodeTest, NfcAndLossyUtf8) {
  EXPECT_EQ(unicode::Nfc("e\xCC\x81"), "\xC3\xA9");                                 // e + acute
  EXPECT_EQ(unicode::Nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // jamo
  EXPECT_EQ(unicode::Nfc("\xE2\x84\xAB"), "\xC3\x85");                              // Angstrom sign
  // a + dot above + dot below: reordered, then the dot below composes.
  EXPECT_EQ(unicode::Nfc("a\xCC\x87\xCC\xA3"), "\xE1\xBA\xA1\xCC\x87");
  EXPECT_EQ(unicode::Nfc("plain ascii"), "plain ascii");
  EXPECT_EQ(unicode::Nfc("\xFF"
                         "e\xCC\x81"),
            "\xFF\xC3\xA9");  // stray bytes pass through
  EXPECT_TRUE(unicode::IsNfcQuick("caf\xC3\xA9 \xE4\xB8\xAD"));
  EXPECT_FALSE(unicode::IsNfcQuick("cafe\xCC\x81"));
  EXPECT_EQ(unicode::Utf8Lossy("a\xE4\xB8"
                               "b"),
            "a\xEF\xBF\xBD"
            "b");  // one maximal subpart
  EXPECT_EQ(unicode::Utf8Lossy("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::Utf8Lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

}  // namespace
}  // namespace lora
