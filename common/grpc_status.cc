#include "common/grpc_status.h"

#include <string>

#include "google/rpc/status.pb.h"

namespace lora {
namespace {

constexpr char kTypeUrlPrefix[] = "type.googleapis.com/";

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // Payloads typed as google.rpc messages (a BadRequest's field violations) travel as
  // google.rpc.Status details, the trailer every gRPC client library knows how to read.
  google::rpc::Status details;
  status.ForEachPayload([&](absl::string_view type_url, const absl::Cord& payload) {
    if (type_url.substr(0, sizeof(kTypeUrlPrefix) - 1) != kTypeUrlPrefix) return;
    auto* any = details.add_details();
    any->set_type_url(std::string(type_url));
    any->set_value(std::string(payload));
  });
  if (details.details_size() == 0) {
    return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                        std::string(status.message()));
  }
  details.set_code(static_cast<int>(status.code()));
  details.set_message(std::string(status.message()));
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()),
                      details.SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  google::rpc::Status details;
  if (!status.error_details().empty() && details.ParseFromString(status.error_details())) {
    for (const auto& any : details.details())
      out.SetPayload(any.type_url(), absl::Cord(any.value()));
  }
  return out;
}

}  // namespace lora
