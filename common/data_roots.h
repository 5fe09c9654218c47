// Which files a job may name. A job spec's path fields (model.path, model.tokenizer,
// lora.adapter, dataset.path, dataset.validation_path) come from clients, but the worker and
// its lora-train ranks open them with their own rights; without a bound, a client could name
// /etc/shadow or /proc/self/environ and learn from the error whether it exists, or what it holds.
//
// Two checks, one per place that knows something:
//
//   // lorad, at CreateJob: no file system, only what the operator declared.
//   LORA_RETURN_IF_ERROR(CheckSpecPaths(spec, declared_roots));
//
//   // lora-worker before starting ranks, and lora-train before opening anything: the file
//   // system as it is (symlinks and ".." resolved, links inside directories followed).
//   LORA_ASSIGN_OR_RETURN(DataRoots roots, DataRoots::Create({"/data", "/models"}));
//   LORA_RETURN_IF_ERROR(roots.CheckSpec(spec));
//
// Empty roots mean no restriction (development setups, where the client and the worker are the
// same user); a production worker should always be given its roots (lora-worker --data-root).
//
// Errors for a path outside the roots depend only on the path as written, never on whether
// something exists there or what it holds: PERMISSION_DENIED "<field>: \"<path>\" is not under
// the data roots (--data-root); ...". Only a path inside the roots may get NOT_FOUND.
//
// The check is made before the files are opened, so whoever can write inside a root could swap
// a checked file for a link between the check and the open: roots must be writable only by
// those trusted with what the worker can read.
#ifndef LORA_COMMON_DATA_ROOTS_H_
#define LORA_COMMON_DATA_ROOTS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/job_spec/job_spec.h"
#include "lora/v1/job_spec.pb.h"

namespace lora {

struct SpecPath {
  std::string field;  // key path, e.g. "dataset.path"
  std::string path;
};

// "files/{id}": an upload lorad stores (lora.v1.FileService), not a path on anyone's disk. The
// worker fetches it into its cache and hands lora-train the local copy, so the roots do not
// apply to it. Anything else beginning "files/" is a relative path (and refused as one).
inline constexpr char kFileRefPrefix[] = "files/";
bool IsFileRef(absl::string_view path);

// The set path fields of `spec`, in proto order; model.tokenizer = "byte" is not a path.
std::vector<SpecPath> SpecPaths(const lora::v1::JobSpec& spec);
// Sets the path field SpecPaths names `field` (e.g. a worker naming its local copy of an upload).
void SetSpecPath(lora::v1::JobSpec* spec, const std::string& field, const std::string& path);

class DataRoots {
 public:
  DataRoots() = default;  // no restriction

  // Each root must be an existing directory; it is kept as its realpath. INVALID_ARGUMENT
  // naming the root otherwise.
  static absl::StatusOr<DataRoots> Create(const std::vector<std::string>& roots);

  bool restricted() const { return !roots_.empty(); }
  const std::vector<std::string>& roots() const { return roots_; }  // realpaths

  // OK when `path` (relative: to the working directory) resolves at or under a root. For a
  // directory, every symbolic link below it must resolve under a root too, since the engine
  // opens files inside model and adapter directories by name. PERMISSION_DENIED when outside
  // (or unresolvable: a link loop, an unsearchable directory), NOT_FOUND when inside but
  // missing, INVALID_ARGUMENT for an empty path. Always OK without roots.
  absl::Status CheckReadable(absl::string_view field, const std::string& path) const;

  // CheckReadable on every SpecPaths entry; every failure in one message ("; "), with the code
  // of the first.
  absl::Status CheckSpec(const lora::v1::JobSpec& spec) const;

 private:
  DataRoots(std::vector<std::string> roots, std::vector<std::string> lookup)
      : roots_(std::move(roots)), lookup_(std::move(lookup)) {}

  std::vector<std::string> roots_;   // realpaths: what a resolved path must lie under
  std::vector<std::string> lookup_;  // roots_ and the roots as declared: what a lookup may cross
};

// lorad's submit-time check, without touching the file system (the files are on the workers):
// with declared roots, every path field must be absolute, free of ".." components and
// lexically at or under a declared root. Empty `declared_roots`: no violations.
std::vector<FieldViolation> SpecPathViolations(const lora::v1::JobSpec& spec,
                                               const std::vector<std::string>& declared_roots);
// OK, or INVALID_ARGUMENT "key.path: rule; key.path: rule" (as ValidateJobSpec).
absl::Status CheckSpecPaths(const lora::v1::JobSpec& spec,
                            const std::vector<std::string>& declared_roots);

}  // namespace lora

#endif  // LORA_COMMON_DATA_ROOTS_H_
