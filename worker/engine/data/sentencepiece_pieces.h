// The pieces (token strings) of a SentencePiece .model file, read directly from its protobuf
// encoding: the plugin interface (sentencepiece_backend.h) offers no piece lookup, and piece
// strings are what tokenizer_config.json's special tokens and chat templates name.
//
//   LORA_ASSIGN_OR_RETURN(std::vector<std::string> pieces, ReadSentencePiecePieces(path));
//   // pieces[id] is the string of token `id`
//
// Invariants: only the wire format is decoded (ModelProto field 1, SentencePiece field 1);
// everything else is skipped. Truncated or malformed input is an error, never a crash; files
// over kMaxSentencePieceModelBytes are refused unread.
#ifndef LORA_WORKER_ENGINE_DATA_SENTENCEPIECE_PIECES_H_
#define LORA_WORKER_ENGINE_DATA_SENTENCEPIECE_PIECES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lora {

inline constexpr uint64_t kMaxSentencePieceModelBytes = uint64_t{256} << 20;

absl::StatusOr<std::vector<std::string>> ParseSentencePiecePieces(absl::string_view bytes);
absl::StatusOr<std::vector<std::string>> ReadSentencePiecePieces(const std::string& path);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_DATA_SENTENCEPIECE_PIECES_H_
