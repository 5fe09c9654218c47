// absl::Status <-> grpc::Status, in exactly one place for every binary that speaks gRPC
// (lorad, lora-worker, loractl and the client library). The two share the canonical code
// numbering (google.rpc.Code), so the conversion keeps code and message; payloads typed as
// google.rpc messages (type.googleapis.com/google.rpc.BadRequest) travel both ways as the
// google.rpc.Status details in the grpc-status-details-bin trailer.
//
//   return ToGrpcStatus(manager->CancelJob(name).status());
//   LORA_RETURN_IF_ERROR(FromGrpcStatus(stub->GetJob(&ctx, request, &job)));
#ifndef LORA_COMMON_GRPC_STATUS_H_
#define LORA_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace lora {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace lora

#endif  // LORA_COMMON_GRPC_STATUS_H_
