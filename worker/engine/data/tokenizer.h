// Tokenizers: a built-in byte-level one, and SentencePiece models.
//
//   LORA_ASSIGN_OR_RETURN(auto tok, MakeTokenizer("byte"));            // or "path/to/sp.model"
//   std::vector<int64_t> ids = tok->Encode("hello");
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
  virtual std::string Decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_id() const = 0;  // -1 when the tokenizer has none
  virtual int64_t eos_id() const = 0;
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
};

// "byte", or a path to a SentencePiece .model file.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& spec);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_TOKENIZER_H_
