// lora.worker.v1.WorkerService over the callback API: the long-lived worker stream (a
// WorkerChannel for the JobManager), artifact uploads and resume-file fetches. Workers send
// their id in the "lora-worker-id" metadata on uploads and fetches.
#ifndef LORA_SERVER_GRPC_WORKER_SERVICE_H_
#define LORA_SERVER_GRPC_WORKER_SERVICE_H_

#include <map>
#include <mutex>
#include <string>

#include "lora/worker/v1/worker_service.grpc.pb.h"
#include "server/core/artifact_store.h"
#include "server/core/executor.h"
#include "server/core/job_manager.h"
#include "server/files/file_manager.h"
#include "server/grpc/credentials.h"
#include "server/grpc/service_hooks.h"

namespace lora::server {

// Every method is registered raw and parses its own messages (raw_message.h): a malformed
// message is INVALID_ARGUMENT, not gRPC's bare UNIMPLEMENTED.
using WorkerServiceBase = lora::worker::v1::WorkerService::WithRawCallbackMethod_Connect<
    lora::worker::v1::WorkerService::WithRawCallbackMethod_UploadArtifact<
        lora::worker::v1::WorkerService::WithRawCallbackMethod_FetchArtifact<
            lora::worker::v1::WorkerService::WithRawCallbackMethod_FetchBlob<
                lora::worker::v1::WorkerService::Service>>>>;

class WorkerServiceImpl final : public WorkerServiceBase {
 public:
  // `files` may be null (no FetchBlob: NOT_FOUND).
  WorkerServiceImpl(JobManager* manager, ArtifactStore* artifacts, ThreadPool* pool,
                    const ServiceHooks* hooks, const CredentialStore* credentials,
                    FileManager* files = nullptr)
      : manager_(manager),
        artifacts_(artifacts),
        files_(files),
        pool_(pool),
        hooks_(hooks),
        credentials_(credentials) {}

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Connect(
      grpc::CallbackServerContext* context) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* UploadArtifact(grpc::CallbackServerContext* context,
                                                            grpc::ByteBuffer* result) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* FetchBlob(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* FetchArtifact(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;

 private:
  JobManager* manager_;
  ArtifactStore* artifacts_;
  FileManager* files_;
  ThreadPool* pool_;
  const ServiceHooks* hooks_;
  const CredentialStore* credentials_;

 public:
  // Worker identity is bound to the credential that first registered it: a worker id belongs
  // to one credential name for the life of this process, and every later call acting as that
  // worker (stream, upload, fetch) must present a credential of that name.
  absl::Status Claim(const std::string& worker_id, const Principal& caller);
  absl::Status CheckClaim(const std::string& worker_id, const Principal& caller);

 private:
  std::mutex owners_mu_;
  std::map<std::string, std::string> owners_;  // worker id -> credential name
};

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_WORKER_SERVICE_H_
