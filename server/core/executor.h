// A fixed pool of threads for work that may block (SQLite fsyncs, file reads), so gRPC
// callback reactions never do.
//
//   ThreadPool pool(4);
//   pool.Schedule([] { ... });
#ifndef LORA_SERVER_CORE_EXECUTOR_H_
#define LORA_SERVER_CORE_EXECUTOR_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lora::server {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();  // runs what is queued, then joins
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Schedule(std::function<void()> task);

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_CORE_EXECUTOR_H_
