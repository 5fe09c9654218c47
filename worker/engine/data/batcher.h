// Turns examples into fixed-shape batches, deterministically by (seed, position), so that a
// run resumed at step k sees exactly the batches an uninterrupted run sees.
//
// Packed: each epoch concatenates the examples in a seeded order and cuts the stream into
// windows of seq_len + 1 tokens overlapping by one (inputs = window[0..T), targets =
// window[1..T]). Tokens attend only within their own example (document ids), positions restart
// at each example, and a target that starts a new example is not scored.
// Unpacked: one example per row, truncated to seq_len + 1 and right-padded.
//
//   Batcher train(split.train, {.seq_len = 256, .pack = true, .seed = 42});
//   Batch b = train.MakeBatch(/*first_window=*/step * batch_size, batch_size);
#ifndef LORA_WORKER_ENGINE_DATA_BATCHER_H_
#define LORA_WORKER_ENGINE_DATA_BATCHER_H_

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "worker/engine/data/examples.h"

namespace lora {

inline constexpr int64_t kIgnoreIndex = -100;

struct Batch {
  torch::Tensor input_ids;     // int64 [B, T]
  torch::Tensor targets;       // int64 [B, T], kIgnoreIndex where not scored
  torch::Tensor position_ids;  // int64 [B, T]
  torch::Tensor document_ids;  // int64 [B, T]; undefined when unpacked (padding is causal-safe)
  int64_t num_targets = 0;     // scored positions

  // Rows [begin, begin + n) as a batch of their own.
  Batch Slice(int64_t begin, int64_t n) const;
};

struct BatcherOptions {
  int64_t seq_len = 256;
  bool pack = true;
  uint64_t seed = 0;
  bool shuffle = true;  // false: examples in the given order (validation)
};

class Batcher {
 public:
  Batcher(std::vector<Example> examples, const BatcherOptions& options);

  // Windows (rows) in one pass over the examples.
  int64_t windows_per_epoch() const { return windows_per_epoch_; }
  // Rows [first_window, first_window + rows) of the endless stream (epochs repeat, reshuffled).
  Batch MakeBatch(int64_t first_window, int64_t rows);

 private:
  void LoadEpoch(int64_t epoch);
  void FillRow(int64_t window_in_epoch, int64_t* ids, int64_t* targets, int64_t* positions,
               int64_t* docs) const;

  std::vector<Example> examples_;
  BatcherOptions options_;
  int64_t windows_per_epoch_ = 0;
  int64_t loaded_epoch_ = -1;
  // The current epoch's example order, and (packed) its concatenated stream.
  std::vector<size_t> order_;
  std::vector<int64_t> stream_tokens_;
  std::vector<uint8_t> stream_targets_;
  std::vector<int32_t> stream_docs_;
  std::vector<int32_t> stream_positions_;
};

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_BATCHER_H_
