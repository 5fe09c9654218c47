// The BPE model of Hugging Face tokenizer.json files: vocabulary, merges by rank, unknown-token
// and byte-fallback handling, and a cache of words already tokenized.
//
//   LORA_ASSIGN_OR_RETURN(auto bpe, BpeModel::FromJson(json["model"], /*byte_level=*/true));
//   std::vector<int32_t> ids;
//   bpe->Tokenize(word, &ids);  // appends
//
// Invariants: Tokenize gives the ids `tokenizers` gives for the same word (merges applied
// lowest rank first, leftmost first among equal ranks). With byte_level, words are raw bytes
// and the vocabulary is held by the bytes its byte-level strings stand for, so the byte-level
// mapping never runs on the hot path. Tokenize is const and safe to call from many threads.
#ifndef LORA_WORKER_ENGINE_DATA_HF_BPE_H_
#define LORA_WORKER_ENGINE_DATA_HF_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lora::hf {

// Bounds on what a tokenizer.json may ask for; real files are far below them.
inline constexpr int64_t kMaxTokenId = (int64_t{1} << 21) - 1;
inline constexpr size_t kMaxMerges = size_t{1} << 23;
inline constexpr size_t kMaxTokenBytes = 1 << 16;

class BpeModel {
 public:
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model,
                                                            bool byte_level);

  void Tokenize(absl::string_view word, std::vector<int32_t>* ids) const;

  // The vocabulary as written in the file (byte-level strings for byte-level models).
  int32_t TokenId(absl::string_view token) const;
  // nullptr when no vocabulary entry has this id.
  const std::string* IdToToken(int64_t id) const;
  int64_t max_id() const { return static_cast<int64_t>(id_to_token_.size()) - 1; }
  int64_t num_entries() const { return static_cast<int64_t>(vocab_.size()); }

 private:
  BpeModel() = default;
  using Ids = absl::InlinedVector<int32_t, 6>;

  void InitialSymbols(absl::string_view word, Ids* symbols) const;
  void Merge(Ids* symbols) const;
  void MergeLong(Ids* symbols) const;
  // Rank and result of merging a pair; false when the pair has no merge.
  bool FindMerge(int32_t left, int32_t right, uint32_t* rank, int32_t* merged) const {
    auto it = merges_.find(Key(left, right));
    if (it == merges_.end()) return false;
    *rank = static_cast<uint32_t>(it->second >> 32);
    *merged = static_cast<int32_t>(it->second & 0xffffffffu);
    return true;
  }
  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  bool byte_level_ = false;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  int32_t unk_id_ = -1;
  absl::flat_hash_map<std::string, int32_t> vocab_;   // as in the file
  absl::flat_hash_map<std::string, int32_t> pieces_;  // by the bytes a token matches
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  absl::flat_hash_map<uint64_t, uint64_t> merges_;  // (left, right) -> (rank << 32 | merged)
  std::array<int32_t, 256> fallback_ids_{};         // <0xNN>, -1 when absent
  // Byte-level: the symbol of each byte, or -1; and its fallback (the bytes of its character).
  std::array<int32_t, 256> byte_ids_{};

  // Words seen before, by their bytes. Sharded so that threads rarely meet on a lock; full
  // shards stop growing (the hit rate on natural text saturates long before).
  static constexpr int kShards = 16;
  static constexpr size_t kShardCapacity = 1 << 14;
  static constexpr size_t kMaxCachedWordBytes = 256;
  struct Shard {
    std::mutex mu;
    absl::flat_hash_map<std::string, Ids> words;
  };
  mutable std::array<Shard, kShards> cache_;
};

}  // namespace lora::hf

#endif  // LORA_WORKER_ENGINE_DATA_HF_BPE_H_
