// The sending half of one lora-worker session with lorad: callers put messages in an outbox,
// which never waits on the network, and one thread per session takes them off in order and
// writes them with no lock held. A slow or stuck connection then delays only the messages, not
// the ranks whose event pumps produce them, nor cancels, nor a SIGTERM.
//
//   SessionWriter writer(stream.get(), [&] { WakeWhoeverWaits(); });
//   const int64_t ticket = writer.Enqueue(exited);   // returns at once
//   ... later, with the caller's own lock held if it likes:
//   bool delivered = writer.written() >= ticket;
//   writer.FinishWrites();                // planned end: half-close once the outbox is empty
//   writer.Close(grace, [&] { context->TryCancel(); });  // or: the session ended
//
// Invariants:
// - Messages are written in Enqueue order, each at most once, by the writer thread only (gRPC
//   allows one writer and one reader on a stream at a time: the session's reader is another
//   thread). Tickets count from 1; every ticket <= written() has been written.
// - After a failed Write nothing more is written: the rest of the outbox is dropped, broken()
//   is true, and Enqueue returns 0. The next session re-sends what the controller lacks (its
//   RegisterAck says from where), so dropping is safe.
// - `on_progress` runs on the writer thread, with no lock of the writer held, after every
//   write (successful or not) and after the half-close. It may take the caller's lock, so the
//   caller must not hold that lock while it calls Close() (which joins the thread). Lock order:
//   caller's lock, then the writer's, never the reverse.
#ifndef LORA_WORKER_AGENT_SESSION_WRITER_H_
#define LORA_WORKER_AGENT_SESSION_WRITER_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <thread>

#include <grpcpp/support/sync_stream.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "lora/worker/v1/worker_service.pb.h"

namespace lora {

class SessionWriter {
 public:
  using Stream = grpc::ClientReaderWriterInterface<lora::worker::v1::WorkerMessage,
                                                   lora::worker::v1::ControllerMessage>;

  SessionWriter(Stream* stream, std::function<void()> on_progress);
  ~SessionWriter();  // Close()
  SessionWriter(const SessionWriter&) = delete;
  SessionWriter& operator=(const SessionWriter&) = delete;

  // The message's ticket, or 0 when it is dropped (the writer is closed, finishing or broken).
  int64_t Enqueue(lora::worker::v1::WorkerMessage message);
  int64_t written() const;
  bool broken() const;
  // Half-closes the stream (WritesDone) once everything enqueued so far is written; lorad then
  // handles what it read and ends the stream, which the session's reader sees.
  void FinishWrites();
  // Drops what is not written yet and joins the thread once the Write in progress returns.
  // Idempotent.
  void Close();
  // The same, for a session that has ended: a Write still in progress after `grace` (a stuck
  // connection) is cut short with `cancel` (the call's TryCancel). Cancelling only then keeps
  // the status lorad ended the call with (UNAUTHENTICATED, say) for the caller's Finish().
  void Close(std::chrono::milliseconds grace, const std::function<void()>& cancel);

 private:
  void Loop();
  void WriteUntilClosed();

  Stream* const stream_;
  const std::function<void()> on_progress_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // outbox, finishing, closed, stopped
  std::deque<lora::worker::v1::WorkerMessage> outbox_ ABSL_GUARDED_BY(mu_);
  int64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;  // the thread has left Loop()
  std::thread thread_;                         // last: starts once everything above is initialized
};

}  // namespace lora

#endif  // LORA_WORKER_AGENT_SESSION_WRITER_H_
