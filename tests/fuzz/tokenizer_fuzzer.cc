// Fuzzes tokenizer.json loading (HfTokenizer, worker/engine/data/hf_tokenizer.h) and, for a
// file it accepts, encoding and decoding. The same document also goes through the
// tokenizer_config.json reader.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/nesting.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_util.h"
#include "worker/engine/data/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = lora::ParseJsonDocument(lora::fuzz::AsString(data, size), "tokenizer.json",
                                   lora::hf::kMaxJsonDepth);
  if (!j.ok()) return 0;
  auto config = lora::hf::ParseTokenizerConfig(*j, "tokenizer_config.json");
  auto tok =
      lora::hf::HfTokenizer::FromJson(*j, "tokenizer.json", config.ok() ? &*config : nullptr);
  if (!tok.ok()) return 0;
  // Text that reaches every pre-tokenizer branch: letters, digits, spaces, newlines, a
  // special-token look-alike, invalid UTF-8, multi-byte characters.
  static const char* const kTexts[] = {"Hello world 123\n\n  x", "<|end|><s></s> a",
                                       "\xff\xfe\xc3(\xe2\x82",
                                       "h\xc3\xa9llo \xe4\xb8\xad\xf0\x9f\x98\x80"};
  for (const char* text : kTexts) {
    std::vector<int64_t> ids = (*tok)->EncodeWithSpecialTokens(text);
    (void)(*tok)->Decode(ids, /*skip_special_tokens=*/false);
    (void)(*tok)->Decode((*tok)->Encode(text));
  }
  std::vector<int64_t> all;
  for (int64_t id = -1; id <= (*tok)->vocab_size() && id < 512; ++id) {
    all.push_back(id);
    (void)(*tok)->IdToToken(id);
  }
  (void)(*tok)->Decode(all, /*skip_special_tokens=*/false);
  return 0;
}
