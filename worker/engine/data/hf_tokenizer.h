// Hugging Face tokenizer.json files with a BPE model, giving the ids the `tokenizers` library
// gives (tests/unit/hf_tokenizer_test.cc checks them token for token).
//
//   LORA_ASSIGN_OR_RETURN(auto tok, hf::HfTokenizer::FromFile("dir/tokenizer.json"));
//   std::vector<int64_t> ids = tok->Encode("Hello <|eot_id|>");  // no BOS; <|eot_id|> matched
//   std::vector<int64_t> all = tok->EncodeWithSpecialTokens("Hello");  // post-processor too
//
// Supported, everything else refused with INVALID_ARGUMENT naming the field:
//   normalizer      null, NFC, Prepend, Replace (string patterns), Sequence of those
//   pre_tokenizer   null; ByteLevel (use_regex: the GPT-2 pattern); Sequence[Split(Llama 3 or
//                   Qwen2 or GPT-2 pattern, Isolated), ByteLevel(use_regex false)]; Metaspace
//   model           BPE (merges in either form, ignore_merges, byte_fallback, unk_token,
//                   fuse_unk); no dropout, continuing_subword_prefix or end_of_word_suffix
//   added_tokens    special and not, normalized or not, single_word, lstrip, rstrip
//   post_processor  null, ByteLevel, TemplateProcessing, BertProcessing, RobertaProcessing,
//                   Sequence of those (single sequences only)
//   decoder         see hf_decoder.h
// truncation and padding are ignored: they are runtime settings, and lora-train never wants
// either.
//
// Invariants: a file is read only if under kMaxTokenizerJsonBytes and nested at most
// kMaxJsonDepth deep (checked before parsing, as the parser recurses). Encode and Decode are
// const and thread-safe. Input need not be valid UTF-8: stray bytes go through byte-level
// models as bytes and through byte_fallback models as <0xNN> tokens.
#ifndef LORA_WORKER_ENGINE_DATA_HF_TOKENIZER_H_
#define LORA_WORKER_ENGINE_DATA_HF_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/data/hf_added_tokens.h"
#include "worker/engine/data/hf_bpe.h"
#include "worker/engine/data/hf_decoder.h"
#include "worker/engine/data/hf_pretokenizer.h"
#include "worker/engine/data/tokenizer.h"

namespace lora::hf {

inline constexpr uint64_t kMaxTokenizerJsonBytes = uint64_t{256} << 20;
inline constexpr uint64_t kMaxTokenizerConfigBytes = uint64_t{16} << 20;
inline constexpr int kMaxJsonDepth = 64;
// (Files are read within those bounds by ReadJsonDocument, common/nesting.h.)

// The parts of tokenizer_config.json lora uses. bos_token/eos_token may be strings or objects
// with "content"; chat_template a string or a list of {name, template} (the "default" one).
struct TokenizerConfig {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::string chat_template;
};
absl::StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& path);
absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(const nlohmann::json& config,
                                                     absl::string_view source);

class HfTokenizer : public Tokenizer {
 public:
  // `config` (may be null) supplies the chat template and the special-token strings; its
  // eos_token, when set, must be a token of the file and becomes eos_id().
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> FromFile(
      const std::string& path, const TokenizerConfig* config = nullptr);
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> FromJson(
      const nlohmann::json& tokenizer, absl::string_view source,
      const TokenizerConfig* config = nullptr);

  std::vector<int64_t> Encode(absl::string_view text) const override;
  std::vector<int64_t> EncodeWithSpecialTokens(absl::string_view text) const override;
  std::string Decode(const std::vector<int64_t>& ids) const override {
    return Decode(ids, /*skip_special_tokens=*/true);
  }
  std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const;
  int64_t vocab_size() const override { return vocab_size_; }
  int64_t bos_id() const override { return prefix_.empty() ? -1 : prefix_[0]; }
  int64_t eos_id() const override { return eos_id_; }
  int64_t TokenId(absl::string_view token) const override;
  std::string IdToToken(int64_t id) const override;

 private:
  HfTokenizer() = default;
  struct NormalizerStep {
    enum Kind { kNfc, kPrepend, kReplace } kind;
    std::string a, b;
  };
  struct PreTokenizer {
    enum Kind { kNone, kByteLevel, kMetaspace } kind = kNone;
    std::optional<SplitPattern> split;  // kByteLevel
    bool add_prefix_space = false;      // kByteLevel
    std::string replacement;            // kMetaspace
    enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
    bool metaspace_split = true;
  };
  struct AddedToken {
    std::string content;
    int32_t id;
    bool special;
  };

  absl::Status LoadNormalizer(const nlohmann::json& j, int depth);
  absl::Status LoadPreTokenizer(const nlohmann::json& j);
  absl::Status LoadPostProcessor(const nlohmann::json& j, int depth);
  absl::Status LoadAddedTokens(const nlohmann::json& j);
  void ApplyConfig(const TokenizerConfig* config);

  std::string Normalize(absl::string_view text) const;
  void EncodeInto(absl::string_view text, std::vector<int32_t>* ids) const;
  void EncodeNormalized(absl::string_view text, bool at_origin, std::vector<int32_t>* ids) const;
  void PreTokenizeAndModel(absl::string_view text, bool at_origin, std::vector<int32_t>* ids) const;
  const std::string* TokenString(int64_t id) const;

  std::vector<NormalizerStep> normalizer_;
  PreTokenizer pre_;
  std::unique_ptr<BpeModel> model_;
  std::vector<AddedToken> added_;
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  absl::flat_hash_map<int32_t, int32_t> added_by_id_;  // id -> index in added_
  absl::flat_hash_set<std::string> special_contents_;
  AddedTokenMatcher raw_matcher_;         // normalized == false: matched in the input
  AddedTokenMatcher normalized_matcher_;  // normalized == true: matched after normalizing
  std::vector<int64_t> prefix_, suffix_;  // the post-processor's, around a single sequence
  Decoder decoder_;
  int64_t vocab_size_ = 0;
  int64_t eos_id_ = -1;
};

}  // namespace lora::hf

#endif  // LORA_WORKER_ENGINE_DATA_HF_TOKENIZER_H_
