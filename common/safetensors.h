// Reader and writer for the safetensors format (https://github.com/huggingface/safetensors).
//
// Reading memory-maps the file and validates every header field before any tensor byte is
// touched: header length bound, UTF-8 JSON, dtype names, shapes (overflow), data offsets
// (in range, contiguous from 0 to the end of the file, matching numel * itemsize), duplicate
// names. Errors name the file, the tensor and the problem.
//
//   LORA_ASSIGN_OR_RETURN(auto st, SafetensorsFile::Open(path));
//   for (const TensorInfo& t : st->tensors()) Use(t.name, st->Data(t), t.nbytes());
//
//   std::vector<TensorToWrite> out = {{"w", DType::kF32, {2, 3}, ptr, 24}};
//   LORA_RETURN_IF_ERROR(WriteSafetensors(path, out, {{"format", "pt"}}));
//
// This file is free of LibTorch so that every binary (and the ASan build) can use it.
#ifndef LORA_COMMON_SAFETENSORS_H_
#define LORA_COMMON_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/mapped_file.h"

namespace lora {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3, kF8E5M2 };

absl::StatusOr<DType> ParseDType(absl::string_view name);
const char* DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

// Largest header the reader accepts, as in the reference implementation.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets relative to the start of the data buffer
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in data-offset order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // absolute file offset of the data buffer
};

// Validates the header of a whole safetensors file held in `bytes`. `source` names the file in
// error messages.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* bytes, size_t size,
                                                         absl::string_view source);

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // nullptr when absent.
  const TensorInfo* Find(absl::string_view name) const;
  const uint8_t* Data(const TensorInfo& tensor) const {
    return file_->data() + header_.data_start + tensor.begin;
  }
  // Starts reading a tensor's bytes from disk in the background.
  void Prefetch(const TensorInfo& tensor) const {
    file_->WillNeed(header_.data_start + tensor.begin, tensor.nbytes());
  }
  // Lets the kernel drop the pages of a tensor that has been copied out.
  void Release(const TensorInfo& tensor) const {
    file_->DontNeed(header_.data_start + tensor.begin, tensor.nbytes());
  }

 private:
  SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header);

  std::unique_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> index_;
};

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // little-endian, row-major
  size_t nbytes = 0;
};

// Serializes the 8-byte length prefix plus the space-padded JSON header for `tensors`, laid out
// back to back in the given order.
absl::StatusOr<std::string> SerializeSafetensorsHeader(
    const std::vector<TensorToWrite>& tensors, const std::map<std::string, std::string>& metadata);

// Writes a complete file atomically (temporary file, fsync, rename).
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace lora

#endif  // LORA_COMMON_SAFETENSORS_H_
