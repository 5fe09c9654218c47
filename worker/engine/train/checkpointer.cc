#include "worker/engine/train/checkpointer.h"

#include <filesystem>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/rng_state.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

// Complete step directories under `checkpoints`, oldest first.
std::vector<std::pair<int64_t, std::string>> ListCheckpoints(const std::string& checkpoints) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(checkpoints, ec)) return out;
  static const std::regex kName("step-(\\d+)");
  for (const auto& entry : fs::directory_iterator(checkpoints, ec)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && std::regex_match(name, m, kName) &&
        fs::exists(entry.path() / kManifestFile)) {
      out.emplace_back(std::stoll(m[1].str()), entry.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The CPU generator always; the GPU's too when training ran on one, so a resumed CUDA run
// draws the same dropout masks as an uninterrupted one.
absl::Status WriteRngState(const std::string& path, const torch::Device& device) {
  const RngState s = CaptureRng(device);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"cpu_generator", s.cpu}};
  if (s.cuda.defined()) tensors.emplace_back("cuda_generator", s.cuda);
  return WriteTensors(path, tensors, torch::kUInt8, {{"format", "pt"}});
}

absl::Status ReadRngState(const std::string& path, const torch::Device& device) {
  LORA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
  const TensorInfo* info = file->Find("cpu_generator");
  if (info == nullptr) return absl::DataLossError(absl::StrCat(path, ": no cpu_generator state"));
  RngState s;
  LORA_ASSIGN_OR_RETURN(s.cpu, ReadTensor(*file, *info, torch::kUInt8));
  // A checkpoint written on a GPU resumes on the CPU with the CPU state alone (the CPU draws
  // from nothing else); on a GPU, a checkpoint from the CPU leaves the GPU generator seeded.
  if (const TensorInfo* cuda = file->Find("cuda_generator"); cuda != nullptr && device.is_cuda()) {
    LORA_ASSIGN_OR_RETURN(s.cuda, ReadTensor(*file, *cuda, torch::kUInt8));
    s.cuda_device = device.has_index() ? device.index() : 0;
  }
  try {
    RestoreRng(s);
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": bad generator state: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointDirName(int64_t step) { return absl::StrFormat("step-%08d", step); }

absl::StatusOr<CheckpointInfo> SaveTrainingCheckpoint(const std::string& run_dir,
                                                      const CheckpointContents& c,
                                                      int keep_latest) {
  const int64_t step = c.trainer_state.at("step").get<int64_t>();
  const std::string checkpoints = JoinPath(run_dir, "checkpoints");
  LORA_RETURN_IF_ERROR(MakeDirectories(checkpoints));
  const std::string final_dir = JoinPath(checkpoints, CheckpointDirName(step));
  LORA_ASSIGN_OR_RETURN(auto staged, StagedDirectory::Create(final_dir, {kManifestFile}));
  const std::string dir = staged->path();

  LORA_RETURN_IF_ERROR(MakeDirectories(JoinPath(dir, "adapter")));
  PeftExportOptions peft;
  peft.dtype = torch::kFloat32;  // exact master weights, so resuming is bitwise
  peft.base_model_name_or_path = c.base_model;
  LORA_RETURN_IF_ERROR(
      WritePeftAdapterFiles(c.adapters, c.modules, *c.lora, JoinPath(dir, "adapter"), peft));
  LORA_RETURN_IF_ERROR(
      WriteTensors(JoinPath(dir, "optimizer.safetensors"), c.optimizer_state, torch::kFloat32,
                   {{"format", "pt"}, {"step", std::to_string(c.optimizer_step)}}));
  LORA_RETURN_IF_ERROR(WriteRngState(JoinPath(dir, "rng_state.safetensors"), c.device));
  LORA_RETURN_IF_ERROR(
      WriteFileAtomically(JoinPath(dir, kTrainerStateFile), c.trainer_state.dump(2) + "\n"));

  CheckpointInfo info;
  info.step = step;
  info.path = final_dir;
  for (const char* rel : {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                          "optimizer.safetensors", "rng_state.safetensors", kTrainerStateFile}) {
    const std::string path = JoinPath(dir, rel);
    LORA_ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
    const uint64_t size = fs::file_size(path);
    info.bytes += size;
    info.files.push_back({{"path", rel}, {"bytes", size}, {"sha256", digest}});
  }
  const std::string manifest = nlohmann::json{{"step", step}, {"files", info.files}}.dump(2) + "\n";
  info.sha256 = Sha256Hex(manifest);
  LORA_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(dir, kManifestFile), manifest));
  info.bytes += manifest.size();
  LORA_RETURN_IF_ERROR(staged->Commit());

  if (keep_latest > 0) {
    auto all = ListCheckpoints(checkpoints);
    for (size_t i = 0; i + static_cast<size_t>(keep_latest) < all.size(); ++i) {
      std::error_code ec;
      fs::remove_all(all[i].second, ec);
    }
  }
  return info;
}

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(JoinPath(dir, kManifestFile), ec)) return dir;
  for (const std::string& candidate : {JoinPath(dir, "checkpoints"), dir}) {
    auto all = ListCheckpoints(candidate);
    if (!all.empty()) return all.back().second;
  }
  return absl::NotFoundError(
      absl::StrCat(dir, ": no complete checkpoint (step-N directory with a manifest)"));
}

