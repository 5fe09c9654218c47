#include "server/grpc/registered_methods.h"

#include <google/protobuf/descriptor.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>

#include "absl/strings/match.h"

namespace lora::server {
namespace {

class ListingPlugin : public grpc::ServerBuilderPlugin {
 public:
  ListingPlugin(std::string prefix, std::function<void(std::vector<RpcMethodInfo>)> done)
      : prefix_(std::move(prefix)), done_(std::move(done)) {}

  std::string name() override { return "lora_registered_methods"; }
  void InitServer(grpc::ServerInitializer* si) override {
    std::vector<RpcMethodInfo> methods;
    for (const std::string& service : *si->GetServiceList()) {
      if (!absl::StartsWith(service, prefix_)) continue;
      for (RpcMethodInfo& m : MethodsOfService(service)) methods.push_back(std::move(m));
    }
    if (done_) done_(std::move(methods));
  }
  void Finish(grpc::ServerInitializer* /*si*/) override {}
  void ChangeArguments(const std::string& /*name*/, void* /*value*/) override {}

 private:
  const std::string prefix_;
  const std::function<void(std::vector<RpcMethodInfo>)> done_;
};

class ListingOption : public grpc::ServerBuilderOption {
 public:
  ListingOption(std::string prefix, std::function<void(std::vector<RpcMethodInfo>)> done)
      : prefix_(std::move(prefix)), done_(std::move(done)) {}
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->push_back(std::make_unique<ListingPlugin>(prefix_, done_));
  }

 private:
  const std::string prefix_;
  const std::function<void(std::vector<RpcMethodInfo>)> done_;
};

}  // namespace

std::vector<RpcMethodInfo> MethodsOfService(const std::string& full_name) {
  std::vector<RpcMethodInfo> out;
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(full_name);
  if (service == nullptr) return out;
  for (int i = 0; i < service->method_count(); ++i) {
    const google::protobuf::MethodDescriptor* m = service->method(i);
    out.push_back({full_name, m->name(), m->client_streaming() || m->server_streaming()});
  }
  return out;
}

std::unique_ptr<grpc::ServerBuilderOption> ListRegisteredMethods(
    std::string prefix, std::function<void(std::vector<RpcMethodInfo>)> done) {
  return std::make_unique<ListingOption>(std::move(prefix), std::move(done));
}

}  // namespace lora::server
