// Streams one stored artifact as ArtifactChunks (≤ 1 MiB each, from an offset), for
// JobService.DownloadArtifact and WorkerService.FetchArtifact alike.
#ifndef LORA_SERVER_GRPC_ARTIFACT_READER_H_
#define LORA_SERVER_GRPC_ARTIFACT_READER_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "lora/v1/job.pb.h"
#include "lora/v1/job_service.pb.h"
#include "server/core/executor.h"
#include "server/grpc/service_hooks.h"

namespace lora::server {

// `resolve` runs on the pool and returns the artifact's metadata and its file path.
using ArtifactResolver =
    std::function<absl::StatusOr<std::pair<lora::v1::ArtifactFile, std::string>>()>;

grpc::ServerWriteReactor<lora::v1::ArtifactChunk>* StreamArtifact(
    ThreadPool* pool, ArtifactResolver resolve, int64_t offset, const ServiceHooks* hooks,
    std::string method, absl::Status auth);

// The same stream for a method registered raw: each message is a serialized ArtifactChunk.
grpc::ServerWriteReactor<grpc::ByteBuffer>* StreamArtifactRaw(
    ThreadPool* pool, ArtifactResolver resolve, int64_t offset, const ServiceHooks* hooks,
    std::string method, absl::Status auth);

inline constexpr int64_t kArtifactChunkBytes = 1 << 20;

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_ARTIFACT_READER_H_
