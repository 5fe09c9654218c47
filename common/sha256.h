// SHA-256 (FIPS 180-4), for checkpoint and artifact digests.
//
//   Sha256 h; h.Update(data, n); std::string hex = h.HexDigest();
//   LORA_ASSIGN_OR_RETURN(std::string hex, Sha256File(path));
#ifndef LORA_COMMON_SHA256_H_
#define LORA_COMMON_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lora {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  void Update(absl::string_view s) { Update(s.data(), s.size()); }
  std::array<uint8_t, 32> Digest();  // finalizes; call once
  std::string HexDigest();

 private:
  void Block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

absl::StatusOr<std::string> Sha256File(const std::string& path);
std::string Sha256Hex(absl::string_view data);

}  // namespace lora

#endif  // LORA_COMMON_SHA256_H_
