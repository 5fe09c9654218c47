// Finds the added tokens of a tokenizer.json (special tokens such as <|eot_id|>, and the
// non-special ones) in text, before any pre-tokenization, as `tokenizers`' AddedVocabulary does.
//
//   AddedTokenMatcher m;
//   m.Add({"<|eot_id|>", 128009, /*single_word=*/false, /*lstrip=*/false, /*rstrip=*/false});
//   m.Split(text, [&](absl::string_view piece, size_t offset) { ... },  // text between tokens
//                 [&](int32_t id) { ... });                            // a token
//
// Invariants: matches are leftmost, then longest, and never overlap; a match that fails its
// single_word condition is dropped and its text is not searched again (Aho-Corasick's
// non-overlapping iteration). lstrip/rstrip fold the neighbouring whitespace into the token.
// Text pieces are never empty and come with their offset in `text`.
#ifndef LORA_WORKER_ENGINE_DATA_HF_ADDED_TOKENS_H_
#define LORA_WORKER_ENGINE_DATA_HF_ADDED_TOKENS_H_

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace lora::hf {

struct AddedTokenPattern {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() { root_.fill(-1); }

  // Empty contents are ignored (they would match everywhere).
  void Add(AddedTokenPattern pattern);
  bool empty() const { return patterns_.empty(); }

  template <typename TextFn, typename TokenFn>
  void Split(absl::string_view text, TextFn&& on_text, TokenFn&& on_token) const {
    if (patterns_.empty()) {
      if (!text.empty()) on_text(text, 0);
      return;
    }
    size_t search = 0, emitted = 0;
    size_t start, stop;
    int32_t index;
    while (Find(text, search, &start, &stop, &index)) {
      search = stop;
      if (!Accept(text, index, &start, &stop, emitted)) continue;
      if (emitted < start) on_text(text.substr(emitted, start - emitted), emitted);
      on_token(patterns_[index].id);
      emitted = stop;
    }
    if (emitted < text.size()) on_text(text.substr(emitted), emitted);
  }

 private:
  struct Node {
    int32_t pattern = -1;
    std::vector<std::pair<uint8_t, int32_t>> edges;  // sorted by byte
  };
  // The leftmost-longest match at or after `from`.
  bool Find(absl::string_view text, size_t from, size_t* start, size_t* stop, int32_t* index) const;
  // Applies single_word (false: drop the match), then lstrip/rstrip to [*start, *stop).
  bool Accept(absl::string_view text, int32_t index, size_t* start, size_t* stop,
              size_t emitted) const;
  int32_t Child(int32_t node, uint8_t byte) const;

  std::vector<AddedTokenPattern> patterns_;
  std::array<int32_t, 256> root_;  // first byte -> node
  std::vector<Node> nodes_;
};

}  // namespace lora::hf

#endif  // LORA_WORKER_ENGINE_DATA_HF_ADDED_TOKENS_H_
