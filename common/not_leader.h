// The typed refusal of a lorad replica that does not lead: UNAVAILABLE carrying a
// google.rpc.ErrorInfo {reason: "NOT_LEADER", domain: "lorad.io", metadata: {leader: ADDRESS}}
// in google.rpc.Status.details (common/grpc_status.h carries it across gRPC). A client that sees
// it knows the replica did nothing, so any call, idempotent or not, may go to another replica.
//
//   return NotLeaderError("this lorad replica is a follower ...", "lorad-0:50051");
//   if (std::optional<std::string> leader = NotLeader(status)) { ...retry elsewhere... }
#ifndef LORA_COMMON_NOT_LEADER_H_
#define LORA_COMMON_NOT_LEADER_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"
#include "google/rpc/error_details.pb.h"

namespace lora {

inline constexpr char kErrorInfoTypeUrl[] = "type.googleapis.com/google.rpc.ErrorInfo";
inline constexpr char kNotLeaderReason[] = "NOT_LEADER";
inline constexpr char kLoradErrorDomain[] = "lorad.io";

// UNAVAILABLE with `message` and the NOT_LEADER detail; `leader` may be "" (not known yet).
inline absl::Status NotLeaderError(absl::string_view message, const std::string& leader) {
  absl::Status status = absl::UnavailableError(message);
  google::rpc::ErrorInfo info;
  info.set_reason(kNotLeaderReason);
  info.set_domain(kLoradErrorDomain);
  (*info.mutable_metadata())["leader"] = leader;
  status.SetPayload(kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  return status;
}

// The leader's address ("" when the replica did not know it) if `status` is a NOT_LEADER
// refusal; nullopt for any other status.
inline std::optional<std::string> NotLeader(const absl::Status& status) {
  if (!absl::IsUnavailable(status)) return std::nullopt;
  auto payload = status.GetPayload(kErrorInfoTypeUrl);  // absl::optional in this Abseil
  google::rpc::ErrorInfo info;
  if (!payload || !info.ParseFromString(std::string(*payload)) ||
      info.reason() != kNotLeaderReason || info.domain() != kLoradErrorDomain) {
    return std::nullopt;
  }
  auto it = info.metadata().find("leader");
  return it == info.metadata().end() ? std::string() : it->second;
}

}  // namespace lora

#endif  // LORA_COMMON_NOT_LEADER_H_
