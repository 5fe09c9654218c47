#include "worker/agent/artifact_transfer.h"
#include "common/grpc_status.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/file_util.h"
#include "common/sha256.h"

namespace lora {

namespace wv1 = lora::worker::v1;
namespace ev1 = lora::engine::v1;

bool IsSafeRelativePath(const std::string& path) {
  if (path.empty() || path.front() == '/') return false;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return true;
}

ArtifactTransfer::ArtifactTransfer(std::function<wv1::WorkerService::StubInterface*()> stub,
                                   std::function<void(grpc::ClientContext*)> add_metadata,
                                   RetryPolicy upload, RetryPolicy fetch)
    : stub_(std::move(stub)),
      add_metadata_(std::move(add_metadata)),
      upload_policy_(std::move(upload)),
      fetch_policy_(std::move(fetch)) {}

void ArtifactTransfer::AbortFetches() {
  absl::MutexLock lock(&mu_);
  fetches_aborted_ = true;
  for (auto& [ctx, kind] : calls_) {
    if (kind == Kind::kFetch) ctx->TryCancel();
  }
  cv_.SignalAll();
}

void ArtifactTransfer::AbortAll() {
  absl::MutexLock lock(&mu_);
  fetches_aborted_ = all_aborted_ = true;
  for (auto& [ctx, kind] : calls_) ctx->TryCancel();
  cv_.SignalAll();
}

bool ArtifactTransfer::AbortedLocked(Kind kind) const {
  return all_aborted_ || (kind == Kind::kFetch && fetches_aborted_);
}

absl::Status ArtifactTransfer::Call(
    Kind kind, const std::string& what,
    const std::function<grpc::Status(grpc::ClientContext*, absl::Status*)>& try_once) {
  using Clock = Backoff::Clock;
  const RetryPolicy& policy = kind == Kind::kUpload ? upload_policy_ : fetch_policy_;
  const absl::Status aborted = absl::CancelledError(what + ": lora-worker is stopping");
  Backoff backoff(policy, Clock::now());
  while (true) {
    grpc::ClientContext ctx;
    if (add_metadata_) add_metadata_(&ctx);
    {
      absl::MutexLock lock(&mu_);
      if (AbortedLocked(kind)) return aborted;
      calls_[&ctx] = kind;
    }
    absl::Status local;
    const grpc::Status s = try_once(&ctx, &local);
    absl::MutexLock lock(&mu_);
    calls_.erase(&ctx);
    if (!local.ok()) return local;
    if (s.ok()) return absl::OkStatus();
    if (AbortedLocked(kind)) return aborted;
    if (!policy.IsTransient(s.error_code()))
      return FromGrpcStatus(
          grpc::Status(s.error_code(), absl::StrCat(what, ": ", s.error_message())));
    const Clock::time_point now = Clock::now();
    const std::optional<Clock::duration> delay = backoff.NextDelay(now);
    if (!delay) {
      return FromGrpcStatus(
          grpc::Status(s.error_code(), absl::StrCat(what, ": gave up after ", backoff.retries() + 1,
                                                    " tries: ", s.error_message())));
    }
    const Clock::time_point until = now + *delay;
    while (!AbortedLocked(kind) && Clock::now() < until)
      cv_.WaitWithTimeout(&mu_, absl::FromChrono(until - Clock::now()));
  }
}

absl::StatusOr<ev1::FileDigest> ArtifactTransfer::Upload(const wv1::RankRef& ref,
                                                         const std::string& local,
                                                         const std::string& job_path,
                                                         int64_t step) {
  absl::StatusOr<std::string> digest = Sha256File(local);
  if (!digest.ok()) return digest.status();
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(std::filesystem::file_size(local, ec));
  if (ec) return absl::NotFoundError(absl::StrCat(local, ": ", ec.message()));
  absl::Status s = Call(Kind::kUpload, absl::StrCat("upload of ", job_path),
                        [&](grpc::ClientContext* ctx, absl::Status*) {
                          wv1::UploadResult result;
                          std::unique_ptr<grpc::ClientWriterInterface<wv1::UploadChunk>> writer =
                              stub_()->UploadArtifact(ctx, &result);
                          wv1::UploadChunk header;
                          wv1::UploadHeader* h = header.mutable_header();
                          *h->mutable_ref() = ref;
                          h->set_path(job_path);
                          h->set_size(size);
                          h->set_sha256(*digest);
                          h->set_step(step);
                          bool ok = writer->Write(header);
                          std::FILE* f = std::fopen(local.c_str(), "rb");
                          std::string buf(1 << 20, '\0');
                          while (ok && f != nullptr) {
                            const size_t n = std::fread(buf.data(), 1, buf.size(), f);
                            if (n == 0) break;
                            wv1::UploadChunk data;
                            data.set_data(buf.data(), n);
                            ok = writer->Write(data);
                          }
                          if (f != nullptr) std::fclose(f);
                          // A file that shrank reads as fewer bytes than the header says: lorad
                          // answers DATA_LOSS.
                          writer->WritesDone();
                          return writer->Finish();
                        });
  if (!s.ok()) return s;
  ev1::FileDigest uploaded;
  uploaded.set_path(job_path);
  uploaded.set_size(size);
  uploaded.set_sha256(*std::move(digest));
  return uploaded;
}

absl::Status ArtifactTransfer::FetchStream(const std::string& what, const OpenStream& open,
                                           const std::string& local, const std::string& sha256) {
  if (absl::Status s = MakeDirectories(ParentDirectory(local)); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<AtomicFile>> out = AtomicFile::Create(local);
  if (!out.ok()) return out.status();
  Sha256 hash;
  int64_t offset = 0;  // a retry continues where the last try stopped
  absl::Status s = Call(Kind::kFetch, absl::StrCat("fetching ", what),
                        [&](grpc::ClientContext* ctx, absl::Status* local_error) {
                          auto reader = open(ctx, offset);
                          lora::v1::ArtifactChunk chunk;
                          while (reader->Read(&chunk)) {
                            if (chunk.offset() != offset) continue;
                            hash.Update(chunk.data());
                            if (absl::Status w = (*out)->Write(chunk.data()); !w.ok()) {
                              *local_error = w;
                              ctx->TryCancel();
                              break;
                            }
                            offset += static_cast<int64_t>(chunk.data().size());
                          }
                          return reader->Finish();
                        });
  if (!s.ok()) return s;
  if (hash.HexDigest() != sha256)
    return absl::DataLossError(absl::StrCat(what, ": sha256 mismatch after fetch"));
  return (*out)->Commit();
}

absl::Status ArtifactTransfer::Fetch(const std::string& job_id, const std::string& job_path,
                                     const std::string& local, const std::string& sha256) {
  return FetchStream(
      job_path,
      [&](grpc::ClientContext* ctx, int64_t offset) {
        wv1::FetchArtifactRequest request;
        request.set_job_id(job_id);
        request.set_path(job_path);
        request.set_offset(offset);
        return stub_()->FetchArtifact(ctx, request);
      },
      local, sha256);
}

absl::Status ArtifactTransfer::FetchBlob(const wv1::RankRef& ref, const std::string& sha256,
                                         const std::string& local) {
  return FetchStream(
      absl::StrCat("blob ", sha256.substr(0, 12)),
      [&](grpc::ClientContext* ctx, int64_t offset) {
        wv1::FetchBlobRequest request;
        *request.mutable_ref() = ref;
        request.set_sha256(sha256);
        request.set_offset(offset);
        return stub_()->FetchBlob(ctx, request);
      },
      local, sha256);
}

absl::StatusOr<int64_t> ArtifactTransfer::FetchCheckpoint(
    const wv1::Assignment& assignment, const std::string& run_dir,
    const std::function<void(const std::string&)>& warn) {
  std::vector<const lora::v1::Checkpoint*> candidates;
  if (assignment.resume().step() > 0 || assignment.resume().files_size() > 0)
    candidates.push_back(&assignment.resume());
  for (const lora::v1::Checkpoint& c : assignment.fallback_resume()) candidates.push_back(&c);
  for (size_t i = 0; i < candidates.size(); ++i) {
    const lora::v1::Checkpoint& c = *candidates[i];
    absl::Status s;
    for (const lora::v1::ArtifactFile& f : c.files()) {
      if (!IsSafeRelativePath(f.path())) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint file path '", f.path(), "' is not a relative path"));
      }
      s = Fetch(assignment.ref().job_id(), f.path(), JoinPath(run_dir, f.path()), f.sha256());
      if (!s.ok()) break;
    }
    if (s.ok()) return c.step();
    if (s.code() != absl::StatusCode::kDataLoss) {
      return absl::Status(s.code(),
                          absl::StrCat("fetching checkpoint step ", c.step(), ": ", s.message()));
    }
    // Its files that did verify must not make lora-train take it for a whole checkpoint.
    if (IsSafeRelativePath(c.path())) (void)RemoveAll(JoinPath(run_dir, c.path()));
    warn(absl::StrCat(
        "checkpoint step ", c.step(), " failed verification (", s.message(), "); ",
        i + 1 < candidates.size()
            ? absl::StrCat("resuming from step ", candidates[i + 1]->step(), " instead")
            : "no older checkpoint verifies: starting from step 0"));
  }
  return 0;
}

}  // namespace lora
