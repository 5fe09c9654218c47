// Fuzzes the JSONL dataset reader (worker/engine/data/jsonl.h): its line splitting, the
// per-line nesting bound and the token-id checks. The reader takes a path, so the input goes
// through a scratch file.
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/fuzz_util.h"
#include "worker/engine/data/jsonl.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = lora::fuzz::WriteScratchFile("data.jsonl", data, size);
  (void)lora::ReadTokenSequences(path, /*vocab_size=*/32000);
  (void)lora::ForEachJsonLine(path, [](int64_t, const nlohmann::json& j) -> absl::Status {
    (void)j.dump();  // walks every value, as the engine's readers do
    return absl::OkStatus();
  });
  return 0;
}
