#include "worker/engine/data/batcher.h"

#include <ATen/ATen.h>

#include <random>

namespace lora {

Batch Batch::Slice(int64_t begin, int64_t n) const {
  Batch out;
  out.input_ids = input_ids.narrow(0, begin, n);
  out.targets = targets.narrow(0, begin, n);
  out.position_ids = position_ids.narrow(0, begin, n);
  if (document_ids.defined()) out.document_ids = document_ids.narrow(0, begin, n);
  out.num_targets = out.targets.ne(kIgnoreIndex).sum().item<int64_t>();
  return out;
}

Batcher::Batcher(std::vector<Example> examples, const BatcherOptions& options)
    : examples_(std::move(examples)), options_(options) {
  if (options_.pack) {
    int64_t total = 0;
    for (const Example& e : examples_) total += static_cast<int64_t>(e.tokens.size());
    // Every epoch has the same token count, so the same number of windows.
    windows_per_epoch_ = total > 1 ? (total - 1) / options_.seq_len : 0;
  } else {
    windows_per_epoch_ = static_cast<int64_t>(examples_.size());
  }
}

void Batcher::LoadEpoch(int64_t epoch) {
  if (epoch == loaded_epoch_) return;
  loaded_epoch_ = epoch;
  order_.resize(examples_.size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
  if (options_.shuffle) {
    std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch) + 1);
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng() % i]);
  }
  if (!options_.pack) return;
  stream_tokens_.clear();
  stream_targets_.clear();
  stream_docs_.clear();
  stream_positions_.clear();
  int32_t doc = 0;
  for (size_t idx : order_) {
    const Example& e = examples_[idx];
    for (size_t i = 0; i < e.tokens.size(); ++i) {
      stream_tokens_.push_back(e.tokens[i]);
      stream_targets_.push_back(i == 0 ? 0 : e.target[i]);  // the first token has no context
      stream_docs_.push_back(doc);
      stream_positions_.push_back(static_cast<int32_t>(i));
    }
    ++doc;
  }
}

void Batcher::FillRow(int64_t w, int64_t* ids, int64_t* targets, int64_t* positions,
                      int64_t* docs) const {
  const int64_t T = options_.seq_len;
  if (options_.pack) {
    const int64_t start = w * T;
    const int32_t first_doc = stream_docs_[static_cast<size_t>(start)];
    int64_t doc_start = 0;  // window index where the current document began
    for (int64_t t = 0; t < T; ++t) {
      const size_t i = static_cast<size_t>(start + t);
      if (t > 0 && stream_docs_[i] != stream_docs_[i - 1]) doc_start = t;
      ids[t] = stream_tokens_[i];
      positions[t] = t - doc_start;
      docs[t] = stream_docs_[i] - first_doc;
      const bool same_doc = stream_docs_[i + 1] == stream_docs_[i];
      targets[t] = (same_doc && stream_targets_[i + 1]) ? stream_tokens_[i + 1] : kIgnoreIndex;
    }
    return;
  }
  const Example& e = examples_[order_[static_cast<size_t>(w)]];
  const int64_t n = std::min<int64_t>(static_cast<int64_t>(e.tokens.size()), T + 1);
  for (int64_t t = 0; t < T; ++t) {
    ids[t] = t < n ? e.tokens[static_cast<size_t>(t)] : 0;
    positions[t] = t;
    targets[t] = (t + 1 < n && e.target[static_cast<size_t>(t + 1)])
                     ? e.tokens[static_cast<size_t>(t + 1)]
                     : kIgnoreIndex;
  }
}

Batch Batcher::MakeBatch(int64_t first_window, int64_t rows) {
  const int64_t T = options_.seq_len;
  Batch b;
  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  b.input_ids = torch::empty({rows, T}, opts);
  b.targets = torch::empty({rows, T}, opts);
  b.position_ids = torch::empty({rows, T}, opts);
  torch::Tensor docs = torch::zeros({rows, T}, opts);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t global = first_window + r;
    LoadEpoch(global / windows_per_epoch_);
    FillRow(global % windows_per_epoch_, b.input_ids[r].data_ptr<int64_t>(),
            b.targets[r].data_ptr<int64_t>(), b.position_ids[r].data_ptr<int64_t>(),
            docs[r].data_ptr<int64_t>());
  }
  if (options_.pack) b.document_ids = docs;
  b.num_targets = b.targets.ne(kIgnoreIndex).sum().item<int64_t>();
  return b;
}

}  // namespace lora
