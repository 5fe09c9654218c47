#include "server/grpc/job_service.h"

#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "server/grpc/artifact_reader.h"
#include "server/grpc/auth.h"
#include "server/grpc/raw_message.h"
#include "server/grpc/reactor_lifetime.h"
#include "server/grpc/unary_call.h"

namespace lora::server {
namespace {

using lora::v1::JobEvent;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Replays a job's stored events after `after_sequence`, then follows live ones until the job
// ends. One write in flight. History is read a page at a time, the next page only once the
// last one was written, and live events arrive serialized once for every watcher
// (PublishedEvent), so a watcher holds at most max_pending events: one that falls further
// behind is ended UNAVAILABLE, to resume after the last event it received.
// Registered raw (it parses its own request): writes serialized JobEvents.
class WatchReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer>, public EventSubscriber {
 public:
  static constexpr int kHistoryPage = 1000;

  WatchReactor(JobManager* manager, ThreadPool* pool, const ServiceHooks* hooks, std::string name,
               int64_t after, size_t max_pending, absl::Status auth,
               std::function<absl::Status()> authorize)
      : max_pending_(max_pending),
        manager_(manager),
        pool_(pool),
        hooks_(hooks),
        name_(std::move(name)),
        after_(after),
        cursor_(after),
        delivered_(after),
        authorize_(std::move(authorize)) {
    if (hooks_->on_watch_streams) hooks_->on_watch_streams(+1);
    if (!auth.ok()) {
      FinishOnce(auth);
      return;
    }
    if (after_ < 0) {
      FinishOnce(absl::InvalidArgumentError("after_sequence: must be >= 0"));
      return;
    }
    life_.Enter();
    pool_->Schedule([this] {
      Start();
      life_.Leave();
    });
  }

  void OnEvent(const std::shared_ptr<const PublishedEvent>& event) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (finished_) return;
    (loading_ ? live_during_load_ : queue_).push_back(event);
    if (queue_.size() + live_during_load_.size() > max_pending_) {
      const int64_t resume = delivered_;
      lock.unlock();
      FinishOnce(absl::UnavailableError(absl::StrCat("this watcher fell ", max_pending_,
                                                     " events behind the job; resume with "
                                                     "after_sequence = ",
                                                     resume)));
      return;
    }
    MaybeWriteLocked(lock);
  }

