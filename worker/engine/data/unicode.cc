#include "worker/engine/data/unicode.h"

#include <algorithm>
#include <vector>

namespace lora::unicode {
namespace {

// Hangul syllables compose and decompose by arithmetic (Unicode §3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr uint32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

// Invalid input bytes travel through NFC as this tag plus the byte; they never compose.
constexpr uint32_t kRawByteTag = 0x80000000u;

uint32_t RangeValue(const ClassRange* table, size_t size, uint32_t cp) {
  const ClassRange* end = table + size;
  const ClassRange* it =
      std::upper_bound(table, end, cp, [](uint32_t v, const ClassRange& r) { return v < r.first; });
  if (it == table) return 0;
  --it;
  return cp <= it->last ? it->value : 0;
}

const uint8_t* BuildBmpTable() {
  static uint8_t table[0x10000] = {};
  for (size_t i = 0; i < kClassRangesSize && kClassRanges[i].first < 0x10000; ++i) {
    const ClassRange& r = kClassRanges[i];
    for (uint32_t cp = r.first; cp <= r.last && cp < 0x10000; ++cp)
      table[cp] = static_cast<uint8_t>(r.value);
  }
  return table;
}

uint8_t CombiningClass(uint32_t cp) {
  if (cp < 0x300 || (cp & kRawByteTag)) return 0;
  return static_cast<uint8_t>(RangeValue(kCombiningClassRanges, kCombiningClassRangesSize, cp));
}

void Decompose(uint32_t cp, std::vector<uint32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const Decomposition* end = kDecompositions + kDecompositionsSize;
  const Decomposition* it = std::lower_bound(
      kDecompositions, end, cp, [](const Decomposition& d, uint32_t v) { return d.cp < v; });
  if (it == end || it->cp != cp) {
    out->push_back(cp);
    return;
  }
  Decompose(it->first, out);
  if (it->second != 0) Decompose(it->second, out);
}

// 0 when the pair does not compose.
uint32_t ComposePair(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const Composition* end = kCompositions + kCompositionsSize;
  const Composition* it =
      std::lower_bound(kCompositions, end, std::make_pair(a, b),
                       [](const Composition& c, const std::pair<uint32_t, uint32_t>& v) {
                         return c.first != v.first ? c.first < v.first : c.second < v.second;
                       });
  if (it == end || it->first != a || it->second != b) return 0;
  return it->composed;
}

}  // namespace

namespace internal {
const uint8_t* const kBmpClass = BuildBmpTable();
uint8_t SupplementaryClassBits(uint32_t cp) {
  if (cp > 0x10FFFF) return kClassOther;  // kInvalidCodePoint
  return static_cast<uint8_t>(RangeValue(kClassRanges, kClassRangesSize, cp));
}
}  // namespace internal

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsNfcQuick(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    const uint32_t cp = DecodeUtf8(text.data() + i, text.size() - i, &len);
    if (cp != kInvalidCodePoint && (ClassBits(cp) & kNfcUnsafe)) return false;
    i += len;
  }
  return true;
}

std::string Nfc(absl::string_view text) {
  if (IsNfcQuick(text)) return std::string(text);
  // Full canonical decomposition, then canonical ordering, then composition (UAX #15).
  std::vector<uint32_t> cps;
  cps.reserve(text.size() + 8);
  for (size_t i = 0; i < text.size();) {
    size_t len;
    const uint32_t cp = DecodeUtf8(text.data() + i, text.size() - i, &len);
    if (cp == kInvalidCodePoint) {
      cps.push_back(kRawByteTag | static_cast<unsigned char>(text[i]));
    } else {
      Decompose(cp, &cps);
    }
    i += len;
  }
  // Stable sort of each run of nonzero combining classes (insertion sort: runs are short).
  for (size_t i = 1; i < cps.size(); ++i) {
    const uint8_t cc = CombiningClass(cps[i]);
    if (cc == 0) continue;
    size_t j = i;
    while (j > 0) {
      const uint8_t prev = CombiningClass(cps[j - 1]);
      if (prev == 0 || prev <= cc) break;
      std::swap(cps[j], cps[j - 1]);
      --j;
    }
  }
  size_t out_len = 0;
  if (!cps.empty()) {
    size_t starter = 0;
    int last_class = CombiningClass(cps[0]) == 0 ? 0 : 256;
    bool have_starter = last_class == 0 && !(cps[0] & kRawByteTag);
    out_len = 1;
    for (size_t i = 1; i < cps.size(); ++i) {
      const uint32_t cp = cps[i];
      const int cc = CombiningClass(cp);
      const uint32_t composed =
          (have_starter && !(cp & kRawByteTag) && (last_class < cc || last_class == 0))
              ? ComposePair(cps[starter], cp)
              : 0;
      if (composed != 0) {
        cps[starter] = composed;
        continue;
      }
      if (cc == 0) {
        starter = out_len;
        have_starter = !(cp & kRawByteTag);
      }
      last_class = cc;
      cps[out_len++] = cp;
    }
  }
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < out_len; ++i) {
    if (cps[i] & kRawByteTag) {
      out.push_back(static_cast<char>(cps[i] & 0xFF));
    } else {
      AppendUtf8(cps[i], &out);
    }
  }
  return out;
}

namespace {

// Length of the longest prefix of s[0..n) that could begin a valid sequence (the "maximal
// subpart" of Unicode §3.9), at least 1; sets *valid when it is a whole valid character.
size_t MaximalSubpart(const unsigned char* s, size_t n, bool* valid) {
  size_t len;
  if (DecodeUtf8(reinterpret_cast<const char*>(s), n, &len) != kInvalidCodePoint) {
    *valid = true;
    return len;
  }
  *valid = false;
  const unsigned char c = s[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  size_t i = 1;
  if (i < n && s[i] >= lo && s[i] <= hi) {
    ++i;
    while (i < need && i < n && (s[i] & 0xC0) == 0x80) ++i;
  }
  return i;
}

}  // namespace

bool IsValidUtf8(absl::string_view bytes) {
  for (size_t i = 0; i < bytes.size();) {
    size_t len;
    if (DecodeUtf8(bytes.data() + i, bytes.size() - i, &len) == kInvalidCodePoint) return false;
    i += len;
  }
  return true;
}

std::string Utf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < bytes.size();) {
    if (s[i] < 0x80) {
      out.push_back(static_cast<char>(s[i++]));
      continue;
    }
    bool valid;
    const size_t len = MaximalSubpart(s + i, bytes.size() - i, &valid);
    if (valid) {
      out.append(bytes.data() + i, len);
    } else {
      out.append("\xEF\xBF\xBD");
    }
    i += len;
  }
  return out;
}

}  // namespace lora::unicode
