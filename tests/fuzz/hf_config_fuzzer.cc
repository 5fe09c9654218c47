// Fuzzes Hugging Face config.json reading: what ReadHfConfig (worker/engine/model/
// hf_checkpoint.h) does after reading the file, i.e. the bounded JSON parse and
// LlamaConfig::FromHfJson (common/llama_config.h), then what the engine computes from an
// accepted config.
#include <cstddef>
#include <cstdint>

#include "common/llama_config.h"
#include "common/nesting.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = lora::ParseJsonDocument(lora::fuzz::AsString(data, size), "config.json");
  if (!j.ok()) return 0;
  auto config = lora::LlamaConfig::FromHfJson(*j);
  if (!config.ok()) return 0;
  if (!config->Validate().ok()) return 0;
  (void)config->NumParameters();
  (void)config->SlidingWindowBinds(4096);
  for (int64_t layer = 0; layer < config->num_hidden_layers && layer < 1024; ++layer) {
    (void)config->LayerIsSliding(layer);
  }
  (void)lora::LlamaConfig::FromHfJson(config->ToHfJson());
  return 0;
}
