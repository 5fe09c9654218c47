// lora.v1.FileService over the callback API: thin handlers over FileManager (server/files/).
// Every call is authenticated on the user plane and scoped to the caller's tenant (another
// tenant's file answers NOT_FOUND, as a missing one); admins see every tenant's files but
// upload as their own tenant. WriteUpload is a read reactor: one chunk in flight, each written
// on the pool, so a slow disk slows the client rather than filling lorad's memory.
#ifndef LORA_SERVER_GRPC_FILE_SERVICE_H_
#define LORA_SERVER_GRPC_FILE_SERVICE_H_

#include "lora/v1/file_service.grpc.pb.h"
#include "server/core/executor.h"
#include "server/files/file_manager.h"
#include "server/grpc/credentials.h"
#include "server/grpc/service_hooks.h"

namespace lora::server {

using FileServiceBase = lora::v1::FileService::WithRawCallbackMethod_StartUpload<
    lora::v1::FileService::WithRawCallbackMethod_WriteUpload<
        lora::v1::FileService::WithRawCallbackMethod_CreateFile<
            lora::v1::FileService::WithRawCallbackMethod_GetFile<
                lora::v1::FileService::WithRawCallbackMethod_ListFiles<
                    lora::v1::FileService::WithRawCallbackMethod_DeleteFile<
                        lora::v1::FileService::CallbackService>>>>>>;

class FileServiceImpl final : public FileServiceBase {
 public:
  FileServiceImpl(FileManager* files, ThreadPool* pool, const ServiceHooks* hooks,
                  const CredentialStore* credentials)
      : files_(files), pool_(pool), hooks_(hooks), credentials_(credentials) {}

  grpc::ServerUnaryReactor* StartUpload(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* WriteUpload(grpc::CallbackServerContext* context,
                                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CreateFile(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetFile(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListFiles(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeleteFile(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

 private:
  FileManager* files_;
  ThreadPool* pool_;
  const ServiceHooks* hooks_;
  const CredentialStore* credentials_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_FILE_SERVICE_H_
