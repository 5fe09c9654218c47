// lora-worker's session writer against a real in-process gRPC server playing lorad's end of the
// stream: one that reads everything, one that stops reading (a stuck network or controller), one
// that ends the stream early.
#include "worker/agent/session_writer.h"

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "lora/worker/v1/worker_service.grpc.pb.h"

namespace lora {
namespace {

namespace wv1 = lora::worker::v1;
using Clock = std::chrono::steady_clock;

enum class Peer { kReadsAll, kStopsReading, kEndsAfterOne };

// lorad's side of Connect, as far as the writer can tell.
class Controller final : public wv1::WorkerService::Service {
 public:
  explicit Controller(Peer peer) : peer_(peer) {}
  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<wv1::ControllerMessage, wv1::WorkerMessage>* stream) override {
    wv1::WorkerMessage m;
    while (stream->Read(&m)) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        seqs_.push_back(m.event().worker_seq());
      }
      if (peer_ == Peer::kEndsAfterOne) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "bye");
      if (peer_ == Peer::kStopsReading) {
        // Stuck: holds the stream without reading until the client gives up on it.
        while (!context->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return grpc::Status::CANCELLED;
      }
    }
    return grpc::Status::OK;
  }
  std::vector<int64_t> seqs() {
    std::lock_guard<std::mutex> lock(mu_);
    return seqs_;
  }

 private:
  const Peer peer_;
  std::mutex mu_;
  std::vector<int64_t> seqs_;
};

class SessionWriterTest : public ::testing::Test {
 protected:
  void Start(Peer peer) {
    controller_ = std::make_unique<Controller>(peer);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(controller_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = wv1::WorkerService::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                            grpc::InsecureChannelCredentials()));
    stream_ = stub_->Connect(&context_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  static wv1::WorkerMessage Event(int64_t seq, size_t padding = 0) {
    wv1::WorkerMessage m;
    m.mutable_event()->set_worker_seq(seq);
    m.mutable_event()->mutable_event()->mutable_log()->set_message(std::string(padding, 'x'));
    return m;
  }

  std::unique_ptr<Controller> controller_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<wv1::WorkerService::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<wv1::WorkerMessage, wv1::ControllerMessage>> stream_;
};

TEST_F(SessionWriterTest, WritesEverythingInOrderThenHalfClosesAndTheControllerEndsTheStream) {
  Start(Peer::kReadsAll);
  std::atomic<int> progress{0};
  SessionWriter writer(stream_.get(), [&] { ++progress; });
  for (int64_t i = 1; i <= 200; ++i) EXPECT_EQ(writer.Enqueue(Event(i)), i);
  writer.FinishWrites();
  EXPECT_EQ(writer.Enqueue(Event(201)), 0) << "nothing is taken after the half-close";
  wv1::ControllerMessage reply;
  EXPECT_FALSE(stream_->Read(&reply)) << "lorad ends the stream once the worker half-closed";
  EXPECT_TRUE(stream_->Finish().ok());
  writer.Close();
  EXPECT_EQ(writer.written(), 200);
  EXPECT_FALSE(writer.broken());
  EXPECT_GE(progress.load(), 201);  // every write and the half-close
  std::vector<int64_t> expected(200);
  for (int i = 0; i < 200; ++i) expected[static_cast<size_t>(i)] = i + 1;
  EXPECT_EQ(controller_->seqs(), expected);
}

TEST_F(SessionWriterTest, EnqueueNeverWaitsForAStuckController) {
  Start(Peer::kStopsReading);
  SessionWriter writer(stream_.get(), nullptr);
  // 64 MiB: far past gRPC's flow-control windows and the sockets' buffers, so the writer thread
  // blocks in Write while the callers carry on.
  const auto start = Clock::now();
  constexpr int kMessages = 1024;
  for (int64_t i = 1; i <= kMessages; ++i) ASSERT_EQ(writer.Enqueue(Event(i, 64 << 10)), i);
  const auto enqueue_time = Clock::now() - start;
  EXPECT_LT(enqueue_time, std::chrono::seconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int64_t stuck_at = writer.written();
  EXPECT_LT(stuck_at, kMessages) << "the controller read one message and stopped";
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(writer.written(), stuck_at) << "still stuck";
  // Giving up on the session: the Write in flight does not return by itself, so Close cancels
  // the call after its grace, and returns.
  const auto close_start = Clock::now();
  bool cancelled = false;
  writer.Close(std::chrono::milliseconds(300), [&] {
    cancelled = true;
    context_.TryCancel();
  });
  EXPECT_TRUE(cancelled);
  EXPECT_LT(Clock::now() - close_start, std::chrono::seconds(5));
  EXPECT_LT(writer.written(), kMessages);
}

TEST_F(SessionWriterTest, AStreamThatEndsDropsTheRestAndTheWriterReportsBroken) {
  Start(Peer::kEndsAfterOne);
  std::promise<void> broke;
  std::atomic<bool> signalled{false};
  SessionWriter* w = nullptr;
  SessionWriter writer(stream_.get(), [&] {
    if (w != nullptr && w->broken() && !signalled.exchange(true)) broke.set_value();
  });
  w = &writer;
  // Keeps writing until a Write fails: the server has ended the stream after the first.
  std::future<void> done = broke.get_future();
  for (int64_t i = 1; done.wait_for(std::chrono::milliseconds(1)) != std::future_status::ready;
       ++i) {
    if (writer.Enqueue(Event(i, 1024)) == 0) break;
    ASSERT_LT(i, 1000000);
  }
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(writer.broken());
  EXPECT_EQ(writer.Enqueue(Event(0)), 0);
  wv1::ControllerMessage reply;
  EXPECT_FALSE(stream_->Read(&reply));
  bool cancelled = false;
  writer.Close(std::chrono::seconds(5), [&] { cancelled = true; });
  EXPECT_FALSE(cancelled) << "nothing was stuck: the call was over";
  EXPECT_EQ(stream_->Finish().error_code(), grpc::StatusCode::UNAVAILABLE)
      << "lorad's status, not CANCELLED";
}

}  // namespace
}  // namespace lora
