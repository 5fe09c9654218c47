// The methods of the services a grpc::ServerBuilder registers, learnt while it builds the
// server (before it serves), so that per-method metrics cover every service without a list to
// keep in step:
//
//   builder.RegisterService(&job_service);  ...
//   builder.SetOption(ListRegisteredMethods("lora.", [&](std::vector<RpcMethodInfo> methods) {
//     for (const auto& m : methods) rpc_metrics->AddMethod(m.method, m.streaming);
//   }));
//   auto server = builder.BuildAndStart();   // `done` ran inside, once
//
// Methods come from the services' descriptors in the generated pool; a registered service
// whose full name does not start with `prefix` (gRPC's health and reflection services, which
// report through no hook) is skipped. Uses gRPC's ServerBuilderPlugin interface, the one the
// reflection plugin is built on.
#ifndef LORA_SERVER_GRPC_REGISTERED_METHODS_H_
#define LORA_SERVER_GRPC_REGISTERED_METHODS_H_

#include <grpcpp/impl/server_builder_option.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace lora::server {

struct RpcMethodInfo {
  std::string service;     // "lora.v1.JobService"
  std::string method;      // "WatchJob"
  bool streaming = false;  // client, server or bidirectional streaming
};

std::unique_ptr<grpc::ServerBuilderOption> ListRegisteredMethods(
    std::string prefix, std::function<void(std::vector<RpcMethodInfo>)> done);

// The methods of one service by full name, from the generated descriptor pool (empty when the
// name is unknown).
std::vector<RpcMethodInfo> MethodsOfService(const std::string& full_name);

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_REGISTERED_METHODS_H_
