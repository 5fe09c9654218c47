#include "worker/engine/model/hf_checkpoint.h"

#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace lora {
namespace {

using json = nlohmann::json;

bool IsAdapterName(const std::string& name) { return absl::StrContains(name, "lora_"); }

// Names transformers drops on load without complaint.
bool IsIgnorableCheckpointTensor(const std::string& name) {
  return absl::EndsWith(name, "rotary_emb.inv_freq");
}

std::string ListForError(const std::vector<std::string>& items) {
  constexpr size_t kMaxShown = 20;
  std::vector<std::string> shown(items.begin(), items.begin() + std::min(items.size(), kMaxShown));
  std::string out = absl::StrJoin(shown, ", ");
  if (items.size() > kMaxShown)
    absl::StrAppend(&out, ", ... (", items.size() - kMaxShown, " more)");
  return out;
}

}  // namespace

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  LORA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  auto reader = std::unique_ptr<CheckpointReader>(new CheckpointReader());
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a checkpoint directory (does not exist)"));
  }
  const std::string index_path = JoinPath(dir, "model.safetensors.index.json");
  const std::string single_path = JoinPath(dir, "model.safetensors");
  std::vector<std::string> files;
  std::map<std::string, std::string> weight_map;
  if (fs::exists(index_path, ec)) {
    LORA_ASSIGN_OR_RETURN(json index, ReadJsonFile(index_path));
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": missing object 'weight_map'"));
    }
    std::set<std::string> unique;
    for (const auto& [tensor, file] : index["weight_map"].items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map['", tensor, "'] is not a string"));
      }
      std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f == "..") {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map['", tensor,
                                                       "'] = '", f, "' leaves the directory"));
      }
      weight_map[tensor] = f;
      if (unique.insert(f).second) files.push_back(f);
    }
  } else if (fs::exists(single_path, ec)) {
    files.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(
        absl::StrCat(dir, ": no model.safetensors or model.safetensors.index.json"));
  }
  for (const std::string& f : files) {
    LORA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(JoinPath(dir, f)));
    for (const TensorInfo& info : file->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(info.name);
        if (it == weight_map.end() || it->second != f) {
          return absl::DataLossError(absl::StrCat(file->path(), ": tensor '", info.name,
                                                  "' is not listed for this file in the index"));
        }
      }
      if (reader->entries_.count(info.name)) {
        return absl::DataLossError(absl::StrCat(file->path(), ": tensor '", info.name,
                                                "' appears in more than one shard"));
      }
      reader->entries_[info.name] = Entry{file.get(), &info};
      reader->names_.push_back(info.name);
      reader->total_bytes_ += info.nbytes();
    }
    reader->files_.push_back(std::move(file));
  }
  for (const auto& [tensor, f] : weight_map) {
    if (!reader->entries_.count(tensor)) {
      return absl::DataLossError(absl::StrCat(JoinPath(dir, f), ": tensor '", tensor,
                                              "' is listed in the index but not in the file"));
    }
  }
  return reader;
}

CheckpointReader::Entry CheckpointReader::Find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? Entry{nullptr, nullptr} : it->second;
}

absl::StatusOr<LlamaConfig> ReadHfConfig(const std::string& dir) {
  const std::string path = JoinPath(dir, "config.json");
  LORA_ASSIGN_OR_RETURN(json j, ReadJsonFile(path));
  auto config = LlamaConfig::FromHfJson(j);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(dir, "/", config.status().message()));
  }
  return config;
}

NamedTensors BaseStateDict(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!IsAdapterName(item.key())) out.emplace_back(item.key(), item.value());
  }
  return out;
}

