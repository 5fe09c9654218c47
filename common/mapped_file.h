// A read-only memory mapping of a whole file.
//
//   LORA_ASSIGN_OR_RETURN(auto file, MappedFile::Open("model.safetensors"));
//   const uint8_t* bytes = file->data();  // valid while `file` lives
#ifndef LORA_COMMON_MAPPED_FILE_H_
#define LORA_COMMON_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace lora {

class MappedFile {
 public:
  enum class Access { kSequential, kRandom };

  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path,
                                                          Access access = Access::kSequential);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Starts asynchronous readahead of a byte range that will be read soon.
  void WillNeed(size_t offset, size_t length) const;

  // Tells the kernel a byte range will not be read again, so page cache can be reclaimed
  // early when streaming checkpoints much larger than memory.
  void DontNeed(size_t offset, size_t length) const;

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

}  // namespace lora

#endif  // LORA_COMMON_MAPPED_FILE_H_
