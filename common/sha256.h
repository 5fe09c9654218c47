// SHA-256 (FIPS 180-4) through OpenSSL, for checkpoint, artifact and upload digests.
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

struct evp_md_ctx_st;

namespace lora {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&& other) noexcept;
  Sha256& operator=(Sha256&& other) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  void Update(absl::string_view s) { Update(s.data(), s.size()); }
  std::array<uint8_t, 32> Digest();  // finalizes; call once (later calls return zeros)
  std::string HexDigest();

 private:
  evp_md_ctx_st* ctx_;  // OpenSSL's EVP_MD_CTX
  bool finished_ = false;
};

absl::StatusOr<std::string> Sha256File(const std::string& path);
std::string Sha256Hex(absl::string_view data);

}  // namespace lora

#endif  // LORA_COMMON_SHA256_H_
