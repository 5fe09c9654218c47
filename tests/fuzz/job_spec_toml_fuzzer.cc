// Fuzzes job spec TOML parsing and everything lora-train and lorad do next with an accepted
// spec: defaults, validation, serialization and parsing the serialized form again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/job_spec/job_spec.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = lora::ParseJobSpecToml(lora::fuzz::AsString(data, size), "fuzz.toml");
  if (!parsed.ok()) return 0;
  lora::ApplyJobSpecDefaults(&parsed->spec);
  (void)lora::ValidateJobSpec(parsed->spec, &*parsed, "fuzz.toml");
  const std::string toml = lora::JobSpecToToml(parsed->spec);
  // What JobSpecToToml writes, ParseJobSpecToml must read back.
  if (!lora::ParseJobSpecToml(toml, "roundtrip.toml").ok()) std::abort();
  return 0;
}