absl::StatusOr<LoadedCheckpoint> LoadTrainingCheckpoint(const std::string& step_dir,
                                                        const torch::Device& device) {
  LORA_ASSIGN_OR_RETURN(nlohmann::json manifest, ReadJsonFile(JoinPath(step_dir, kManifestFile)));
  if (!manifest.contains("files") || !manifest["files"].is_array()) {
    return absl::DataLossError(absl::StrCat(step_dir, "/manifest.json: missing files list"));
  }
  for (const auto& f : manifest["files"]) {
    const std::string path = JoinPath(step_dir, f.value("path", ""));
    auto digest = Sha256File(path);
    if (!digest.ok()) return absl::DataLossError(absl::StrCat("checkpoint file missing: ", path));
    if (*digest != f.value("sha256", "")) {
      return absl::DataLossError(absl::StrCat(path, ": sha256 mismatch (checkpoint corrupt)"));
    }
  }
  LoadedCheckpoint out;
  LORA_ASSIGN_OR_RETURN(out.trainer_state, ReadJsonFile(JoinPath(step_dir, kTrainerStateFile)));
  LORA_ASSIGN_OR_RETURN(out.adapters, ReadPeftAdapterRecords(JoinPath(step_dir, "adapter")));
  LORA_ASSIGN_OR_RETURN(auto opt_file,
                        SafetensorsFile::Open(JoinPath(step_dir, "optimizer.safetensors")));
  for (const TensorInfo& t : opt_file->tensors()) {
    LORA_ASSIGN_OR_RETURN(torch::Tensor v, ReadTensor(*opt_file, t, torch::kFloat32));
    out.optimizer_state.emplace_back(t.name, v);
  }
  LORA_RETURN_IF_ERROR(ReadRngState(JoinPath(step_dir, "rng_state.safetensors"), device));
  return out;
}

absl::Status LoadAdapterRecords(torch::nn::Module& root,
                                const std::vector<AdapterRecord>& records) {
  std::map<std::string, LinearImpl*> linears;
  for (const auto& [name, linear] : AdaptedLinears(root)) linears[name] = linear;
  torch::NoGradGuard no_grad;
  for (const AdapterRecord& r : records) {
    auto it = linears.find(r.module);
    if (it == linears.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint adapter for '", r.module, "' has no adapter in the model"));
    }
    LinearImpl* l = it->second;
    if (l->lora_a->weight.sizes() != r.a.sizes() || l->lora_b->weight.sizes() != r.b.sizes()) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint adapter for '", r.module, "' has another shape"));
    }
    if (l->use_dora() != r.magnitude.defined() ||
        (r.magnitude.defined() && l->lora_magnitude.sizes() != r.magnitude.sizes())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint adapter for '", r.module, "' ",
          r.magnitude.defined() ? "is DoRA but the model's is not" : "lacks the DoRA magnitude"));
    }
    l->lora_a->weight.copy_(r.a);
    l->lora_b->weight.copy_(r.b);
    if (r.magnitude.defined()) l->lora_magnitude.copy_(r.magnitude);
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> RestoreTrainingCheckpoint(const std::string& step_dir,
                                                         torch::nn::Module& model, AdamW& optimizer,
                                                         const torch::Device& device) {
  LORA_ASSIGN_OR_RETURN(LoadedCheckpoint c, LoadTrainingCheckpoint(step_dir, device));
  LORA_RETURN_IF_ERROR(LoadAdapterRecords(model, c.adapters));
  const int64_t step =
      c.trainer_state.value("optimizer_step", c.trainer_state.value("step", int64_t{0}));
  LORA_RETURN_IF_ERROR(optimizer.LoadState(c.optimizer_state, step));
  return c.trainer_state;
}

}  // namespace lora
