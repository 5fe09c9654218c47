// ListJobs' `filter` and `order_by` (AIP-160 / AIP-132 subsets), parsed once into a predicate.
//
//   LORA_ASSIGN_OR_RETURN(JobFilter f, ParseJobFilter("labels.team = \"nlp\" AND state =
//   RUNNING")); if (f.Matches(job)) ...
//
// Grammar: comparisons joined by AND (case-sensitive, as AIP-160 writes it), each one of
//   labels.KEY = VALUE     the job's spec.job.labels[KEY] equals VALUE
//   labels.KEY:*           the job has label KEY
//   state = STATE          a JobState name (RUNNING, PAUSED, ...)
//   kind = KIND            TRAIN, CONVERT or MERGE (or the enum's full name)
// VALUE is a bare word or a double-quoted string (\" and \\ escape). Anything else is
// INVALID_ARGUMENT naming the offending term. Bounded: at most kMaxFilterBytes and
// kMaxFilterTerms.
#ifndef LORA_SERVER_CORE_LIST_FILTER_H_
#define LORA_SERVER_CORE_LIST_FILTER_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lora/v1/job.pb.h"

namespace lora::server {

inline constexpr size_t kMaxFilterBytes = 2048;
inline constexpr size_t kMaxFilterTerms = 32;

struct JobFilter {
  std::map<std::string, std::string> label_equals;
  std::set<std::string> label_present;
  std::vector<lora::v1::JobState> states;  // any of (empty = all)
  std::vector<lora::v1::JobKind> kinds;
  bool has_labels() const { return !label_equals.empty() || !label_present.empty(); }
  bool Matches(const lora::v1::Job& job) const;
};

absl::StatusOr<JobFilter> ParseJobFilter(const std::string& filter);

// "" or "create_time desc" -> false (newest first); "create_time" / "create_time asc" -> true.
absl::StatusOr<bool> ParseOrderByAscending(const std::string& order_by);

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_LIST_FILTER_H_
