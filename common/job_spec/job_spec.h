// The job spec: TOML <-> lora.v1.JobSpec, defaults, and the one validation every binary uses.
//
//   LORA_ASSIGN_OR_RETURN(ParsedJobSpec parsed, ParseJobSpecToml(text, "job.toml"));
//   LORA_RETURN_IF_ERROR(ApplyOverride("training.steps=100", &parsed.spec));
//   ApplyJobSpecDefaults(&parsed.spec);
//   absl::Status valid = ValidateJobSpec(parsed.spec);   // INVALID_ARGUMENT naming key paths
//   std::string toml = JobSpecToToml(parsed.spec);
//
// TOML sections and keys are the proto's field names; the mapping is done by protobuf
// reflection, so the .proto is the single list of fields.
#ifndef LORA_COMMON_JOB_SPEC_JOB_SPEC_H_
#define LORA_COMMON_JOB_SPEC_JOB_SPEC_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lora/v1/job_spec.pb.h"

namespace lora {

struct ParsedJobSpec {
  lora::v1::JobSpec spec;
  // Key path ("training.steps") -> 1-based line in the TOML source, for error messages.
  std::map<std::string, int> lines;
};

// Parses TOML text. Unknown sections/keys and wrong types are INVALID_ARGUMENT errors of the
// form "<source>:<line>: <key path>: <rule>".
absl::StatusOr<ParsedJobSpec> ParseJobSpecToml(const std::string& text, const std::string& source);
absl::StatusOr<ParsedJobSpec> ReadJobSpecFile(const std::string& path);

// Serializes every set field, sections in proto order.
std::string JobSpecToToml(const lora::v1::JobSpec& spec);

// "section.key=<TOML value>", e.g. "training.steps=100", "lora.target_modules=[\"q_proj\"]".
absl::Status ApplyOverride(const std::string& assignment, lora::v1::JobSpec* spec);

// The one message-size policy: a spec lorad accepts is at most kMaxJobSpecBytes encoded, which
// fits every channel it travels (CreateJob, the worker stream's 4 MiB assignments), and a
// ListJobs page stops at kMaxListResponseBytes (clients receive up to 8 MiB).
inline constexpr size_t kMaxJobSpecBytes = 1 << 20;
inline constexpr size_t kMaxListResponseBytes = 4 << 20;

// Fills every unset field with its documented default.
void ApplyJobSpecDefaults(lora::v1::JobSpec* spec);

struct FieldViolation {
  std::string field;  // key path, e.g. "parallelism.tensor_parallel_degree"
  std::string description;
};

// The payload type of the google.rpc.BadRequest an INVALID_ARGUMENT carries (its field
// violations); common/grpc_status.h sends it as google.rpc.Status details.
inline constexpr char kBadRequestTypeUrl[] = "type.googleapis.com/google.rpc.BadRequest";
// `status` with `violations` attached as a google.rpc.BadRequest payload.
absl::Status WithBadRequest(absl::Status status, const std::vector<FieldViolation>& violations);

// Checks a defaulted spec. Returns every violation found (empty = valid).
std::vector<FieldViolation> JobSpecViolations(const lora::v1::JobSpec& spec);

// OK, or INVALID_ARGUMENT "key.path: rule; key.path: rule". With `lines`, each violation is
// prefixed with "<source>:<line>: " where the key appears.
absl::Status ValidateJobSpec(const lora::v1::JobSpec& spec, const ParsedJobSpec* parsed = nullptr,
                             const std::string& source = "");

// The key path of the first field (in proto order) where two specs differ, e.g.
// "training.steps"; "" when they are equal. Repeated fields and maps count as one value.
std::string FirstSpecDifference(const lora::v1::JobSpec& a, const lora::v1::JobSpec& b);

// "train" <-> JOB_KIND_TRAIN.
std::string JobKindName(lora::v1::JobKind kind);

}  // namespace lora

#endif  // LORA_COMMON_JOB_SPEC_JOB_SPEC_H_
