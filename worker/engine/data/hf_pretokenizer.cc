#include "worker/engine/data/hf_pretokenizer.h"

#include "absl/status/status.h"
#include "worker/engine/data/unicode.h"

namespace lora::hf {
namespace {

using unicode::kClassLetter;
using unicode::kClassNumber;
using unicode::kClassOther;
using unicode::kClassSpace;

constexpr absl::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr absl::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr absl::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Char {
  uint32_t cp;
  uint8_t cls;
  uint8_t len;
};

inline Char At(const char* p, size_t n, size_t i) {
  if (i >= n) return {unicode::kInvalidCodePoint, 0xFF, 0};  // end: matches no class
  const auto c = static_cast<unsigned char>(p[i]);
  if (c < 0x80) {
    static const uint8_t* const ascii = [] {
      static uint8_t t[128];
      for (uint32_t b = 0; b < 128; ++b) t[b] = unicode::ClassOf(b);
      return t;
    }();
    return {c, ascii[c], 1};
  }
  size_t len;
  const uint32_t cp = unicode::DecodeUtf8(p + i, n - i, &len);
  return {cp, unicode::ClassOf(cp), static_cast<uint8_t>(len)};
}

// End of the run of characters of class `cls` starting at i (at most `max` characters).
inline size_t RunEnd(const char* p, size_t n, size_t i, uint8_t cls, size_t max = SIZE_MAX) {
  for (size_t count = 0; count < max; ++count) {
    const Char c = At(p, n, i);
    if (c.cls != cls) break;
    i += c.len;
  }
  return i;
}

// 's 't 're 've 'm 'll 'd at p[0] == '\''; with `fold`, letters match case-insensitively under
// Unicode simple case folding, where U+017F (long s) also folds to 's'. 0 when none matches.
size_t ContractionLength(const char* p, size_t n, bool fold) {
  const Char c1 = At(p, n, 1);
  if (c1.len == 0) return 0;
  uint32_t a = c1.cp;
  if (fold) {
    if (a >= 'A' && a <= 'Z') a += 'a' - 'A';
    if (a == 0x17F) a = 's';
  }
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 1 + c1.len;
  uint32_t want;
  if (a == 'r' || a == 'v') {
    want = 'e';
  } else if (a == 'l') {
    want = 'l';
  } else {
    return 0;
  }
  const size_t i2 = 1 + c1.len;
  if (i2 >= n) return 0;
  uint32_t b = static_cast<unsigned char>(p[i2]);
  if (fold && b >= 'A' && b <= 'Z') b += 'a' - 'A';
  return b == want ? i2 + 1 : 0;
}

// The whitespace alternatives shared by all three patterns: \s+(?!\S)|\s+ (and, for the
// Llama 3/Qwen2 patterns, \s*[\r\n]+ first). p[0] is whitespace.
size_t WhitespaceMatch(const char* p, size_t n, bool newline_alternative) {
  size_t end = 0, last_start = 0, after_newline = 0;
  for (;;) {
    const Char c = At(p, n, end);
    if (c.cls != kClassSpace) break;
    last_start = end;
    end += c.len;
    if (c.cp == '\r' || c.cp == '\n') after_newline = end;
  }
  // \s*[\r\n]+ : greedy \s* backs off to the last \r or \n of the run.
  if (newline_alternative && after_newline != 0) return after_newline;
  // \s+(?!\S) : the whole run at the end of the text, else the run less its last character.
  if (end == n) return end;
  if (last_start > 0) return last_start;
  return end;  // \s+
}

size_t Llama3Like(const char* p, size_t n, size_t max_digits) {
  const Char c0 = At(p, n, 0);
  if (c0.cp == '\'') {
    if (size_t len = ContractionLength(p, n, /*fold=*/true)) return len;
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c0.cls == kClassLetter) return RunEnd(p, n, 0, kClassLetter);
  const bool newline = c0.cp == '\r' || c0.cp == '\n';
  if (!newline && c0.cls != kClassNumber && At(p, n, c0.len).cls == kClassLetter)
    return RunEnd(p, n, c0.len, kClassLetter);
  // \p{N}{1,max}
  if (c0.cls == kClassNumber) return RunEnd(p, n, 0, kClassNumber, max_digits);
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const size_t start = c0.cp == ' ' && At(p, n, 1).cls == kClassOther ? 1 : 0;
  if (At(p, n, start).cls == kClassOther) {
    size_t end = RunEnd(p, n, start, kClassOther);
    while (end < n && (p[end] == '\r' || p[end] == '\n')) ++end;
    return end;
  }
  if (c0.cls == kClassSpace) return WhitespaceMatch(p, n, /*newline_alternative=*/true);
  return c0.len;  // unreachable: every class is handled above
}

size_t Gpt2(const char* p, size_t n) {
  const Char c0 = At(p, n, 0);
  if (c0.cp == '\'') {
    if (size_t len = ContractionLength(p, n, /*fold=*/false)) return len;
  }
  // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+' in that order, each with an optional space.
  const size_t start = c0.cp == ' ' && At(p, n, 1).cls != kClassSpace && n > 1 ? 1 : 0;
  const Char c = At(p, n, start);
  if (c.cls == kClassLetter || c.cls == kClassNumber || c.cls == kClassOther)
    return RunEnd(p, n, start, c.cls);
  if (c0.cls == kClassSpace) return WhitespaceMatch(p, n, /*newline_alternative=*/false);
  return c0.len;
}

constexpr bool InAlphabetAsItself(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteLevelTables {
  uint32_t to_cp[256];
  int16_t from_cp[324];  // the alphabet lies below U+0144
  ByteLevelTables() {
    for (int16_t& v : from_cp) v = -1;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      to_cp[b] = InAlphabetAsItself(b) ? b : next++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables* const tables = new ByteLevelTables();
  return *tables;
}

}  // namespace

absl::StatusOr<SplitPattern> SplitPatternFromRegex(absl::string_view regex) {
  if (regex == kLlama3Regex) return SplitPattern::kLlama3;
  if (regex == kQwen2Regex) return SplitPattern::kQwen2;
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  return absl::InvalidArgumentError(
      "pre_tokenizer: Split pattern is not one of the supported ones (the Llama 3, Qwen2 and "
      "GPT-2 patterns, character for character); no general regex engine is built in");
}

size_t SplitMatchLength(SplitPattern pattern, const char* p, size_t n) {
  switch (pattern) {
    case SplitPattern::kLlama3:
      return Llama3Like(p, n, 3);
    case SplitPattern::kQwen2:
      return Llama3Like(p, n, 1);
    case SplitPattern::kGpt2:
      return Gpt2(p, n);
  }
  return 1;
}

uint32_t ByteLevelCodePoint(uint8_t b) { return Tables().to_cp[b]; }

int ByteLevelByte(uint32_t cp) { return cp < 324 ? Tables().from_cp[cp] : -1; }

bool ByteLevelDecode(absl::string_view token, std::string* bytes) {
  bytes->clear();
  for (size_t i = 0; i < token.size();) {
    size_t len;
    const uint32_t cp = unicode::DecodeUtf8(token.data() + i, token.size() - i, &len);
    const int b = cp == unicode::kInvalidCodePoint ? -1 : ByteLevelByte(cp);
    if (b < 0) return false;
    bytes->push_back(static_cast<char>(b));
    i += len;
  }
  return true;
}

}  // namespace lora::hf
