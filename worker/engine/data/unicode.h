// UTF-8 and the bits of Unicode the tokenizers need: character classes for the pre-tokenizer
// patterns, NFC, and lossy UTF-8 decoding as Rust's String::from_utf8_lossy does it.
//
//   size_t len;
//   uint32_t cp = unicode::DecodeUtf8(s.data() + i, s.size() - i, &len);  // len >= 1 always
//   if (unicode::ClassOf(cp) == unicode::kClassLetter) ...
//   std::string nfc = unicode::Nfc(text);
//
// Invariants: every function accepts arbitrary bytes. A byte that does not start a valid UTF-8
// sequence (overlong forms, surrogates and code points past U+10FFFF are invalid) decodes as
// kInvalidCodePoint with length 1, is of class kClassOther and passes through Nfc unchanged.
#ifndef LORA_WORKER_ENGINE_DATA_UNICODE_H_
#define LORA_WORKER_ENGINE_DATA_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "worker/engine/data/unicode_tables.h"

namespace lora::unicode {

inline constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFF;

// Decodes the character at p[0..n), n >= 1. Sets *len to the bytes consumed (1..4).
inline uint32_t DecodeUtf8(const char* p, size_t n, size_t* len) {
  const auto* s = reinterpret_cast<const unsigned char*>(p);
  const unsigned char c = s[0];
  *len = 1;
  if (c < 0x80) return c;
  auto cont = [&](size_t i) { return i < n && (s[i] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) {
    if (!cont(1)) return kInvalidCodePoint;
    *len = 2;
    return ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
  }
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return kInvalidCodePoint;
    const uint32_t cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalidCodePoint;
    *len = 3;
    return cp;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return kInvalidCodePoint;
    const uint32_t cp =
        ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    if (cp < 0x10000 || cp > 0x10FFFF) return kInvalidCodePoint;
    *len = 4;
    return cp;
  }
  return kInvalidCodePoint;
}

void AppendUtf8(uint32_t cp, std::string* out);

namespace internal {
extern const uint8_t* const kBmpClass;  // 64 Ki entries: class | kNfcUnsafe flag
uint8_t SupplementaryClassBits(uint32_t cp);
}  // namespace internal

// Class bits (a kClass* value, maybe with kNfcUnsafe).
inline uint8_t ClassBits(uint32_t cp) {
  if (cp < 0x10000) return internal::kBmpClass[cp];
  return internal::SupplementaryClassBits(cp);
}
inline uint8_t ClassOf(uint32_t cp) { return ClassBits(cp) & kClassMask; }

// Rust's char::is_whitespace (White_Space), which is also Oniguruma's Unicode \s.
inline bool IsWhitespace(uint32_t cp) { return ClassOf(cp) == kClassSpace; }
// An approximation of Rust's char::is_alphanumeric: \p{L} or \p{N} (the Other_Alphabetic marks
// that Rust also counts are not in Python's unicodedata).
inline bool IsAlphanumeric(uint32_t cp) {
  const uint8_t c = ClassOf(cp);
  return c == kClassLetter || c == kClassNumber;
}

// True when Nfc(text) == text is certain without composing (ASCII, or no character that can
// take part in a composition or reordering).
bool IsNfcQuick(absl::string_view text);
// Canonical composition (Unicode normalization form C).
std::string Nfc(absl::string_view text);

// `bytes` as valid UTF-8: each maximal invalid subsequence becomes U+FFFD, the policy of Rust's
// String::from_utf8_lossy (and of the WHATWG decoder).
std::string Utf8Lossy(absl::string_view bytes);
bool IsValidUtf8(absl::string_view bytes);

}  // namespace lora::unicode

#endif  // LORA_WORKER_ENGINE_DATA_UNICODE_H_
