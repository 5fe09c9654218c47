#include "common/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace lora {
namespace {

using json = nlohmann::json;

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8},   {DType::kF32, "F32", 4},        {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8},        {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},          {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1}, {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

absl::Status Corrupt(absl::string_view source, absl::string_view problem) {
  return absl::DataLossError(absl::StrCat(source, ": invalid safetensors file: ", problem));
}

absl::Status CorruptTensor(absl::string_view source, absl::string_view tensor,
                           absl::string_view problem) {
  return absl::DataLossError(
      absl::StrCat(source, ": invalid safetensors file: tensor '", tensor, "': ", problem));
}

uint64_t ReadLittleEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

absl::StatusOr<TensorInfo> ParseTensorEntry(absl::string_view source, const std::string& name,
                                            const json& entry) {
  if (!entry.is_object()) return CorruptTensor(source, name, "entry is not a JSON object");
  TensorInfo info;
  info.name = name;
  bool has_dtype = false, has_shape = false, has_offsets = false;
  for (const auto& [key, value] : entry.items()) {
    if (key == "dtype") {
      if (!value.is_string()) return CorruptTensor(source, name, "dtype is not a string");
      auto dtype = ParseDType(value.get<std::string>());
      if (!dtype.ok()) {
        return CorruptTensor(source, name,
                             absl::StrCat("unknown dtype '", value.get<std::string>(), "'"));
      }
      info.dtype = *dtype;
      has_dtype = true;
    } else if (key == "shape") {
      if (!value.is_array()) return CorruptTensor(source, name, "shape is not an array");
      for (const json& dim : value) {
        if (!dim.is_number_unsigned()) {
          return CorruptTensor(source, name, "shape entries must be non-negative integers");
        }
        uint64_t d = dim.get<uint64_t>();
        if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return CorruptTensor(source, name, "shape dimension overflows int64");
        }
        info.shape.push_back(static_cast<int64_t>(d));
      }
      has_shape = true;
    } else if (key == "data_offsets") {
      if (!value.is_array() || value.size() != 2 || !value[0].is_number_unsigned() ||
          !value[1].is_number_unsigned()) {
        return CorruptTensor(source, name, "data_offsets must be [begin, end] unsigned integers");
      }
      info.begin = value[0].get<uint64_t>();
      info.end = value[1].get<uint64_t>();
      has_offsets = true;
    } else {
      return CorruptTensor(source, name, absl::StrCat("unexpected field '", key, "'"));
    }
  }
  if (!has_dtype) return CorruptTensor(source, name, "missing dtype");
  if (!has_shape) return CorruptTensor(source, name, "missing shape");
  if (!has_offsets) return CorruptTensor(source, name, "missing data_offsets");
  if (info.end < info.begin) return CorruptTensor(source, name, "data_offsets end < begin");

  uint64_t bytes = DTypeSize(info.dtype);
  for (int64_t d : info.shape) {
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) {
      return CorruptTensor(source, name, "shape overflows (numel * itemsize > 2^64)");
    }
  }
  if (bytes != info.end - info.begin) {
    return CorruptTensor(source, name,
                         absl::StrCat("byte count mismatch: shape and dtype need ", bytes,
                                      " bytes, data_offsets span ", info.end - info.begin));
  }
  return info;
}

}  // namespace

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown safetensors dtype '", name, "'"));
}

const char* DTypeName(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* bytes, size_t size,
                                                         absl::string_view source) {
  if (size < 8) {
    return Corrupt(source,
                   absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_len = ReadLittleEndian64(bytes);
  // The length is not quoted: for a file that is no safetensors file at all (a link to a
  // secret), it would be the file's first 8 bytes.
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return Corrupt(source, absl::StrCat("header length exceeds the limit of ",
                                        kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (header_len > size - 8) {
    return Corrupt(source, absl::StrCat("header length exceeds the file (", size,
                                        " bytes); the file is truncated"));
  }
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  if (header_len < 2 || text[0] != '{') {
    return Corrupt(source, "header is not a JSON object");
  }

  // nlohmann keeps the last of duplicate keys silently; catch duplicates while parsing.
  std::string duplicate;
  std::set<std::string> seen;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && duplicate.empty()) {
      std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, text + header_len, on_event);
  } catch (const json::parse_error& e) {
    // nlohmann's message quotes the text it last read; say where instead.
    return Corrupt(source, absl::StrCat("header is not valid UTF-8 JSON (near byte ", e.byte,
                                        " of ", header_len, ")"));
  } catch (const json::exception&) {
    return Corrupt(source, "header is not valid UTF-8 JSON");
  }
  if (!duplicate.empty()) return CorruptTensor(source, duplicate, "duplicate tensor name");
  if (!header.is_object()) return Corrupt(source, "header is not a JSON object");

  SafetensorsHeader result;
  result.data_start = 8 + header_len;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return Corrupt(source, "__metadata__ is not an object");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return Corrupt(source,
                         absl::StrCat("__metadata__ value for '", mkey, "' is not a string"));
        }
        result.metadata[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    LORA_ASSIGN_OR_RETURN(TensorInfo info, ParseTensorEntry(source, key, value));
    result.tensors.push_back(std::move(info));
  }

  std::sort(result.tensors.begin(), result.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t data_size = size - result.data_start;
  uint64_t cursor = 0;
  for (const TensorInfo& t : result.tensors) {
    if (t.begin < cursor) {
      return CorruptTensor(
          source, t.name,
          absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                       ") overlap the previous tensor (which ends at ", cursor, ")"));
    }
    if (t.begin > cursor) {
      return CorruptTensor(source, t.name,
                           absl::StrCat("gap in the data buffer: starts at ", t.begin,
                                        ", previous tensor ends at ", cursor));
    }
    if (t.end > data_size) {
      return CorruptTensor(source, t.name,
                           absl::StrCat("data_offsets end ", t.end, " is past the data buffer (",
                                        data_size, " bytes); the file is truncated"));
    }
    cursor = t.end;
  }
  if (cursor != data_size) {
    return Corrupt(source, absl::StrCat("data buffer has ", data_size - cursor,
                                        " trailing bytes not covered by any tensor"));
  }
  return result;
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  LORA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  LORA_ASSIGN_OR_RETURN(SafetensorsHeader header,
                        ParseSafetensorsHeader(file->data(), file->size(), path));
  return std::unique_ptr<SafetensorsFile>(new SafetensorsFile(std::move(file), std::move(header)));
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

absl::StatusOr<std::string> SerializeSafetensorsHeader(
    const std::vector<TensorToWrite>& tensors, const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrCat("invalid tensor name '", t.name, "'"));
    }
    if (header.contains(t.name)) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
    uint64_t expected = DTypeSize(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat(t.name, ": negative dimension"));
      expected *= static_cast<uint64_t>(d);
    }
    if (expected != t.nbytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(t.name, ": shape needs ", expected, " bytes but ", t.nbytes, " were given"));
    }
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += text;
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  LORA_ASSIGN_OR_RETURN(std::string header, SerializeSafetensorsHeader(tensors, metadata));
  LORA_ASSIGN_OR_RETURN(auto out, AtomicFile::Create(path));
  LORA_RETURN_IF_ERROR(out->Write(header));
  for (const TensorToWrite& t : tensors) LORA_RETURN_IF_ERROR(out->Write(t.data, t.nbytes));
  return out->Commit();
}

}  // namespace lora
