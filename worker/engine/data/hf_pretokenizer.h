// The pre-tokenizer pieces of Hugging Face tokenizer.json files that Llama-family models use:
// the split patterns of Llama 3, Qwen2 and GPT-2 as hand-written scanners, the GPT-2 byte-level
// alphabet, and Metaspace.
//
//   LORA_ASSIGN_OR_RETURN(SplitPattern p, SplitPatternFromRegex(regex));  // exact strings only
//   for (size_t i = 0; i < text.size();) {
//     size_t n = SplitMatchLength(p, text.data() + i, text.size() - i);  // >= 1
//     Use(text.substr(i, n));
//     i += n;
//   }
//
// Invariants: each scanner returns what `tokenizers` (Oniguruma, leftmost-first alternation,
// Split behavior Isolated) returns for its pattern. The patterns' alternatives together match
// every character, so the matches tile the text and there are no unmatched gaps to isolate.
// Classes come from unicode.h; invalid UTF-8 bytes count as single characters of no class.
#ifndef LORA_WORKER_ENGINE_DATA_HF_PRETOKENIZER_H_
#define LORA_WORKER_ENGINE_DATA_HF_PRETOKENIZER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lora::hf {

enum class SplitPattern {
  kLlama3,  // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|...
  kQwen2,   // the same with \p{N} instead of \p{N}{1,3}
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
};

// The pattern whose source is exactly `regex`; INVALID_ARGUMENT for any other string (a regex
// engine is deliberately absent: a near-miss pattern must not be approximated).
absl::StatusOr<SplitPattern> SplitPatternFromRegex(absl::string_view regex);

// Length in bytes of the match starting at p[0..n), n >= 1. Always >= 1.
size_t SplitMatchLength(SplitPattern pattern, const char* p, size_t n);

// GPT-2's bytes_to_unicode: the code point that stands for byte `b` in byte-level vocabularies.
uint32_t ByteLevelCodePoint(uint8_t b);
// The byte a byte-level code point stands for; -1 for code points outside the alphabet.
int ByteLevelByte(uint32_t cp);
// `token` (a byte-level vocabulary entry) as the bytes it stands for; false when some character
// is outside the alphabet.
bool ByteLevelDecode(absl::string_view token, std::string* bytes);

// The SentencePiece word-boundary mark, U+2581.
inline constexpr char kMetaspace[] = "\xE2\x96\x81";

}  // namespace lora::hf

#endif  // LORA_WORKER_ENGINE_DATA_HF_PRETOKENIZER_H_
