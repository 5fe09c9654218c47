// Deletes a callback reactor only when gRPC is done with it *and* no pool task still uses it.
//
//   class R : public grpc::ServerWriteReactor<T> {
//     ReactorLifetime<R> life_{this};
//     void OnDone() override { life_.Done(); }
//     // in a pool task: if (!life_.Enter()) return; ...; life_.Leave();
//   };
#ifndef LORA_SERVER_GRPC_REACTOR_LIFETIME_H_
#define LORA_SERVER_GRPC_REACTOR_LIFETIME_H_

#include <mutex>

namespace lora::server {

template <typename Owner>
class ReactorLifetime {
 public:
  explicit ReactorLifetime(Owner* owner) : owner_(owner) {}
  // False once gRPC is done: the task must not touch the reactor.
  bool Enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    ++busy_;
    return true;
  }
  void Leave() {
    bool destroy;
    {
      std::lock_guard<std::mutex> lock(mu_);
      destroy = --busy_ == 0 && done_;
    }
    if (destroy) delete owner_;
  }
  void Done() {
    bool destroy;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      destroy = busy_ == 0;
    }
    if (destroy) delete owner_;
  }

 private:
  Owner* owner_;
  std::mutex mu_;
  int busy_ = 0;
  bool done_ = false;
};

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_REACTOR_LIFETIME_H_
