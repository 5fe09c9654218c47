#include "worker/engine/data/hf_bpe.h"

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/data/hf_pretokenizer.h"
#include "worker/engine/data/unicode.h"

namespace lora::hf {
namespace {

using json = nlohmann::json;

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// A boolean that may be absent (older files) or null.
absl::StatusOr<bool> OptionalBool(const json& obj, const char* key, absl::string_view field) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return false;
  if (!it->is_boolean()) return Invalid(field, "must be a boolean");
  return it->get<bool>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const json& model, bool byte_level) {
  std::unique_ptr<BpeModel> bpe(new BpeModel());
  bpe->byte_level_ = byte_level;
  if (auto it = model.find("dropout"); it != model.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 0.0)
      return Invalid("model.dropout", "BPE dropout is not supported (it must be null)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it == model.end() || it->is_null()) continue;
    if (!it->is_string() || !it->get_ref<const std::string&>().empty())
      return Invalid(absl::StrCat("model.", key), "is not supported (it must be null)");
  }
  auto flag = [&](const char* key, bool* out) -> absl::Status {
    auto v = OptionalBool(model, key, absl::StrCat("model.", key));
    if (!v.ok()) return v.status();
    *out = *v;
    return absl::OkStatus();
  };
  if (auto s = flag("ignore_merges", &bpe->ignore_merges_); !s.ok()) return s;
  if (auto s = flag("byte_fallback", &bpe->byte_fallback_); !s.ok()) return s;
  if (auto s = flag("fuse_unk", &bpe->fuse_unk_); !s.ok()) return s;

  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object())
    return Invalid("model.vocab", "missing or not an object");
  if (vocab->size() > static_cast<size_t>(kMaxTokenId) + 1)
    return Invalid("model.vocab", "has more entries than the supported maximum");
  int64_t max_id = -1;
  bpe->vocab_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer())
      return Invalid("model.vocab", "every id must be an integer");
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id > kMaxTokenId)
      return Invalid("model.vocab",
                     absl::StrCat("id ", id, " is out of range [0, ", kMaxTokenId, "]"));
    if (it.key().size() > kMaxTokenBytes)
      return Invalid("model.vocab", absl::StrCat("the token of id ", id, " is too long"));
    bpe->vocab_[it.key()] = static_cast<int32_t>(id);
    max_id = std::max(max_id, id);
  }
  bpe->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  bpe->has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : bpe->vocab_) {
    bpe->id_to_token_[id] = token;
    bpe->has_id_[id] = true;
  }

  if (auto it = model.find("unk_token"); it != model.end() && !it->is_null()) {
    if (!it->is_string()) return Invalid("model.unk_token", "must be a string or null");
    auto unk = bpe->vocab_.find(it->get_ref<const std::string&>());
    if (unk == bpe->vocab_.end()) return Invalid("model.unk_token", "is not in model.vocab");
    bpe->unk_id_ = unk->second;
  }

  bpe->fallback_ids_.fill(-1);
  bpe->byte_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    if (auto it = bpe->vocab_.find(name); it != bpe->vocab_.end())
      bpe->fallback_ids_[b] = it->second;
  }
  if (byte_level) {
    std::string bytes;
    for (const auto& [token, id] : bpe->vocab_) {
      // Entries outside the byte-level alphabet can never come out of a byte-level word.
      if (ByteLevelDecode(token, &bytes)) bpe->pieces_.emplace(bytes, id);
    }
    for (int b = 0; b < 256; ++b) {
      std::string one(1, static_cast<char>(b));
      if (auto it = bpe->pieces_.find(one); it != bpe->pieces_.end())
        bpe->byte_ids_[b] = it->second;
    }
  }

  auto merges = model.find("merges");
  if (merges == model.end() || merges->is_null()) return bpe;  // a vocabulary-only model
  if (!merges->is_array()) return Invalid("model.merges", "must be an array");
  if (merges->size() > kMaxMerges)
    return Invalid("model.merges", "has more entries than the supported maximum");
  bpe->merges_.reserve(merges->size());
  std::string left, right;
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const json& m = (*merges)[rank];
    if (m.is_string()) {
      // "left right": exactly one space, as `tokenizers` requires.
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        return Invalid("model.merges", absl::StrCat("entry ", rank, " is not \"left right\""));
      left.assign(s, 0, space);
      right.assign(s, space + 1, std::string::npos);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return Invalid("model.merges", absl::StrCat("entry ", rank, " is not a pair of strings"));
    }
    auto l = bpe->vocab_.find(left), r = bpe->vocab_.find(right);
    auto merged = bpe->vocab_.find(left + right);
    if (l == bpe->vocab_.end() || r == bpe->vocab_.end() || merged == bpe->vocab_.end()) {
      return Invalid("model.merges",
                     absl::StrCat("entry ", rank, " names a token that is not in model.vocab"));
    }
    // Later duplicates win, as when `tokenizers` collects the merges into its map.
    bpe->merges_[Key(l->second, r->second)] =
        (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(merged->second);
  }
  return bpe;
}

