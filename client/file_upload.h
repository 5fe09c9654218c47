// Uploading local files and directories to lorad (lora.v1.FileService), and the spec rewrite
// `loractl submit` does with it: every local path a spec names becomes "files/{id}", so the job
// runs on workers that do not share the client's disk.
//
//   LORA_ASSIGN_OR_RETURN(auto client, LoraClient::Create(options));
//   FileUploader uploader(client.get());
//   LORA_ASSIGN_OR_RETURN(lora::v1::File f, uploader.Upload("data/train.jsonl", on_progress));
//   LORA_RETURN_IF_ERROR(UploadSpecFiles(&spec, spec_dir, &uploader, on_progress, &rewrites));
//
// Uploads are content-addressed: bytes lorad already holds for this tenant are not sent again,
// and a transfer cut short continues where lorad says it stopped (each blob is verified by
// sha256 on arrival). Once Upload returns, the local file may be deleted: lorad has a durable,
// verified copy.
#ifndef LORA_CLIENT_FILE_UPLOAD_H_
#define LORA_CLIENT_FILE_UPLOAD_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/lora_client.h"
#include "lora/v1/file_service.grpc.pb.h"
#include "lora/v1/job_spec.pb.h"

namespace lora {

struct UploadProgress {
  std::string file;  // the local path being uploaded
  int64_t sent = 0;  // bytes of this upload on the server (sent or already there)
  int64_t total = 0;
};
using UploadProgressFn = std::function<void(const UploadProgress&)>;

class FileUploader {
 public:
  explicit FileUploader(LoraClient* client, int64_t chunk_bytes = 1 << 20);
  // Uploads a regular file or a directory (its regular files, recursively; symbolic links are
  // refused, as are special files) and creates the File. Retries a stream that breaks from the
  // offset lorad reports, a few times.
  absl::StatusOr<lora::v1::File> Upload(const std::string& local, const UploadProgressFn& progress);

  absl::StatusOr<lora::v1::File> GetFile(const std::string& name);
  absl::StatusOr<lora::v1::ListFilesResponse> ListFiles(const lora::v1::ListFilesRequest& request);
  absl::Status DeleteFile(const std::string& name);

 private:
  absl::Status UploadBlob(const std::string& local, const std::string& sha256, int64_t size,
                          const UploadProgressFn& progress);
  // A stub on the client's address in use now (it moves on between replicas).
  std::unique_ptr<lora::v1::FileService::Stub> Stub() const {
    return lora::v1::FileService::NewStub(client_->channel());
  }
  LoraClient* client_;
  int64_t chunk_bytes_;
};

// "worker:" + path: a path on the workers' own disks (a model on a shared volume), sent as the
// path alone and never uploaded.
inline constexpr char kWorkerPathPrefix[] = "worker:";

struct SpecRewrite {
  std::string field;  // "dataset.path"
  std::string local;  // as the spec wrote it
  std::string now;    // "files/f-..." or the worker path
};

// For each path field of `spec`: "files/..." stays; "worker:PATH" becomes PATH; anything else is
// a local path (relative to `base_dir`) that is uploaded and replaced by its "files/{id}".
// NOT_FOUND naming the field for a local path that does not exist (with a hint about
// "worker:"). Each distinct local path is uploaded once.
absl::Status UploadSpecFiles(lora::v1::JobSpec* spec, const std::string& base_dir,
                             FileUploader* uploader, const UploadProgressFn& progress,
                             std::vector<SpecRewrite>* rewrites);

}  // namespace lora

#endif  // LORA_CLIENT_FILE_UPLOAD_H_
