// The "decoder" of a tokenizer.json: how token strings become text again.
//
//   LORA_ASSIGN_OR_RETURN(Decoder d, Decoder::FromJson(json["decoder"]));
//   std::string text = d.Decode({"Hello", "Ġworld"});  // "Hello world"
//
// Supported: ByteLevel, Metaspace, Replace (string patterns), ByteFallback, Fuse, Strip, and
// Sequence of those; null joins the tokens with spaces. Each step follows `tokenizers`'
// decode_chain, including its quirks (the Metaspace decoder drops every replacement character
// of the first token, not just a leading one), so that Decode agrees with it token for token.
// The result is valid UTF-8 whenever the steps end in ByteLevel or ByteFallback + Fuse.
#ifndef LORA_WORKER_ENGINE_DATA_HF_DECODER_H_
#define LORA_WORKER_ENGINE_DATA_HF_DECODER_H_

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/statusor.h"

namespace lora::hf {

class Decoder {
 public:
  static absl::StatusOr<Decoder> FromJson(const nlohmann::json& decoder);
  std::string Decode(std::vector<std::string> tokens) const;

 private:
  struct Step {
    enum Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
    std::string from, to;  // Replace; Metaspace: `from` is the replacement character
    std::string strip;     // Strip: the character to strip
    int64_t start = 0, stop = 0;
    bool drop_first = false;  // Metaspace with a prepend scheme other than "never"
  };
  static absl::Status AddSteps(const nlohmann::json& decoder, int depth, std::vector<Step>* steps);

  bool join_with_spaces_ = false;  // no decoder at all
  std::vector<Step> steps_;
};

}  // namespace lora::hf

#endif  // LORA_WORKER_ENGINE_DATA_HF_DECODER_H_
