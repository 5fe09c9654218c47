// Tokenizers: a built-in byte-level one, SentencePiece models, and Hugging Face tokenizer.json
// files (BPE: Llama 3, Qwen2, Llama 2 / Mistral; see hf_tokenizer.h for what is supported).
//
//   LORA_ASSIGN_OR_RETURN(auto tok, MakeTokenizer("byte"));  // or a .model, a tokenizer.json,
//                                                             // or a directory holding one
//   std::vector<int64_t> ids = tok->Encode("hello");
//
//   // What lora-train does: model.tokenizer wins; else the model directory's own files.
//   LORA_ASSIGN_OR_RETURN(auto tok, MakeTokenizerForModel(spec.model().tokenizer(),
//                                                         spec.model().path()));
//
// Invariants: Encode never adds special tokens around the text (Hugging Face's
// add_special_tokens=False) but does recognize special tokens written in the text;
// EncodeWithSpecialTokens adds what the tokenizer's post-processor adds (for most, bos_id()).
// Decode drops special tokens (Hugging Face's skip_special_tokens=True).
#ifndef LORA_WORKER_ENGINE_DATA_TOKENIZER_H_
#define LORA_WORKER_ENGINE_DATA_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lora {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int64_t> Encode(absl::string_view text) const = 0;
  // Encode plus the special tokens a single sequence gets (by default: bos_id() first, if any).
  virtual std::vector<int64_t> EncodeWithSpecialTokens(absl::string_view text) const;
  virtual std::string Decode(const std::vector<int64_t>& ids) const = 0;
  // 1 + the largest id (vocabulary and added tokens).
  virtual int64_t vocab_size() const = 0;
  // The token prepended to a single sequence; -1 when the tokenizer prepends none.
  virtual int64_t bos_id() const = 0;
  // The end-of-sequence token; -1 when unknown.
  virtual int64_t eos_id() const = 0;
  // -1 when `token` is not a token of this tokenizer.
  virtual int64_t TokenId(absl::string_view token) const = 0;
  // Empty when no token has this id.
  virtual std::string IdToToken(int64_t id) const = 0;

  // From tokenizer_config.json beside the tokenizer file; empty when absent. bos_token and
  // eos_token fall back to the strings of bos_id() and eos_id().
  const std::string& chat_template() const { return chat_template_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

 protected:
  std::string chat_template_, bos_token_, eos_token_;
};

// Bytes are ids 0..255, BOS = 256, EOS = 257. Any model with vocab_size >= 258 can use it.
class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int64_t kBos = 256;
  static constexpr int64_t kEos = 257;
  std::vector<int64_t> Encode(absl::string_view text) const override;
  std::string Decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return 258; }
  int64_t bos_id() const override { return kBos; }
  int64_t eos_id() const override { return kEos; }
  // Single bytes only; BOS and EOS have no text form.
  int64_t TokenId(absl::string_view token) const override;
  std::string IdToToken(int64_t id) const override;
};

// `spec`: "byte"; a SentencePiece model file; a tokenizer.json file (any name ending in .json);
// or a directory, searched for tokenizer.json, then tokenizer.model. A tokenizer_config.json
// next to the file supplies the chat template and the special-token strings. Errors name
// model.tokenizer.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& spec);

// The tokenizer of a job: `model_tokenizer_field` (model.tokenizer) when set; else, with a model
// directory, its tokenizer.json or tokenizer.model (an error naming model.tokenizer when it has
// neither); else, for the built-in flavors (empty model_path), the byte tokenizer.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizerForModel(
    const std::string& model_tokenizer_field, const std::string& model_path);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_TOKENIZER_H_
