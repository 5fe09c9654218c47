// absl::Status <-> grpc::Status, in exactly one place.
#ifndef LORA_SERVER_GRPC_STATUS_UTIL_H_
#define LORA_SERVER_GRPC_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace lora::server {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_STATUS_UTIL_H_
