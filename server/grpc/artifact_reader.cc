#include "server/grpc/artifact_reader.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "server/grpc/raw_message.h"
#include "server/grpc/reactor_lifetime.h"

namespace lora::server {
namespace {

// Msg: lora::v1::ArtifactChunk (typed methods), or grpc::ByteBuffer for methods registered raw
// (so that they can parse their own requests), which then carry the serialized chunk.
template <typename Msg>
class ArtifactStreamReactor : public grpc::ServerWriteReactor<Msg> {
 public:
  ArtifactStreamReactor(ThreadPool* pool, ArtifactResolver resolve, int64_t offset,
                        const ServiceHooks* hooks, std::string method, absl::Status auth)
      : pool_(pool),
        resolve_(std::move(resolve)),
        offset_(offset),
        hooks_(hooks),
        method_(std::move(method)) {
    if (!auth.ok()) {
      FinishOnce(auth);
      return;
    }
    life_.Enter();
    pool_->Schedule([this] {
      Open();
      life_.Leave();
    });
  }
  ~ArtifactStreamReactor() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce(absl::CancelledError("the client went away"));
      return;
    }
    if (hooks_->on_artifact_bytes_sent)
      hooks_->on_artifact_bytes_sent(static_cast<int64_t>(chunk_.data().size()));
    if (!life_.Enter()) return;
    pool_->Schedule([this] {
      ReadNext();
      life_.Leave();
    });
  }
  void OnCancel() override { FinishOnce(absl::CancelledError("cancelled by the client")); }
  void OnDone() override { life_.Done(); }

 private:
  void Open() {
    auto resolved = resolve_();
    if (!resolved.ok()) return FinishOnce(resolved.status());
    file_ = resolved->first;
    if (offset_ < 0 || offset_ > file_.size()) {
      return FinishOnce(absl::OutOfRangeError(
          absl::StrCat("offset: ", offset_, " is outside [0, ", file_.size(), "]")));
    }
    fd_ = ::open(resolved->second.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0)
      return FinishOnce(
          absl::DataLossError(absl::StrCat(file_.path(), ": stored file is missing")));
    ReadNext();
  }

  void ReadNext() {
    if (offset_ >= file_.size() && sent_any_) return FinishOnce(absl::OkStatus());
    const int64_t want = std::min(kArtifactChunkBytes, file_.size() - offset_);
    std::string data(static_cast<size_t>(want), '\0');
    int64_t got = 0;
    while (got < want) {
      ssize_t n = ::pread(fd_, data.data() + got, static_cast<size_t>(want - got), offset_ + got);
      if (n <= 0)
        return FinishOnce(absl::DataLossError(
            absl::StrCat(file_.path(), ": stored file is shorter than recorded")));
      got += n;
    }
    chunk_.set_offset(offset_);
    chunk_.set_data(std::move(data));
    chunk_.set_total_size(file_.size());
    chunk_.set_sha256(file_.sha256());
    offset_ += want;
    sent_any_ = true;
    if constexpr (std::is_same_v<Msg, grpc::ByteBuffer>) {
      wire_ = ToByteBuffer(chunk_);
      this->StartWrite(&wire_);
    } else {
      this->StartWrite(&chunk_);
    }
  }

  void FinishOnce(const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    hooks_->Rpc(method_, ToGrpcStatus(status).error_code(), seconds);
    this->Finish(ToGrpcStatus(status));
  }

  ThreadPool* pool_;
  ArtifactResolver resolve_;
  int64_t offset_;
  const ServiceHooks* hooks_;
  std::string method_;
  lora::v1::ArtifactFile file_;
  lora::v1::ArtifactChunk chunk_;
  grpc::ByteBuffer wire_;
  int fd_ = -1;
  bool sent_any_ = false;
  std::mutex mu_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  ReactorLifetime<ArtifactStreamReactor> life_{this};
};

}  // namespace

grpc::ServerWriteReactor<lora::v1::ArtifactChunk>* StreamArtifact(
    ThreadPool* pool, ArtifactResolver resolve, int64_t offset, const ServiceHooks* hooks,
    std::string method, absl::Status auth) {
  return new ArtifactStreamReactor<lora::v1::ArtifactChunk>(pool, std::move(resolve), offset, hooks,
                                                            std::move(method), std::move(auth));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* StreamArtifactRaw(
    ThreadPool* pool, ArtifactResolver resolve, int64_t offset, const ServiceHooks* hooks,
    std::string method, absl::Status auth) {
  return new ArtifactStreamReactor<grpc::ByteBuffer>(pool, std::move(resolve), offset, hooks,
                                                     std::move(method), std::move(auth));
}

}  // namespace lora::server
