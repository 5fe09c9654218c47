#include "worker/agent/session_writer.h"

#include <utility>

namespace lora {

namespace wv1 = lora::worker::v1;

SessionWriter::SessionWriter(Stream* stream, std::function<void()> on_progress)
    : stream_(stream), on_progress_(std::move(on_progress)), thread_([this] { Loop(); }) {}

SessionWriter::~SessionWriter() { Close(); }

int64_t SessionWriter::Enqueue(wv1::WorkerMessage message) {
  absl::MutexLock lock(&mu_);
  if (closed_ || finishing_ || broken_) return 0;
  outbox_.push_back(std::move(message));
  cv_.SignalAll();
  return ++enqueued_;
}

int64_t SessionWriter::written() const {
  absl::MutexLock lock(&mu_);
  return written_;
}

bool SessionWriter::broken() const {
  absl::MutexLock lock(&mu_);
  return broken_;
}

void SessionWriter::FinishWrites() {
  absl::MutexLock lock(&mu_);
  finishing_ = true;
  cv_.SignalAll();
}

void SessionWriter::Close() {
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    outbox_.clear();
    cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
}

void SessionWriter::Close(std::chrono::milliseconds grace, const std::function<void()>& cancel) {
  bool stuck;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    outbox_.clear();
    cv_.SignalAll();
    const absl::Time deadline = absl::Now() + absl::FromChrono(grace);
    while (!stopped_) {
      if (cv_.WaitWithDeadline(&mu_, deadline)) break;  // timed out
    }
    stuck = !stopped_;
  }
  if (stuck && cancel) cancel();
  Close();
}

void SessionWriter::Loop() {
  WriteUntilClosed();
  absl::MutexLock lock(&mu_);
  stopped_ = true;
  cv_.SignalAll();
}

void SessionWriter::WriteUntilClosed() {
  while (true) {
    wv1::WorkerMessage message;
    {
      absl::MutexLock lock(&mu_);
      while (outbox_.empty() && !closed_ && !finishing_) cv_.Wait(&mu_);
      if (closed_) return;
      if (outbox_.empty()) break;  // finishing, everything written
      message = std::move(outbox_.front());
      outbox_.pop_front();
    }
    // The one place the stream is written: no lock held, however long the network takes.
    const bool ok = stream_->Write(message);
    {
      absl::MutexLock lock(&mu_);
      if (ok) {
        ++written_;
      } else {
        broken_ = true;
        outbox_.clear();
      }
    }
    if (on_progress_) on_progress_();
    if (!ok) return;
  }
  stream_->WritesDone();
  if (on_progress_) on_progress_();
}

}  // namespace lora
