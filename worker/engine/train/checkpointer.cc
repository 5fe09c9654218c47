#include "worker/engine/train/checkpointer.h"

#include <filesystem>
#include <regex>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
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

std::string ManifestText(int64_t step, const std::vector<CheckpointFile>& files) {
  nlohmann::json list = nlohmann::json::array();
  for (const CheckpointFile& f : files)
    list.push_back({{"path", f.path}, {"bytes", f.bytes}, {"sha256", f.sha256}});
  return nlohmann::json{{"step", step}, {"files", list}}.dump(2) + "\n";
}

// The manifest's file list; DataLoss for anything unreadable (a resume passes such a
// checkpoint over like one whose files do not match).
absl::StatusOr<std::vector<CheckpointFile>> ReadManifest(const std::string& step_dir) {
  const std::string path = JoinPath(step_dir, kManifestFile);
  auto manifest = ReadJsonFile(path);
  if (!manifest.ok()) return absl::DataLossError(manifest.status().message());
  const nlohmann::json* list =
      manifest->is_object() && manifest->contains("files") ? &(*manifest)["files"] : nullptr;
  if (list == nullptr || !list->is_array())
    return absl::DataLossError(absl::StrCat(path, ": missing files list"));
  std::vector<CheckpointFile> files;
  for (const auto& f : *list) {
    if (!f.is_object() || !f.value("path", nlohmann::json()).is_string() ||
        !f.value("bytes", nlohmann::json()).is_number_unsigned() ||
        !f.value("sha256", nlohmann::json()).is_string()) {
      return absl::DataLossError(absl::StrCat(path, ": a file entry lacks path, bytes or sha256"));
    }
    files.push_back(
        {f["path"].get<std::string>(), f["bytes"].get<uint64_t>(), f["sha256"].get<std::string>()});
  }
  return files;
}

absl::StatusOr<LoadedCheckpoint> LoadVerifiedCheckpoint(const std::string& step_dir,
                                                        const torch::Device& device) {
  LoadedCheckpoint out;
  out.dir = step_dir;
  LORA_ASSIGN_OR_RETURN(std::string state, ReadFileToString(JoinPath(step_dir, kTrainerStateFile)));
  LORA_ASSIGN_OR_RETURN(out.state, ParseTrainerState(state));
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

}  // namespace

std::string CheckpointDirName(int64_t step) { return absl::StrFormat("step-%08d", step); }

std::string FormatTrainerState(const TrainerState& s) {
  // nlohmann writes NaN as null, which ParseTrainerState reads back as NaN.
  nlohmann::json j = {{"step", s.step},
                      {"optimizer_step", s.optimizer_step},
                      {"tokens", s.tokens},
                      {"data_cursor_windows", s.data_cursor_windows},
                      {"train_loss", s.train_loss},
                      {"eval_loss", s.eval_loss},
                      {"initial_eval_loss", s.initial_eval_loss},
                      {"world_size", s.world_size},
                      {"format_version", kTrainerStateFormat}};
  if (!s.mesh.empty()) j["mesh"] = s.mesh;
  return j.dump(2) + "\n";
}

absl::StatusOr<TrainerState> ParseTrainerState(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::DataLossError("trainer_state.json: not a JSON object");
  auto bad = [](const std::string& key, const char* want) {
    return absl::DataLossError(absl::StrCat("trainer_state.json: \"", key, "\" must be ", want));
  };
  TrainerState s;
  bool has_step = false, has_optimizer_step = false;
  for (const auto& item : j.items()) {
    const std::string& key = item.key();
    const nlohmann::json& v = item.value();
    auto integer = [&](auto* out) -> absl::Status {
      if (!v.is_number_integer()) return bad(key, "an integer");
      *out = v.get<std::remove_pointer_t<decltype(out)>>();
      return absl::OkStatus();
    };
    // A loss never computed was NaN, which JSON spells null.
    auto loss = [&](double* out) -> absl::Status {
      if (v.is_null()) return absl::OkStatus();
      if (!v.is_number()) return bad(key, "a number or null");
      *out = v.get<double>();
      return absl::OkStatus();
    };
    if (key == "step") {
      LORA_RETURN_IF_ERROR(integer(&s.step));
      has_step = true;
    } else if (key == "optimizer_step") {
      LORA_RETURN_IF_ERROR(integer(&s.optimizer_step));
      has_optimizer_step = true;
    } else if (key == "tokens") {
      LORA_RETURN_IF_ERROR(integer(&s.tokens));
    } else if (key == "data_cursor_windows") {
      LORA_RETURN_IF_ERROR(integer(&s.data_cursor_windows));
    } else if (key == "train_loss") {
      LORA_RETURN_IF_ERROR(loss(&s.train_loss));
    } else if (key == "eval_loss") {
      LORA_RETURN_IF_ERROR(loss(&s.eval_loss));
    } else if (key == "initial_eval_loss") {
      LORA_RETURN_IF_ERROR(loss(&s.initial_eval_loss));
    } else if (key == "world_size") {
      LORA_RETURN_IF_ERROR(integer(&s.world_size));
    } else if (key == "mesh") {
      if (!v.is_string()) return bad(key, "a string");
      s.mesh = v.get<std::string>();
    } else if (key == "format_version") {
      int version = 0;
      LORA_RETURN_IF_ERROR(integer(&version));
      if (version > kTrainerStateFormat) {
        return absl::FailedPreconditionError(absl::StrCat(
            "trainer_state.json: format_version ", version,
            " was written by a later lora-train (this one reads up to ", kTrainerStateFormat, ")"));
      }
    } else {
      return absl::DataLossError(absl::StrCat("trainer_state.json: unknown key \"", key, "\""));
    }
  }
  if (!has_step) return absl::DataLossError("trainer_state.json: missing \"step\"");
  if (s.step < 0) return bad("step", "at least 0");
  if (!has_optimizer_step) s.optimizer_step = s.step;
  return s;
}

