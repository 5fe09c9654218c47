// Process groups over c10d, built from torchrun-style environment variables: RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT (and LOCAL_RANK for the GPU). Rank 0 hosts the TCPStore every group
// rendezvouses through. The backend follows the training device: NCCL when it is a CUDA
// device (tensors stay on the GPU), Gloo on the CPU. All-gathers fill one tensor; reductions
// run in fp32 whatever the dtype.
//
//   LORA_ASSIGN_OR_RETURN(auto ctx, DistContext::Init(shape, {.timeout =
//   std::chrono::seconds(60)})); ctx->group(Dim::kShard).AllReduceSum(t);
#ifndef LORA_WORKER_ENGINE_DIST_COMM_H_
#define LORA_WORKER_ENGINE_DIST_COMM_H_

#include <torch/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/dist/mesh.h"

namespace c10d {
class Backend;
class Store;
class Work;
}  // namespace c10d

namespace lora::dist {

// A collective, send or receive that failed: a peer died, hung or became unreachable. The job
// can be retried from its latest checkpoint (unlike an error in the rank's own work).
inline constexpr char kCommErrorMarker[] = "a peer died or hung";
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A set of ranks that communicate. Size 1 groups make every collective a no-op.
class Group {
 public:
  // `device`: where the backend's buffers live (a GPU for NCCL, the CPU for Gloo). Tensors on
  // another device are staged through it, and results come back on the caller's device.
  Group(c10::intrusive_ptr<c10d::Backend> pg, int rank, int size, std::chrono::milliseconds timeout,
        std::vector<int> world_ranks, torch::Device device = torch::kCPU);
  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::vector<int>& world_ranks() const { return world_ranks_; }

  // In place; float tensors of any dtype (bf16 / fp16 are reduced in fp32).
  void AllReduceSum(torch::Tensor& t);
  // Concatenation of every rank's `t` along `dim`, in group rank order.
  torch::Tensor AllGather(const torch::Tensor& t, int64_t dim);
  // Sum over ranks, then this rank's 1/size slice along `dim`. Reduced in fp32. On a GPU group
  // (NCCL) the native reduce-scatter; on the CPU (Gloo) the ring below, which
  // bench/collectives_bench measures 1.1-1.9x faster than LibTorch 2.11 Gloo's native one.
  torch::Tensor ReduceScatterSum(const torch::Tensor& t, int64_t dim);
  // The two ways, for the tests and the bench: the backend's reduce-scatter, and a ring of
  // sends and receives.
  torch::Tensor NativeReduceScatterSum(const torch::Tensor& t, int64_t dim);
  torch::Tensor RingReduceScatterSum(const torch::Tensor& t, int64_t dim);
  void Broadcast(torch::Tensor& t, int root);
  // Send and PostRecv return at once; Flush() waits for every pending send and posted receive
  // (call it before reusing a sent buffer or reading a received one). Recv blocks.
  void Send(const torch::Tensor& t, int dst, int tag);
  void PostRecv(torch::Tensor& t, int src, int tag);
  void Recv(torch::Tensor& t, int src, int tag);
  void Flush();
  void Barrier();

  // Bytes this rank put on the wire (ring cost model for collectives), for the benchmarks.
  int64_t bytes_sent() const { return bytes_sent_; }

 private:
  static constexpr int kReduceScatterTag = 7001;
  void Wait(c10::intrusive_ptr<c10d::Work> work, const char* what);
  c10::intrusive_ptr<c10d::Backend> pg_;
  int rank_, size_;
  std::chrono::milliseconds timeout_;
  std::vector<int> world_ranks_;
  std::vector<std::pair<c10::intrusive_ptr<c10d::Work>, torch::Tensor>> pending_sends_;
  struct PendingRecv {
    c10::intrusive_ptr<c10d::Work> work;
    torch::Tensor staged, target;
  };
  std::vector<PendingRecv> pending_recvs_;
  bool OnGroupDevice(const torch::Tensor& t) const;
  torch::Device device_;
  int64_t bytes_sent_ = 0;
};

struct DistOptions {
  // How long any collective, send or receive may wait for a peer before the job fails.
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
  // Where this rank's tensors live: CUDA selects NCCL groups on that GPU, the CPU Gloo.
  torch::Device device = torch::kCPU;
  // Called (from any thread) with the reason just before this rank exits on a failure, its
  // own or another rank's: the last chance to record it.
  std::function<void(const absl::Status& status)> on_abort;
};

class DistContext {
 public:
  // Reads RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; world_size must equal shape.world().
  static absl::StatusOr<std::unique_ptr<DistContext>> Init(const MeshShape& shape,
                                                           const DistOptions& options);
  ~DistContext();

  int rank() const { return rank_; }
  int world() const { return world_; }
  const Mesh& mesh() const { return mesh_; }
  const MeshCoord& coord() const { return coord_; }
  // The group of this rank varying along `dims` (created on first use; every member must ask
  // for it in the same order).
  Group& group(const std::vector<Dim>& dims);
  Group& world_group();
  int64_t TotalBytesSent() const;

  // Stops the watchdog and waits for every rank (rank 0 hosts the store), then closes groups.
  void Shutdown();

  // Tells every rank to stop (they exit within a second with `reason`, which names any peer
  // that stopped heartbeating) and exits.
  [[noreturn]] void Abort(const absl::Status& status);

 private:
  DistContext(int rank, int world, MeshShape shape, DistOptions options,
              c10::intrusive_ptr<c10d::Store> store);
  void Watchdog();
  // Peers whose heartbeat did not advance within `window` (dead, stopped or partitioned).
  std::vector<int> SilentRanks(std::chrono::milliseconds window);

  int rank_, world_;
  Mesh mesh_;
  MeshCoord coord_;
  DistOptions options_;
  c10::intrusive_ptr<c10d::Store> store_;
  std::map<std::string, std::unique_ptr<Group>> groups_;
  std::atomic<bool> stop_{false};
  std::thread watchdog_;
};

}  // namespace lora::dist

#endif  // LORA_WORKER_ENGINE_DIST_COMM_H_
