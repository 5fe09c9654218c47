// lora.v1.JobService over the callback API: translate, call one JobManager method on the
// thread pool (store writes may fsync), map the status. WatchJob is a write reactor fed by the
// manager's event subscription. Every call is authenticated (CredentialStore, user plane) and
// scoped to the caller's tenant: another tenant's job answers NOT_FOUND exactly like a job that
// does not exist (authorization before existence, AIP-211); admins see every tenant.
#ifndef LORA_SERVER_GRPC_JOB_SERVICE_H_
#define LORA_SERVER_GRPC_JOB_SERVICE_H_

#include <string>

#include "lora/v1/job_service.grpc.pb.h"
#include "server/core/artifact_store.h"
#include "server/core/executor.h"
#include "server/core/job_manager.h"
#include "server/grpc/credentials.h"
#include "server/grpc/service_hooks.h"

namespace lora::server {

// Every method takes raw bytes and parses them here: gRPC 1.51's generated callback handlers
// answer a request they cannot parse with a bare UNIMPLEMENTED, these with INVALID_ARGUMENT.
using JobServiceBase = lora::v1::JobService::WithRawCallbackMethod_CreateJob<
    lora::v1::JobService::WithRawCallbackMethod_GetJob<
        lora::v1::JobService::WithRawCallbackMethod_ListJobs<
            lora::v1::JobService::WithRawCallbackMethod_CancelJob<
                lora::v1::JobService::WithRawCallbackMethod_ListCheckpoints<
                    lora::v1::JobService::WithRawCallbackMethod_WatchJob<
                        lora::v1::JobService::WithRawCallbackMethod_DownloadArtifact<
                            lora::v1::JobService::WithRawCallbackMethod_DeleteJob<
                                lora::v1::JobService::WithRawCallbackMethod_PauseJob<
                                    lora::v1::JobService::WithRawCallbackMethod_ResumeJob<
                                        lora::v1::JobService::CallbackService>>>>>>>>>>;

class JobServiceImpl final : public JobServiceBase {
 public:
  // A watcher more than `watch_max_pending_events` events behind its job is ended UNAVAILABLE
  // with the after_sequence to resume from, so that it cannot hold unbounded memory.
  static constexpr size_t kDefaultWatchMaxPendingEvents = 10000;

  JobServiceImpl(JobManager* manager, ArtifactStore* artifacts, ThreadPool* pool,
                 const ServiceHooks* hooks, const CredentialStore* credentials,
                 size_t watch_max_pending_events = kDefaultWatchMaxPendingEvents)
      : manager_(manager),
        artifacts_(artifacts),
        pool_(pool),
        hooks_(hooks),
        credentials_(credentials),
        watch_max_pending_events_(watch_max_pending_events) {}

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchJob(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* DownloadArtifact(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* PauseJob(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ResumeJob(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;

 private:
  absl::Status DoCreateJob(const Principal& caller, const lora::v1::CreateJobRequest& request,
                           lora::v1::Job* response);
  absl::Status DoGetJob(const Principal& caller, const lora::v1::GetJobRequest& request,
                        lora::v1::Job* response);
  absl::Status DoListJobs(const Principal& caller, const lora::v1::ListJobsRequest& request,
                          lora::v1::ListJobsResponse* response);
  absl::Status DoCancelJob(const Principal& caller, const lora::v1::CancelJobRequest& request,
                           lora::v1::Job* response);
  absl::Status DoListCheckpoints(const Principal& caller,
                                 const lora::v1::ListCheckpointsRequest& request,
                                 lora::v1::ListCheckpointsResponse* response);
  // RawUnaryCall (unary_call.h) with a member handler.
  template <typename Req, typename Resp>
  grpc::ServerUnaryReactor* RawUnary(grpc::CallbackServerContext* context, const char* method,
                                     const grpc::ByteBuffer* in, grpc::ByteBuffer* out,
                                     absl::Status (JobServiceImpl::*handler)(const Principal&,
                                                                             const Req&, Resp*));
  // OK when `name` exists and the caller may see it; NOT_FOUND otherwise, whichever it is.
  absl::Status Authorize(const Principal& caller, const std::string& name);

  JobManager* manager_;
  ArtifactStore* artifacts_;
  ThreadPool* pool_;
  const ServiceHooks* hooks_;
  const CredentialStore* credentials_;
  const size_t watch_max_pending_events_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_JOB_SERVICE_H_