int32_t BpeModel::TokenId(absl::string_view token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::IdToToken(int64_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size()) || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

// The per-character symbols before any merge, with `tokenizers`' rules for characters missing
// from the vocabulary: their <0xNN> byte tokens when byte_fallback is on and all exist, else the
// unknown token (consecutive ones fused into one with fuse_unk), else nothing.
void BpeModel::InitialSymbols(absl::string_view word, Ids* symbols) const {
  bool pending_unk = false;
  std::string mapped;
  for (size_t i = 0; i < word.size();) {
    size_t len = 1;
    int32_t id = -1;
    if (byte_level_) {
      id = byte_ids_[static_cast<unsigned char>(word[i])];
    } else {
      unicode::DecodeUtf8(word.data() + i, word.size() - i, &len);
      auto it = vocab_.find(word.substr(i, len));
      if (it != vocab_.end()) id = it->second;
    }
    if (id >= 0) {
      if (pending_unk) symbols->push_back(unk_id_);
      pending_unk = false;
      symbols->push_back(id);
      i += len;
      continue;
    }
    if (byte_fallback_) {
      // The bytes of the character as the model sees it (byte-level: its alphabet character).
      absl::string_view chars = word.substr(i, len);
      if (byte_level_) {
        mapped.clear();
        unicode::AppendUtf8(ByteLevelCodePoint(static_cast<uint8_t>(word[i])), &mapped);
        chars = mapped;
      }
      bool all = true;
      for (unsigned char b : chars) all = all && fallback_ids_[b] >= 0;
      if (all) {
        // As in `tokenizers`, a pending unknown token is not flushed here.
        for (unsigned char b : chars) symbols->push_back(fallback_ids_[b]);
        i += len;
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk && !fuse_unk_) symbols->push_back(unk_id_);
      pending_unk = true;
    }
    i += len;
  }
  if (pending_unk) symbols->push_back(unk_id_);
}

// Short words: rescan the pair ranks after each merge (a few dozen compares beat a heap).
void BpeModel::Merge(Ids* symbols) const {
  constexpr size_t kMax = 48;
  const size_t n0 = symbols->size();
  if (n0 < 2) return;
  if (n0 > kMax) {
    MergeLong(symbols);
    return;
  }
  int32_t* s = symbols->data();
  uint32_t rank[kMax];
  int32_t merged[kMax];
  size_t n = n0;
  auto update = [&](size_t i) {
    if (!FindMerge(s[i], s[i + 1], &rank[i], &merged[i])) rank[i] = UINT32_MAX;
  };
  for (size_t i = 0; i + 1 < n; ++i) update(i);
  for (;;) {
    size_t best = SIZE_MAX;
    uint32_t best_rank = UINT32_MAX;
    for (size_t i = 0; i + 1 < n; ++i) {
      if (rank[i] < best_rank) {
        best_rank = rank[i];
        best = i;
      }
    }
    if (best == SIZE_MAX) break;
    s[best] = merged[best];
    for (size_t i = best + 1; i + 1 < n; ++i) {
      s[i] = s[i + 1];
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best > 0) update(best - 1);
    if (best + 1 < n) update(best);
  }
  symbols->resize(n);
}

// Long words (whole lines under SentencePiece-style files): a heap of candidate merges over a
// linked list, stale entries skipped when popped, as `tokenizers` does.
void BpeModel::MergeLong(Ids* symbols) const {
  const size_t n = symbols->size();
  struct Node {
    int32_t id, prev, next;
  };
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Node> nodes(n);
  for (size_t i = 0; i < n; ++i) {
    nodes[i] = {(*symbols)[i], static_cast<int32_t>(i) - 1,
                i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  }
  std::vector<Candidate> heap;
  auto push = [&](int32_t pos) {
    Candidate c;
    c.pos = pos;
    if (FindMerge(nodes[pos].id, nodes[nodes[pos].next].id, &c.rank, &c.merged)) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  constexpr int32_t kDead = -2;
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    const Candidate top = heap.back();
    heap.pop_back();
    Node& node = nodes[top.pos];
    if (node.id == kDead || node.next < 0) continue;
    uint32_t rank;
    int32_t merged;
    if (!FindMerge(node.id, nodes[node.next].id, &rank, &merged) || merged != top.merged) continue;
    Node& right = nodes[node.next];
    node.id = merged;
    node.next = right.next;
    if (right.next >= 0) nodes[right.next].prev = top.pos;
    right.id = kDead;
    if (node.prev >= 0) push(node.prev);
    if (node.next >= 0) push(top.pos);
  }
  symbols->clear();
  for (int32_t i = 0; i >= 0; i = nodes[i].next) symbols->push_back(nodes[i].id);
}

void BpeModel::Tokenize(absl::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto& pieces = byte_level_ ? pieces_ : vocab_;
    if (auto it = pieces.find(word); it != pieces.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  Shard* shard = nullptr;
  if (word.size() <= kMaxCachedWordBytes) {
    shard = &cache_[absl::Hash<absl::string_view>()(word) % kShards];
    std::lock_guard<std::mutex> lock(shard->mu);
    if (auto it = shard->words.find(word); it != shard->words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  Ids symbols;
  InitialSymbols(word, &symbols);
  Merge(&symbols);
  ids->insert(ids->end(), symbols.begin(), symbols.end());
  if (shard != nullptr) {
    std::lock_guard<std::mutex> lock(shard->mu);
    if (shard->words.size() < kShardCapacity) shard->words.emplace(word, std::move(symbols));
  }
}

}  // namespace lora::hf
