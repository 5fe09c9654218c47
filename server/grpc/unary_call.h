// The shape of every unary method of the public services: authenticate the caller (user
// plane), parse the raw request (INVALID_ARGUMENT when it does not parse, checked only after
// authentication so an anonymous caller learns nothing), run the handler on the pool (store
// writes may fsync), record the call, answer.
//
//   return RawUnaryCall<lora::v1::GetFileRequest, lora::v1::File>(
//       {context, credentials_, pool_, hooks_, "GetFile"}, request, response,
//       [this](const Principal& caller, const auto& req, auto* resp) { ... });
#ifndef LORA_SERVER_GRPC_UNARY_CALL_H_
#define LORA_SERVER_GRPC_UNARY_CALL_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <utility>

#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/core/executor.h"
#include "server/grpc/credentials.h"
#include "server/grpc/raw_message.h"
#include "server/grpc/service_hooks.h"

namespace lora::server {

struct UnaryCallContext {
  grpc::CallbackServerContext* context;
  const CredentialStore* credentials;
  ThreadPool* pool;
  const ServiceHooks* hooks;
  const char* method;
};

// Runs fn(principal) -> absl::Status on the pool once the caller is authenticated.
template <typename Fn>
grpc::ServerUnaryReactor* AuthenticatedUnary(const UnaryCallContext& call, Fn fn) {
  auto* reactor = call.context->DefaultReactor();
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Principal> caller = call.credentials->Authenticate(*call.context, Plane::kUser);
  if (!caller.ok()) {
    call.hooks->Rpc(call.method, ToGrpcStatus(caller.status()).error_code(), 0);
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  call.pool->Schedule([reactor, hooks = call.hooks, method = call.method, start,
                       p = *std::move(caller), fn = std::move(fn)]() mutable {
    grpc::Status status = ToGrpcStatus(fn(p));
    hooks->Rpc(method, status.error_code(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    reactor->Finish(status);
  });
  return reactor;
}

// handler(const Principal&, const Req&, Resp*) -> absl::Status.
template <typename Req, typename Resp, typename Handler>
grpc::ServerUnaryReactor* RawUnaryCall(const UnaryCallContext& call, const grpc::ByteBuffer* in,
                                       grpc::ByteBuffer* out, Handler handler) {
  auto request = std::make_shared<Req>();
  const absl::Status parsed = ParseMessage(*in, request.get());
  return AuthenticatedUnary(
      call, [request, parsed, out, handler = std::move(handler)](const Principal& caller) {
        LORA_RETURN_IF_ERROR(parsed);
        Resp response;
        LORA_RETURN_IF_ERROR(handler(caller, *request, &response));
        *out = ToByteBuffer(response);
        return absl::OkStatus();
      });
}

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_UNARY_CALL_H_
