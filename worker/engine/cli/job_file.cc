#include "worker/engine/cli/job_file.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/job_spec/job_spec.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace lora {

absl::StatusOr<lora::v1::JobSpec> LoadJobFile(const std::string& path,
                                              const std::vector<std::string>& overrides) {
  ParsedJobSpec parsed;
  if (absl::EndsWith(path, ".json")) {
    LORA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    auto status = google::protobuf::util::JsonStringToMessage(text, &parsed.spec);
    if (!status.ok())
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", status.ToString()));
  } else {
    LORA_ASSIGN_OR_RETURN(parsed, ReadJobSpecFile(path));
  }
  for (const std::string& o : overrides) LORA_RETURN_IF_ERROR(ApplyOverride(o, &parsed.spec));
  ApplyJobSpecDefaults(&parsed.spec);
  LORA_RETURN_IF_ERROR(ValidateJobSpec(parsed.spec, &parsed, path));
  return parsed.spec;
}

}  // namespace lora
