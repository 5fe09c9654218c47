// Bearer-token authentication: "authorization: Bearer <token>" request metadata. An empty
// expected token disables the check (loopback development setups).
#ifndef LORA_SERVER_GRPC_AUTH_H_
#define LORA_SERVER_GRPC_AUTH_H_

#include <grpcpp/server_context.h>

#include <string>

#include "absl/status/status.h"

namespace lora::server {

absl::Status CheckBearerToken(const grpc::CallbackServerContext* context,
                              const std::string& expected);

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_AUTH_H_
