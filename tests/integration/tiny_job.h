// Shared by the `lora-train run` suites (CPU and GPU): the tiny job spec, per-step losses from an
// events file, and the largest element-wise difference between two exported adapters.
#ifndef LORA_TESTS_INTEGRATION_TINY_JOB_H_
#define LORA_TESTS_INTEGRATION_TINY_JOB_H_

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>

#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "tests/integration/events_file.h"
#include "worker/engine/model/tensor_io.h"

namespace lora::testing {

inline std::string TinySpec(int steps, const std::string& extra = "") {
  return R"([job]
name = "tiny"
[model]
flavor = "tiny"
[lora]
rank = 4
target_modules = ["q_proj", "v_proj", "o_proj", "down_proj", "lm_head"]
[optimizer]
lr = 0.005
[lr_scheduler]
warmup_steps = 2
[training]
steps = )" +
         std::to_string(steps) + R"(
seq_len = 64
local_batch_size = 4
[dataset]
name = "synthetic-arith"
num_examples = 1500
validation_fraction = 0.05
validation_interval = 10
[checkpoint]
interval = 3
keep_latest = 0
)" + extra;
}

inline std::map<int64_t, double> StepLosses(const std::string& events) {
  std::map<int64_t, double> out;
  for (const auto& e : Events(events, "step")) out[e.step().step()] = e.step().loss();
  return out;
}

// max |a - b| / max |a| over every tensor of two adapter_model.safetensors files with the same
// tensors (a test failure, and +inf, when they differ in names or shapes).
inline double MaxRelativeAdapterDiff(const std::string& a_path, const std::string& b_path) {
  auto fa = SafetensorsFile::Open(a_path);
  auto fb = SafetensorsFile::Open(b_path);
  EXPECT_TRUE(fa.ok() && fb.ok()) << a_path << " / " << b_path;
  if (!fa.ok() || !fb.ok()) return INFINITY;
  EXPECT_EQ((*fa)->tensors().size(), (*fb)->tensors().size());
  double worst = 0;
  for (const TensorInfo& info : (*fa)->tensors()) {
    const TensorInfo* other = (*fb)->Find(info.name);
    EXPECT_NE(other, nullptr) << info.name;
    if (other == nullptr) return INFINITY;
    auto t = ReadTensor(**fa, info, torch::kFloat64), u = ReadTensor(**fb, *other, torch::kFloat64);
    EXPECT_TRUE(t.ok() && u.ok()) << info.name;
    if (!t.ok() || !u.ok() || t->sizes() != u->sizes()) return INFINITY;
    const double scale = std::max(t->abs().max().item<double>(), 1e-12);
    worst = std::max(worst, (*t - *u).abs().max().item<double>() / scale);
  }
  return worst;
}

}  // namespace lora::testing

#endif  // LORA_TESTS_INTEGRATION_TINY_JOB_H_
