// Fuzzes the proto-JSON job spec path of lora-train (worker/engine/cli/job_file.cc): protobuf's
// JSON parser, then defaults, validation and the TOML serialization of the result.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/job_spec/job_spec.h"
#include "google/protobuf/util/json_util.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lora::ParsedJobSpec parsed;
  auto status =
      google::protobuf::util::JsonStringToMessage(lora::fuzz::AsString(data, size), &parsed.spec);
  if (!status.ok()) return 0;
  lora::ApplyJobSpecDefaults(&parsed.spec);
  (void)lora::ValidateJobSpec(parsed.spec, &parsed, "fuzz.json");
  // A JSON spec can hold strings TOML must escape; the TOML parser must take them back.
  // Not asserted: a proto float that TOML writes as inf/nan is fine either way.
  (void)lora::ParseJobSpecToml(lora::JobSpecToToml(parsed.spec), "roundtrip.toml");
  return 0;
}
