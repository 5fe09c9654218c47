// Training checkpoints: everything needed to continue a run bitwise, written atomically.
//
// <run>/checkpoints/step-00000010/
//   adapter/                  PEFT adapter (fp32 master weights: loadable anywhere)
//   optimizer.safetensors     AdamW moments
//   rng_state.safetensors     CPU generator state (dropout), and the GPU's on a GPU
//   trainer_state.json        TrainerState below
//   manifest.json             every file above with its size and sha256
//
//   CheckpointContents c;  c.state.step = 10;  ...
//   LORA_ASSIGN_OR_RETURN(CheckpointInfo info, SaveTrainingCheckpoint(run_dir, c, {3}));
//   LORA_ASSIGN_OR_RETURN(LoadedCheckpoint back, LoadLatestCheckpoint(run_dir, device,
//       [](const std::string& dir, const absl::Status& why) { /* skipped: corrupt */ }));
//
// Invariants: a checkpoint directory appears complete or not at all (staged, fsynced, renamed);
// only directories with a manifest are considered when resuming, and nothing is read from one
// whose files do not match its manifest. The layout is the same whatever wrote it (one process
// or any mesh of ranks): any layout resumes any other's checkpoint.
#ifndef LORA_WORKER_ENGINE_TRAIN_CHECKPOINTER_H_
#define LORA_WORKER_ENGINE_TRAIN_CHECKPOINTER_H_

#include <torch/nn/module.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/train/adamw.h"

namespace lora {

inline constexpr char kManifestFile[] = "manifest.json";
inline constexpr char kTrainerStateFile[] = "trainer_state.json";
// trainer_state.json's "format_version"; a checkpoint of a later version is refused, not
// misread.
inline constexpr int kTrainerStateFormat = 1;

// Where the training loop stood: trainer_state.json, the one definition of its fields. A loss
// that was never computed is NaN (null in the file).
struct TrainerState {
  int64_t step = 0;
  // AdamW's update count (its bias correction); equals `step` in runs this engine writes.
  int64_t optimizer_step = 0;
  int64_t tokens = 0;               // trained on so far, every rank's together
  int64_t data_cursor_windows = 0;  // training windows consumed (data order is positional)
  double train_loss = std::nan("");
  double eval_loss = std::nan("");
  double initial_eval_loss = std::nan("");
  int world_size = 1;
  std::string mesh;  // the layout that wrote it, "" for one process (informative only)
};

// The file's text (key-sorted, indented JSON) and back. Parsing is strict: `step` is required,
// an unknown key, a wrong type or a later format_version is an error naming it.
std::string FormatTrainerState(const TrainerState& state);
absl::StatusOr<TrainerState> ParseTrainerState(const std::string& text);

// One file of a checkpoint, relative to its step directory, as manifest.json lists it.
struct CheckpointFile {
  std::string path;
  uint64_t bytes = 0;
  std::string sha256;
};

struct CheckpointInfo {
  std::string path;
  int64_t step = 0;
  uint64_t bytes = 0;
  std::string sha256;  // of manifest.json, which lists every file's sha256
  std::vector<CheckpointFile> files;
};

struct CheckpointContents {
  std::vector<AdapterRecord> adapters;  // full-size (gathered when the run is sharded)
  std::vector<ModuleInfo> modules;
  const LoraConfig* lora = nullptr;
  std::string base_model;
  NamedTensors optimizer_state;  // AdamW moments of the full-size adapters
  int64_t optimizer_step = 0;
  TrainerState state;
  torch::Device device = torch::kCPU;  // where training runs: its GPU's RNG is saved too
};

struct LoadedCheckpoint {
  std::string dir;  // the step directory read
  std::vector<AdapterRecord> adapters;
  NamedTensors optimizer_state;
  TrainerState state;
};

std::string CheckpointDirName(int64_t step);

// Which older step directories a save may delete.
struct CheckpointRetention {
  int keep_latest = 0;  // the newest kept; 0 keeps all
  // A launcher that copies checkpoints off the machine (lora-worker) says how far it got; a
  // step after this one is kept whatever keep_latest says, since deleting it would lose a
  // checkpoint nobody has a copy of. Unset: nobody copies, keep_latest alone decides.
  std::optional<int64_t> copied_through_step;
};

// Writes <run_dir>/checkpoints/step-N and applies `retention` to the older step directories.
absl::StatusOr<CheckpointInfo> SaveTrainingCheckpoint(const std::string& run_dir,
                                                      const CheckpointContents& contents,
                                                      const CheckpointRetention& retention);

// The step a launcher wrote to `path` (decimal, one line), the highest it copied off the
// machine; 0 while the file is missing or unreadable, so that nothing uncopied is deleted.
int64_t ReadCopiedThroughStep(const std::string& path);

// DataLoss naming the file unless every file the manifest lists has its size and sha256.
absl::Status VerifyCheckpoint(const std::string& step_dir);

// Verifies the manifest's digests, reads adapters and optimizer moments (full size) and the
// trainer state, and restores the RNG state (the GPU generator of `device` too, when it is a
// CUDA device).
absl::StatusOr<LoadedCheckpoint> LoadTrainingCheckpoint(const std::string& step_dir,
                                                        const torch::Device& device = torch::kCPU);

// Called for each newer checkpoint passed over, with why (a file that does not match the
// manifest: a flipped byte, a truncated copy).
using SkippedCheckpoint = std::function<void(const std::string& step_dir, const absl::Status&)>;

// `dir` is a step directory (loaded as is: corrupt is an error), or a run or checkpoints/
// directory: its newest checkpoint that verifies is loaded, newer corrupt ones are reported to
// `skipped` and passed over. NotFound when there is none, DataLoss when none verifies.
absl::StatusOr<LoadedCheckpoint> LoadLatestCheckpoint(const std::string& dir,
                                                      const torch::Device& device,
                                                      const SkippedCheckpoint& skipped);

// Copies records into the adapters of `root` (same modules and shapes).
absl::Status LoadAdapterRecords(torch::nn::Module& root, const std::vector<AdapterRecord>& records);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_CHECKPOINTER_H_
