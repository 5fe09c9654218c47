// Fuzzes the safetensors header validation (common/safetensors.h) on whole-file bytes.
#include <cstddef>
#include <cstdint>

#include "common/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto header = lora::ParseSafetensorsHeader(data, size, "fuzz.safetensors");
  if (!header.ok()) return 0;
  // The reader promises that every accepted tensor's bytes lie inside the file: read them all,
  // so that ASan catches an offset the validation let through.
  uint8_t sum = 0;
  for (const lora::TensorInfo& t : header->tensors) {
    const uint8_t* p = data + header->data_start + t.begin;
    for (uint64_t i = 0; i < t.nbytes(); ++i) sum ^= p[i];
    (void)t.numel();
  }
  (void)sum;
  return 0;
}