  void OnClose(bool shutdown) override {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    shutdown_ = shutdown;
    MaybeWriteLocked(lock);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      lock.unlock();
      FinishOnce(absl::CancelledError("the watcher went away"));
      return;
    }
    if (current_published_at_ && hooks_->on_watch_delivery) {
      hooks_->on_watch_delivery(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - *current_published_at_)
              .count());
    }
    MaybeWriteLocked(lock);
  }

  void OnCancel() override { FinishOnce(absl::CancelledError("cancelled by the client")); }

  void OnDone() override {
    if (subscribed_) manager_->Unsubscribe(job_id_, this);
    if (hooks_->on_watch_streams) hooks_->on_watch_streams(-1);
    life_.Done();
  }

 private:
  void Start() {
    if (absl::Status allowed = authorize_(); !allowed.ok()) return FinishOnce(allowed);
    int64_t last = 0;
    bool terminal = false;
    absl::Status s = manager_->Subscribe(name_, this, &last, &terminal);
    if (!s.ok()) return FinishOnce(s);
    std::unique_lock<std::mutex> lock(mu_);
    job_id_ = name_.substr(5);
    subscribed_ = !terminal;
    history_end_ = last;
    if (terminal) closed_ = true;
    lock.unlock();
    LoadPage();
  }

  // On the pool: the next page of history after cursor_ (up to history_end_); the last page
  // hands over to the live events that came meanwhile.
  void LoadPage() {
    int64_t cursor, end;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cursor = cursor_;
      end = history_end_;
    }
    std::vector<JobEvent> page;
    if (cursor < end) {
      auto read = manager_->ReadEvents(job_id_, cursor, kHistoryPage);
      if (!read.ok()) return FinishOnce(read.status());
      page = *std::move(read);
    }
    std::unique_lock<std::mutex> lock(mu_);
    page_pending_ = false;
    for (JobEvent& e : page) {
      if (e.sequence() > end) break;
      cursor_ = e.sequence();
      auto published = std::make_shared<PublishedEvent>();
      published->wire = e.SerializeAsString();
      published->event = std::move(e);
      queue_.push_back(std::move(published));
    }
    if (page.empty() || cursor_ >= end) {
      loading_ = false;
      for (auto& e : live_during_load_) {
        if (e->event.sequence() > std::max(cursor_, after_)) queue_.push_back(std::move(e));
      }
      live_during_load_.clear();
    }
    MaybeWriteLocked(lock);
  }

  // Starts the next write, asks for the next page of history, or finishes when the job is over
  // and everything was sent.
  void MaybeWriteLocked(std::unique_lock<std::mutex>& lock) {
    if (writing_ || finished_) return;
    if (!queue_.empty()) {
      std::shared_ptr<const PublishedEvent> next = std::move(queue_.front());
      queue_.pop_front();
      delivered_ = next->event.sequence();
      current_published_at_ = next->published_at;
      grpc::Slice slice(next->wire);
      current_ = grpc::ByteBuffer(&slice, 1);
      writing_ = true;
      lock.unlock();
      StartWrite(&current_);
      return;
    }
    if (loading_) {
      if (page_pending_ || job_id_.empty()) return;  // a page is on its way (or Start is)
      if (!life_.Enter()) return;
      page_pending_ = true;
      lock.unlock();
      pool_->Schedule([this] {
        LoadPage();
        life_.Leave();
      });
      return;
    }
    if (closed_) {
      const bool shutdown = shutdown_;
      lock.unlock();
      FinishOnce(shutdown
                     ? absl::UnavailableError("lorad is shutting down; resume with after_sequence")
                     : absl::OkStatus());
    }
  }

  void FinishOnce(const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    hooks_->Rpc("WatchJob", ToGrpcStatus(status).error_code(), SecondsSince(start_));
    Finish(ToGrpcStatus(status));
  }

  const size_t max_pending_;
  JobManager* manager_;
  ThreadPool* pool_;
  const ServiceHooks* hooks_;
  std::string name_, job_id_;
  int64_t after_;
  int64_t cursor_;  // the last history event queued
  int64_t history_end_ = 0;
  int64_t delivered_;  // the last event handed to gRPC
  std::function<absl::Status()> authorize_;
  bool subscribed_ = false;
  std::mutex mu_;
  std::deque<std::shared_ptr<const PublishedEvent>> queue_, live_during_load_;
  grpc::ByteBuffer current_;
  std::optional<std::chrono::steady_clock::time_point> current_published_at_;  // of current_
  bool loading_ = true, page_pending_ = true, writing_ = false, closed_ = false, shutdown_ = false,
       finished_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  ReactorLifetime<WatchReactor> life_{this};
};

}  // namespace

