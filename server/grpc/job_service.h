// lora.v1.JobService over the callback API: translate, call one JobManager method on the
// thread pool (store writes may fsync), map the status. WatchJob is a write reactor fed by the
// manager's event subscription.
#ifndef LORA_SERVER_GRPC_JOB_SERVICE_H_
#define LORA_SERVER_GRPC_JOB_SERVICE_H_

#include <string>

#include "lora/v1/job_service.grpc.pb.h"
#include "server/core/artifact_store.h"
#include "server/core/executor.h"
#include "server/core/job_manager.h"
#include "server/grpc/service_hooks.h"

namespace lora::server {

class JobServiceImpl final : public lora::v1::JobService::CallbackService {
 public:
  JobServiceImpl(JobManager* manager, ArtifactStore* artifacts, ThreadPool* pool,
                 const ServiceHooks* hooks, std::string auth_token)
      : manager_(manager),
        artifacts_(artifacts),
        pool_(pool),
        hooks_(hooks),
        auth_token_(std::move(auth_token)) {}

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context,
                                      const lora::v1::CreateJobRequest* request,
                                      lora::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const lora::v1::GetJobRequest* request,
                                   lora::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const lora::v1::ListJobsRequest* request,
                                     lora::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const lora::v1::CancelJobRequest* request,
                                      lora::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* context,
                                            const lora::v1::ListCheckpointsRequest* request,
                                            lora::v1::ListCheckpointsResponse* response) override;
  grpc::ServerWriteReactor<lora::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* context, const lora::v1::WatchJobRequest* request) override;
  grpc::ServerWriteReactor<lora::v1::ArtifactChunk>* DownloadArtifact(
      grpc::CallbackServerContext* context,
      const lora::v1::DownloadArtifactRequest* request) override;

 private:
  template <typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const char* method, Fn fn);

  JobManager* manager_;
  ArtifactStore* artifacts_;
  ThreadPool* pool_;
  const ServiceHooks* hooks_;
  std::string auth_token_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_JOB_SERVICE_H_
