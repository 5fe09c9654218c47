// Training checkpoints: everything needed to continue a run bitwise, written atomically.
//
// <run>/checkpoints/step-00000010/
//   adapter/                  PEFT adapter (fp32 master weights: loadable anywhere)
//   optimizer.safetensors     AdamW moments
//   rng_state.safetensors     CPU generator state (dropout)
//   trainer_state.json        step, tokens seen, data cursor, losses, world size
//   manifest.json             every file above with its size and sha256
// A checkpoint directory appears complete or not at all (staged, fsynced, renamed); only
// directories with a manifest are considered when resuming.
#ifndef LORA_WORKER_ENGINE_TRAIN_CHECKPOINTER_H_
#define LORA_WORKER_ENGINE_TRAIN_CHECKPOINTER_H_

#include <torch/nn/module.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/lora/converter.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/train/adamw.h"

namespace lora {

inline constexpr char kManifestFile[] = "manifest.json";
inline constexpr char kTrainerStateFile[] = "trainer_state.json";

struct CheckpointInfo {
  std::string path;
  int64_t step = 0;
  uint64_t bytes = 0;
  std::string sha256;  // of manifest.json, which lists every file's sha256
  nlohmann::json files = nlohmann::json::array();
};

struct CheckpointContents {
  std::vector<AdapterRecord> adapters;  // full-size (gathered when the run is sharded)
  std::vector<ModuleInfo> modules;
  const LoraConfig* lora = nullptr;
  std::string base_model;
  NamedTensors optimizer_state;  // AdamW moments of the full-size adapters
  int64_t optimizer_step = 0;
  nlohmann::json trainer_state;        // must hold "step"
  torch::Device device = torch::kCPU;  // where training runs: its GPU's RNG is saved too
};

struct LoadedCheckpoint {
  std::vector<AdapterRecord> adapters;
  NamedTensors optimizer_state;
  nlohmann::json trainer_state;
};

std::string CheckpointDirName(int64_t step);

// Writes <run_dir>/checkpoints/step-N and deletes the oldest beyond keep_latest (0 keeps all).
absl::StatusOr<CheckpointInfo> SaveTrainingCheckpoint(const std::string& run_dir,
                                                      const CheckpointContents& contents,
                                                      int keep_latest);

// `dir` is a step directory, a checkpoints/ directory or a run directory; returns the newest
// complete step directory inside it.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& dir);

// Verifies the manifest's digests, reads adapters and optimizer moments (full size), and restores
// the RNG state (the GPU generator of `device` too, when it is a CUDA device).
absl::StatusOr<LoadedCheckpoint> LoadTrainingCheckpoint(const std::string& step_dir,
                                                        const torch::Device& device = torch::kCPU);

// Single process: LoadTrainingCheckpoint into `model` and `optimizer`.
absl::StatusOr<nlohmann::json> RestoreTrainingCheckpoint(const std::string& step_dir,
                                                         torch::nn::Module& model, AdamW& optimizer,
                                                         const torch::Device& device = torch::kCPU);

// Copies records into the adapters of `root` (same modules and shapes).
absl::Status LoadAdapterRecords(torch::nn::Module& root, const std::vector<AdapterRecord>& records);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_CHECKPOINTER_H_
