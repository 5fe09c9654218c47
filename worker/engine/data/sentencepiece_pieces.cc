#include "worker/engine/data/sentencepiece_pieces.h"

#include <filesystem>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lora {
namespace {

// A cursor over protobuf wire format.
class Wire {
 public:
  explicit Wire(absl::string_view bytes) : p_(bytes) {}
  bool done() const { return p_.empty(); }

  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_.empty()) return false;
      const auto b = static_cast<uint8_t>(p_[0]);
      p_.remove_prefix(1);
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  // Reads one field: its number, wire type, and (for length-delimited fields) its bytes.
  bool Field(uint32_t* number, uint32_t* type, absl::string_view* payload) {
    uint64_t tag;
    if (!Varint(&tag)) return false;
    *number = static_cast<uint32_t>(tag >> 3);
    *type = static_cast<uint32_t>(tag & 7);
    uint64_t skip = 0;
    switch (*type) {
      case 0: {
        uint64_t unused;
        return Varint(&unused);
      }
      case 1:
        skip = 8;
        break;
      case 5:
        skip = 4;
        break;
      case 2:
        if (!Varint(&skip) || skip > p_.size()) return false;
        *payload = p_.substr(0, skip);
        break;
      default:
        return false;  // groups are not used by SentencePiece
    }
    if (skip > p_.size()) return false;
    p_.remove_prefix(skip);
    return true;
  }

 private:
  absl::string_view p_;
};

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseSentencePiecePieces(absl::string_view bytes) {
  std::vector<std::string> pieces;
  Wire model(bytes);
  while (!model.done()) {
    uint32_t number, type;
    absl::string_view payload;
    if (!model.Field(&number, &type, &payload))
      return absl::InvalidArgumentError("malformed SentencePiece model");
    if (number != 1 || type != 2) continue;
    Wire piece(payload);
    std::string text;
    while (!piece.done()) {
      uint32_t n, t;
      absl::string_view p;
      if (!piece.Field(&n, &t, &p))
        return absl::InvalidArgumentError("malformed SentencePiece model");
      if (n == 1 && t == 2) text = std::string(p);
    }
    pieces.push_back(std::move(text));
  }
  if (pieces.empty()) return absl::InvalidArgumentError("SentencePiece model has no pieces");
  return pieces;
}

absl::StatusOr<std::vector<std::string>> ReadSentencePiecePieces(const std::string& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  if (size > kMaxSentencePieceModelBytes)
    return absl::InvalidArgumentError(absl::StrCat(path, ": too large"));
  std::ifstream in(path, std::ios::binary);
  std::string bytes(size, '\0');
  if (!in.read(bytes.data(), static_cast<std::streamsize>(size)))
    return absl::DataLossError(absl::StrCat(path, ": read failed"));
  auto pieces = ParseSentencePiecePieces(bytes);
  if (!pieces.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", pieces.status().message()));
  return pieces;
}

}  // namespace lora
