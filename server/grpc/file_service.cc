#include "server/grpc/file_service.h"

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "server/grpc/raw_message.h"
#include "server/grpc/reactor_lifetime.h"
#include "server/grpc/unary_call.h"

namespace lora::server {
namespace {

using lora::v1::WriteUploadRequest;

// A chunk larger than this is refused: clients send at most 1 MiB (the proto's promise), and
// the bound keeps one stream's memory small.
constexpr size_t kMaxChunkBytes = 4 << 20;

std::optional<std::string> Scope(const Principal& caller) {
  return caller.admin() ? std::nullopt : std::optional<std::string>(caller.tenant);
}

class WriteUploadReactor : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  WriteUploadReactor(FileManager* files, ThreadPool* pool, const ServiceHooks* hooks,
                     absl::StatusOr<Principal> caller, grpc::ByteBuffer* response)
      : files_(files), pool_(pool), hooks_(hooks), response_(response) {
    if (!caller.ok()) {
      FinishOnce(caller.status());
      return;
    }
    tenant_ = caller->tenant;
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    WriteUploadRequest message;
    if (ok) {
      if (in_.Length() > kMaxChunkBytes + 1024) {
        FinishOnce(absl::InvalidArgumentError(
            absl::StrCat("data: chunks must be at most ", kMaxChunkBytes, " bytes")));
        return;
      }
      if (absl::Status parsed = ParseMessage(in_, &message); !parsed.ok()) {
        FinishOnce(parsed);
        return;
      }
    }
    if (!life_.Enter()) return;
    pool_->Schedule([this, ok, message = std::move(message)] {
      absl::Status s = ok ? Consume(message) : Complete();
      if (!s.ok())
        FinishOnce(s);
      else if (!ok)
        FinishOnce(absl::OkStatus());
      else
        StartRead(&in_);
      life_.Leave();
    });
  }
  void OnCancel() override { FinishOnce(absl::CancelledError("upload cancelled")); }
  // A stream that broke keeps what was written (the upload closes with the reactor, once no
  // pool task holds it): StartUpload reports it for the next stream.
  void OnDone() override { life_.Done(); }

 private:
  absl::Status Consume(const WriteUploadRequest& message) {
    if (message.has_header()) {
      if (upload_) return absl::InvalidArgumentError("header: sent twice");
      auto upload = files_->OpenUpload(tenant_, message.header());
      if (!upload.ok()) return upload.status();
      upload_ = *std::move(upload);
      return absl::OkStatus();
    }
    if (!upload_) return absl::InvalidArgumentError("the first message must be the header");
    if (hooks_->on_artifact_bytes_received)
      hooks_->on_artifact_bytes_received(static_cast<int64_t>(message.data().size()));
    return upload_->Write(message.data());
  }

  absl::Status Complete() {
    if (!upload_) return absl::InvalidArgumentError("no header was sent");
    std::unique_ptr<FileUpload> upload = std::move(upload_);
    auto status = upload->Close();
    if (!status.ok()) return status.status();
    *response_ = ToByteBuffer(*status);
    return absl::OkStatus();
  }

  void FinishOnce(const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    hooks_->Rpc("WriteUpload", ToGrpcStatus(status).error_code(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    Finish(ToGrpcStatus(status));
  }

  FileManager* files_;
  ThreadPool* pool_;
  const ServiceHooks* hooks_;
  grpc::ByteBuffer* response_;
  std::string tenant_;
  grpc::ByteBuffer in_;
  std::unique_ptr<FileUpload> upload_;  // touched by one pool task at a time, then OnDone
  std::mutex mu_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  ReactorLifetime<WriteUploadReactor> life_{this};
};

}  // namespace

grpc::ServerUnaryReactor* FileServiceImpl::StartUpload(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  return RawUnaryCall<lora::v1::StartUploadRequest, lora::v1::UploadStatus>(
      {context, credentials_, pool_, hooks_, "StartUpload"}, request, response,
      [this](const Principal& caller, const auto& req, auto* resp) -> absl::Status {
        auto status = files_->StartUpload(caller.tenant, req);
        if (!status.ok()) return status.status();
        *resp = *std::move(status);
        return absl::OkStatus();
      });
}

grpc::ServerReadReactor<grpc::ByteBuffer>* FileServiceImpl::WriteUpload(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new WriteUploadReactor(files_, pool_, hooks_,
                                credentials_->Authenticate(*context, Plane::kUser), response);
}

grpc::ServerUnaryReactor* FileServiceImpl::CreateFile(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  return RawUnaryCall<lora::v1::CreateFileRequest, lora::v1::File>(
      {context, credentials_, pool_, hooks_, "CreateFile"}, request, response,
      [this](const Principal& caller, const auto& req, auto* resp) -> absl::Status {
        auto file = files_->CreateFile(caller.tenant, req);
        if (!file.ok()) return file.status();
        *resp = *std::move(file);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* FileServiceImpl::GetFile(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  return RawUnaryCall<lora::v1::GetFileRequest, lora::v1::File>(
      {context, credentials_, pool_, hooks_, "GetFile"}, request, response,
      [this](const Principal& caller, const auto& req, auto* resp) -> absl::Status {
        auto file = files_->GetFile(Scope(caller), req.name());
        if (!file.ok()) return file.status();
        *resp = *std::move(file);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* FileServiceImpl::ListFiles(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  return RawUnaryCall<lora::v1::ListFilesRequest, lora::v1::ListFilesResponse>(
      {context, credentials_, pool_, hooks_, "ListFiles"}, request, response,
      [this](const Principal& caller, const auto& req, auto* resp) -> absl::Status {
        auto list = files_->ListFiles(Scope(caller), req);
        if (!list.ok()) return list.status();
        *resp = *std::move(list);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* FileServiceImpl::DeleteFile(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  return RawUnaryCall<lora::v1::DeleteFileRequest, lora::v1::DeleteFileResponse>(
      {context, credentials_, pool_, hooks_, "DeleteFile"}, request, response,
      [this](const Principal& caller, const auto& req, auto*) -> absl::Status {
        return files_->DeleteFile(Scope(caller), req.name());
      });
}

}  // namespace lora::server