absl::StatusOr<CheckpointInfo> SaveTrainingCheckpoint(const std::string& run_dir,
                                                      const CheckpointContents& c,
                                                      const CheckpointRetention& retention) {
  const int64_t step = c.state.step;
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
      WriteFileAtomically(JoinPath(dir, kTrainerStateFile), FormatTrainerState(c.state)));

  CheckpointInfo info;
  info.step = step;
  info.path = final_dir;
  for (const char* rel : {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                          "optimizer.safetensors", "rng_state.safetensors", kTrainerStateFile}) {
    const std::string path = JoinPath(dir, rel);
    LORA_ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
    const uint64_t size = fs::file_size(path);
    info.bytes += size;
    info.files.push_back({rel, size, digest});
  }
  const std::string manifest = ManifestText(step, info.files);
  info.sha256 = Sha256Hex(manifest);
  LORA_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(dir, kManifestFile), manifest));
  info.bytes += manifest.size();
  LORA_RETURN_IF_ERROR(staged->Commit());

  if (retention.keep_latest > 0) {
    auto all = ListCheckpoints(checkpoints);
    for (size_t i = 0; i + static_cast<size_t>(retention.keep_latest) < all.size(); ++i) {
      if (retention.copied_through_step && all[i].first > *retention.copied_through_step) break;
      std::error_code ec;
      fs::remove_all(all[i].second, ec);
    }
  }
  return info;
}

int64_t ReadCopiedThroughStep(const std::string& path) {
  auto text = ReadFileToString(path);
  int64_t step = 0;
  if (!text.ok() || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &step) || step < 0)
    return 0;
  return step;
}

absl::Status VerifyCheckpoint(const std::string& step_dir) {
  LORA_ASSIGN_OR_RETURN(std::vector<CheckpointFile> files, ReadManifest(step_dir));
  for (const CheckpointFile& f : files) {
    const std::string path = JoinPath(step_dir, f.path);
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    if (ec) return absl::DataLossError(absl::StrCat("checkpoint file missing: ", path));
    // The size first: a truncated copy is named as such, without reading it.
    if (size != f.bytes) {
      return absl::DataLossError(absl::StrCat(path, ": ", size, " bytes, the manifest says ",
                                              f.bytes, " (checkpoint corrupt)"));
    }
    auto digest = Sha256File(path);
    if (!digest.ok())
      return absl::DataLossError(absl::StrCat("checkpoint file unreadable: ", path));
    if (*digest != f.sha256) {
      return absl::DataLossError(absl::StrCat(path, ": sha256 mismatch (checkpoint corrupt)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedCheckpoint> LoadTrainingCheckpoint(const std::string& step_dir,
                                                        const torch::Device& device) {
  LORA_RETURN_IF_ERROR(VerifyCheckpoint(step_dir));
  return LoadVerifiedCheckpoint(step_dir, device);
}

absl::StatusOr<LoadedCheckpoint> LoadLatestCheckpoint(const std::string& dir,
                                                      const torch::Device& device,
                                                      const SkippedCheckpoint& skipped) {
  std::error_code ec;
  if (fs::exists(JoinPath(dir, kManifestFile), ec)) return LoadTrainingCheckpoint(dir, device);
  std::vector<std::pair<int64_t, std::string>> all;
  for (const std::string& candidate : {JoinPath(dir, "checkpoints"), dir}) {
    all = ListCheckpoints(candidate);
    if (!all.empty()) break;
  }
  if (all.empty()) {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no complete checkpoint (step-N directory with a manifest)"));
  }
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (absl::Status s = VerifyCheckpoint(it->second); !s.ok()) {
      if (skipped) skipped(it->second, s);
      continue;
    }
    return LoadVerifiedCheckpoint(it->second, device);
  }
  return absl::DataLossError(absl::StrCat(dir, ": every checkpoint is corrupt (", all.size(),
                                          " checked against their manifests)"));
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

}  // namespace lora