absl::Status LoadStateDict(torch::nn::Module& module, const CheckpointReader& reader,
                           bool tied_embeddings) {
  std::vector<std::string> missing, mismatched, unexpected;
  std::set<std::string> expected;
  NamedTensors params = BaseStateDict(module);
  for (const auto& [name, param] : params) {
    expected.insert(name);
    CheckpointReader::Entry e = reader.Find(name);
    if (e.file == nullptr) {
      missing.push_back(name);
    } else if (param.sizes() != c10::IntArrayRef(e.info->shape)) {
      mismatched.push_back(absl::StrCat(name, " (checkpoint [", absl::StrJoin(e.info->shape, ", "),
                                        "], model [", absl::StrJoin(param.sizes(), ", "), "])"));
    } else if (!TorchDtype(e.info->dtype).ok() || DTypeSize(e.info->dtype) < 2 ||
               e.info->dtype == DType::kI64 || e.info->dtype == DType::kI32 ||
               e.info->dtype == DType::kI16) {
      mismatched.push_back(
          absl::StrCat(name, " (dtype ", DTypeName(e.info->dtype), " is not a float type)"));
    }
  }
  for (const std::string& name : reader.names()) {
    if (expected.count(name) || IsIgnorableCheckpointTensor(name)) continue;
    if (tied_embeddings && name == "lm_head.weight") continue;
    unexpected.push_back(name);
  }
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty()) {
    std::vector<std::string> parts;
    if (!missing.empty())
      parts.push_back(absl::StrCat(missing.size(), " missing: ", ListForError(missing)));
    if (!unexpected.empty())
      parts.push_back(absl::StrCat(unexpected.size(), " unexpected: ", ListForError(unexpected)));
    if (!mismatched.empty())
      parts.push_back(absl::StrCat(mismatched.size(), " mis-shaped: ", ListForError(mismatched)));
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint does not match the model: ", absl::StrJoin(parts, "; ")));
  }
  // Read ahead one tensor so disk reads overlap the copies (1.4x faster from a cold cache).
  for (size_t i = 0; i < params.size(); ++i) {
    if (i == 0) {
      CheckpointReader::Entry first = reader.Find(params[0].first);
      first.file->Prefetch(*first.info);
    }
    if (i + 1 < params.size()) {
      CheckpointReader::Entry next = reader.Find(params[i + 1].first);
      next.file->Prefetch(*next.info);
    }
    CheckpointReader::Entry e = reader.Find(params[i].first);
    AdviseHugePages(params[i].second);  // untouched since construction
    LORA_RETURN_IF_ERROR(CopyIntoTensor(*e.file, *e.info, params[i].second));
    e.file->Release(*e.info);
  }
  return absl::OkStatus();
}

absl::StatusOr<LlamaForCausalLM> LoadHfModel(const std::string& dir, torch::Dtype dtype) {
  LORA_ASSIGN_OR_RETURN(LlamaConfig config, ReadHfConfig(dir));
  LORA_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(dir));
  LlamaForCausalLM model(config, dtype);
  absl::Status loaded = LoadStateDict(*model, *reader, config.tie_word_embeddings);
  if (!loaded.ok()) return absl::Status(loaded.code(), absl::StrCat(dir, ": ", loaded.message()));
  return model;
}

absl::Status SaveHfModel(const LlamaForCausalLMImpl& model, const std::string& dir,
                         const SaveOptions& options) {
  LORA_RETURN_IF_ERROR(MakeDirectories(dir));
  LlamaConfig config = model.config();
  config.torch_dtype = FloatDtypeName(options.dtype);
  LORA_RETURN_IF_ERROR(
      WriteFileAtomically(JoinPath(dir, "config.json"), config.ToHfJson().dump(2) + "\n"));

  // Greedy sharding in parameter order, as transformers does.
  NamedTensors all = BaseStateDict(model);
  std::vector<NamedTensors> shards(1);
  uint64_t shard_bytes = 0;
  for (auto& item : all) {
    uint64_t bytes = static_cast<uint64_t>(item.second.numel()) * c10::elementSize(options.dtype);
    if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(item);
    shard_bytes += bytes;
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  std::error_code ec;
  if (shards.size() == 1) {
    std::filesystem::remove(JoinPath(dir, "model.safetensors.index.json"), ec);
    return WriteTensors(JoinPath(dir, "model.safetensors"), shards[0], options.dtype, metadata);
  }
  std::filesystem::remove(JoinPath(dir, "model.safetensors"), ec);
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    LORA_RETURN_IF_ERROR(WriteTensors(JoinPath(dir, name), shards[i], options.dtype, metadata));
    for (const auto& item : shards[i]) weight_map[item.first] = name;
  }
  json index = {{"metadata", {{"total_size", TensorBytes(all, options.dtype)}}},
                {"weight_map", weight_map}};
  return WriteFileAtomically(JoinPath(dir, "model.safetensors.index.json"), index.dump(2) + "\n");
}

absl::Status SaveHfModelAtomically(const LlamaForCausalLMImpl& model, const std::string& dir,
                                   const SaveOptions& options) {
  LORA_ASSIGN_OR_RETURN(auto staged, StagedDirectory::Create(dir, {"config.json"}));
  LORA_RETURN_IF_ERROR(SaveHfModel(model, staged->path(), options));
  return staged->Commit();
}

}  // namespace lora
