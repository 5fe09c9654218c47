#include "worker/engine/data/hf_added_tokens.h"

#include <algorithm>

#include "worker/engine/data/unicode.h"

namespace lora::hf {
namespace {

// The code point that ends just before `end` (and its start in *begin); text[..end) is not empty.
uint32_t LastChar(absl::string_view text, size_t end, size_t* begin) {
  size_t b = end - 1;
  while (b > 0 && end - b < 4 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
  size_t len;
  uint32_t cp = unicode::DecodeUtf8(text.data() + b, end - b, &len);
  if (b + len != end) {  // not a whole character: treat the last byte alone
    b = end - 1;
    cp = unicode::kInvalidCodePoint;
  }
  *begin = b;
  return cp;
}

}  // namespace

void AddedTokenMatcher::Add(AddedTokenPattern pattern) {
  if (pattern.content.empty()) return;
  const auto first = static_cast<uint8_t>(pattern.content[0]);
  if (root_[first] < 0) {
    root_[first] = static_cast<int32_t>(nodes_.size());
    nodes_.emplace_back();
  }
  int32_t node = root_[first];
  for (size_t i = 1; i < pattern.content.size(); ++i) {
    const auto b = static_cast<uint8_t>(pattern.content[i]);
    int32_t next = Child(node, b);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
      auto& edges = nodes_[node].edges;
      edges.insert(std::lower_bound(edges.begin(), edges.end(), std::make_pair(b, int32_t{0})),
                   {b, next});
    }
    node = next;
  }
  // The same content twice: the later entry wins, as in `tokenizers`' map of added tokens.
  nodes_[node].pattern = static_cast<int32_t>(patterns_.size());
  patterns_.push_back(std::move(pattern));
}

int32_t AddedTokenMatcher::Child(int32_t node, uint8_t byte) const {
  const auto& edges = nodes_[node].edges;
  auto it = std::lower_bound(edges.begin(), edges.end(), std::make_pair(byte, int32_t{0}));
  return it != edges.end() && it->first == byte ? it->second : -1;
}

bool AddedTokenMatcher::Find(absl::string_view text, size_t from, size_t* start, size_t* stop,
                             int32_t* index) const {
  for (size_t i = from; i < text.size(); ++i) {
    int32_t node = root_[static_cast<uint8_t>(text[i])];
    if (node < 0) continue;
    int32_t best = -1;
    size_t best_end = 0;
    for (size_t j = i + 1;; ++j) {
      if (nodes_[node].pattern >= 0) {
        best = nodes_[node].pattern;
        best_end = j;
      }
      if (j == text.size()) break;
      node = Child(node, static_cast<uint8_t>(text[j]));
      if (node < 0) break;
    }
    if (best >= 0) {
      *start = i;
      *stop = best_end;
      *index = best;
      return true;
    }
  }
  return false;
}

bool AddedTokenMatcher::Accept(absl::string_view text, int32_t index, size_t* start, size_t* stop,
                               size_t emitted) const {
  const AddedTokenPattern& p = patterns_[index];
  if (p.single_word) {
    size_t unused;
    const bool word_before = *start > 0 && unicode::IsAlphanumeric(LastChar(text, *start, &unused));
    size_t len;
    const bool word_after =
        *stop < text.size() && unicode::IsAlphanumeric(unicode::DecodeUtf8(
                                   text.data() + *stop, text.size() - *stop, &len));
    if (word_before || word_after) return false;
  }
  if (p.lstrip) {
    size_t s = *start;
    while (s > 0) {
      size_t begin;
      if (!unicode::IsWhitespace(LastChar(text, s, &begin))) break;
      s = begin;
    }
    *start = std::max(s, emitted);  // never reach back into an earlier token
  }
  if (p.rstrip) {
    while (*stop < text.size()) {
      size_t len;
      const uint32_t cp = unicode::DecodeUtf8(text.data() + *stop, text.size() - *stop, &len);
      if (!unicode::IsWhitespace(cp)) break;
      *stop += len;
    }
  }
  return true;
}

}  // namespace lora::hf
