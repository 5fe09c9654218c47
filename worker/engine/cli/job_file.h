// Reads a job spec for lora-train: TOML (.toml) or proto JSON (.json), --set overrides applied,
// defaults filled, validated (errors name file, line and key path).
#ifndef LORA_WORKER_ENGINE_CLI_JOB_FILE_H_
#define LORA_WORKER_ENGINE_CLI_JOB_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lora/v1/job_spec.pb.h"

namespace lora {

absl::StatusOr<lora::v1::JobSpec> LoadJobFile(const std::string& path,
                                              const std::vector<std::string>& overrides);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_CLI_JOB_FILE_H_
