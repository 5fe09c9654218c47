#include "worker/engine/model/hf_checkpoint.h"

#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/nesting.h"
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
  // Checkpoint metadata (config.json, shard indexes, adapter configs) is small.
  constexpr uint64_t kMaxMetadataBytes = uint64_t{256} << 20;
  return ReadJsonDocument(path, kMaxMetadataBytes);
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

namespace {

// config.json (the base's own, dtype updated, or generated), the base's tokenizer and
// generation files, or a generation_config.json of our own.
absl::Status WriteConfigAndCompanions(const LlamaConfig& model_config, const std::string& dir,
                                      const SaveOptions& options) {
  const std::string dtype = FloatDtypeName(options.dtype);
  json config;
  if (!options.base_dir.empty()) {
    LORA_ASSIGN_OR_RETURN(config, ReadJsonFile(JoinPath(options.base_dir, "config.json")));
    if (!config.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(options.base_dir, "/config.json: must be a JSON object"));
    }
    // transformers 5 writes `dtype`, earlier versions `torch_dtype`: keep whichever is there.
    if (config.contains("dtype") || !config.contains("torch_dtype")) config["dtype"] = dtype;
    if (config.contains("torch_dtype")) config["torch_dtype"] = dtype;
  } else {
    LlamaConfig c = model_config;
    c.torch_dtype = dtype;
    config = c.ToHfJson();
  }
  LORA_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(dir, "config.json"), config.dump(2) + "\n"));
  bool has_generation_config = false;
  if (!options.base_dir.empty()) {
    for (const char* name : kCompanionFiles) {
      const std::string from = JoinPath(options.base_dir, name);
      std::error_code ec;
      if (!std::filesystem::is_regular_file(from, ec)) continue;
      std::filesystem::copy_file(from, JoinPath(dir, name),
                                 std::filesystem::copy_options::overwrite_existing, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("copying ", from, " into ", dir, ": ", ec.message()));
      }
      has_generation_config =
          has_generation_config || std::string(name) == "generation_config.json";
    }
  }
  if (!has_generation_config) {
    json generation = {{"bos_token_id", model_config.bos_token_id},
                       {"eos_token_id", model_config.eos_token_id}};
    LORA_RETURN_IF_ERROR(
        WriteFileAtomically(JoinPath(dir, "generation_config.json"), generation.dump(2) + "\n"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string BaseModelId(const std::string& model) {
  std::error_code ec;
  if (!std::filesystem::is_directory(model, ec)) return model;  // a flavor
  auto config = ReadJsonFile(JoinPath(model, "config.json"));
  if (config.ok() && config->is_object()) {
    auto it = config->find("_name_or_path");
    if (it != config->end() && it->is_string()) {
      const std::string id = it->get<std::string>();
      if (!id.empty() && id[0] != '/' && id[0] != '.' && !std::filesystem::exists(id, ec))
        return id;
    }
  }
  const std::filesystem::path p = std::filesystem::absolute(model, ec).lexically_normal();
  std::filesystem::path dir = p.has_filename() ? p : p.parent_path();
  // Hub cache layout: .../models--org--name/snapshots/<revision>
  const std::filesystem::path snapshots = dir.parent_path();
  const std::string repo = snapshots.parent_path().filename().string();
  if (snapshots.filename() == "snapshots" && absl::StartsWith(repo, "models--")) {
    std::string id = repo.substr(std::strlen("models--"));
    const size_t sep = id.find("--");
    if (sep != std::string::npos) id.replace(sep, 2, "/");
    return id;
  }
  return dir.filename().string();
}

absl::Status SaveHfModel(const LlamaForCausalLMImpl& model, const std::string& dir,
                         const SaveOptions& options) {
  LORA_RETURN_IF_ERROR(MakeDirectories(dir));
  LORA_RETURN_IF_ERROR(WriteConfigAndCompanions(model.config(), dir, options));

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