absl::Status JobServiceImpl::Authorize(const Principal& caller, const std::string& name) {
  absl::StatusOr<lora::v1::Job> job = manager_->GetJob(name);
  if (!job.ok()) return job.status();
  if (!caller.SeesTenant(job->tenant())) {
    return absl::NotFoundError(absl::StrCat(name, " not found"));  // as for a missing job
  }
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoCreateJob(const Principal& caller,
                                         const lora::v1::CreateJobRequest& request,
                                         lora::v1::Job* response) {
  bool created = false;
  auto job = manager_->CreateJob(request.spec(), request.request_id(), &created, caller.tenant);
  if (!job.ok()) return job.status();
  *response = std::move(*job);
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoGetJob(const Principal& caller,
                                      const lora::v1::GetJobRequest& request,
                                      lora::v1::Job* response) {
  auto job = manager_->GetJob(request.name());
  if (!job.ok()) return job.status();
  if (!caller.SeesTenant(job->tenant())) {
    return absl::NotFoundError(absl::StrCat(request.name(), " not found"));
  }
  *response = std::move(*job);
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoListJobs(const Principal& caller,
                                        const lora::v1::ListJobsRequest& request,
                                        lora::v1::ListJobsResponse* response) {
  auto list =
      manager_->ListJobs(request, caller.admin() ? std::nullopt : std::optional(caller.tenant));
  if (!list.ok()) return list.status();
  *response = std::move(*list);
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoCancelJob(const Principal& caller,
                                         const lora::v1::CancelJobRequest& request,
                                         lora::v1::Job* response) {
  LORA_RETURN_IF_ERROR(Authorize(caller, request.name()));
  auto job = manager_->CancelJob(request.name());
  if (!job.ok()) return job.status();
  *response = std::move(*job);
  return absl::OkStatus();
}

absl::Status JobServiceImpl::DoListCheckpoints(const Principal& caller,
                                               const lora::v1::ListCheckpointsRequest& request,
                                               lora::v1::ListCheckpointsResponse* response) {
  LORA_RETURN_IF_ERROR(Authorize(caller, request.name()));
  auto list = manager_->ListCheckpoints(request.name());
  if (!list.ok()) return list.status();
  for (auto& c : *list) *response->add_checkpoints() = std::move(c);
  return absl::OkStatus();
}

template <typename Req, typename Resp>
grpc::ServerUnaryReactor* JobServiceImpl::RawUnary(
    grpc::CallbackServerContext* context, const char* method, const grpc::ByteBuffer* in,
    grpc::ByteBuffer* out,
    absl::Status (JobServiceImpl::*handler)(const Principal&, const Req&, Resp*)) {
  return RawUnaryCall<Req, Resp>(
      {context, credentials_, pool_, hooks_, method}, in, out,
      [this, handler](const Principal& caller, const Req& request, Resp* response) {
        return (this->*handler)(caller, request, response);
      });
}

grpc::ServerUnaryReactor* JobServiceImpl::CreateJob(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return RawUnary(context, "CreateJob", request, response, &JobServiceImpl::DoCreateJob);
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* request,
                                                 grpc::ByteBuffer* response) {
  return RawUnary(context, "GetJob", request, response, &JobServiceImpl::DoGetJob);
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  return RawUnary(context, "ListJobs", request, response, &JobServiceImpl::DoListJobs);
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return RawUnary(context, "CancelJob", request, response, &JobServiceImpl::DoCancelJob);
}

grpc::ServerUnaryReactor* JobServiceImpl::ListCheckpoints(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return RawUnary(context, "ListCheckpoints", request, response,
                  &JobServiceImpl::DoListCheckpoints);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* JobServiceImpl::WatchJob(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  lora::v1::WatchJobRequest request;
  absl::StatusOr<Principal> caller = credentials_->Authenticate(*context, Plane::kUser);
  absl::Status ready = caller.status();
  if (ready.ok()) ready = ParseMessage(*raw, &request);
  Principal p = caller.ok() ? *caller : Principal{};
  return new WatchReactor(manager_, pool_, hooks_, request.name(), request.after_sequence(),
                          watch_max_pending_events_, ready,
                          [this, p, name = request.name()] { return Authorize(p, name); });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* JobServiceImpl::DownloadArtifact(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  lora::v1::DownloadArtifactRequest request;
  absl::StatusOr<Principal> caller = credentials_->Authenticate(*context, Plane::kUser);
  absl::Status ready = caller.status();
  if (ready.ok()) ready = ParseMessage(*raw, &request);
  std::string name = request.name(), path = request.path();
  ArtifactResolver resolve = [this, name, path, p = caller.ok() ? *caller : Principal{}]()
      -> absl::StatusOr<std::pair<lora::v1::ArtifactFile, std::string>> {
    if (absl::Status allowed = Authorize(p, name); !allowed.ok()) return allowed;
    auto file = manager_->GetArtifact(name, path);
    if (!file.ok()) return file.status();
    auto where = artifacts_->PathOf(name.substr(5), path);
    if (!where.ok()) return where.status();
    return std::make_pair(*file, *where);
  };
  return StreamArtifactRaw(pool_, std::move(resolve), request.offset(), hooks_, "DownloadArtifact",
                           ready);
}

grpc::ServerUnaryReactor* JobServiceImpl::DeleteJob(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return RawUnaryCall<lora::v1::DeleteJobRequest, lora::v1::DeleteJobResponse>(
      {context, credentials_, pool_, hooks_, "DeleteJob"}, request, response,
      [this](const Principal& caller, const auto& req, auto*) -> absl::Status {
        LORA_RETURN_IF_ERROR(Authorize(caller, req.name()));
        return manager_->DeleteJob(req.name());
      });
}

grpc::ServerUnaryReactor* JobServiceImpl::PauseJob(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  return RawUnaryCall<lora::v1::PauseJobRequest, lora::v1::Job>(
      {context, credentials_, pool_, hooks_, "PauseJob"}, request, response,
      [this](const Principal& caller, const auto& req, auto* resp) -> absl::Status {
        LORA_RETURN_IF_ERROR(Authorize(caller, req.name()));
        LORA_ASSIGN_OR_RETURN(*resp, manager_->PauseJob(req.name()));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* JobServiceImpl::ResumeJob(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return RawUnaryCall<lora::v1::ResumeJobRequest, lora::v1::Job>(
      {context, credentials_, pool_, hooks_, "ResumeJob"}, request, response,
      [this](const Principal& caller, const auto& req, auto* resp) -> absl::Status {
        LORA_RETURN_IF_ERROR(Authorize(caller, req.name()));
        LORA_ASSIGN_OR_RETURN(*resp, manager_->ResumeJob(req.name()));
        return absl::OkStatus();
      });
}

}  // namespace lora::server
