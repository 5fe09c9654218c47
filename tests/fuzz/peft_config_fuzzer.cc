// Fuzzes adapter_config.json reading (ReadPeftConfig, worker/engine/lora/peft_adapter.h). It
// takes a directory, so the input is written as adapter_config.json in a scratch directory.
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/fuzz_util.h"
#include "worker/engine/lora/peft_adapter.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lora::fuzz::WriteScratchFile("adapter_config.json", data, size);
  (void)lora::ReadPeftConfig(lora::fuzz::ScratchDir());
  return 0;
}
