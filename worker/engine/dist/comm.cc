#include "worker/engine/dist/comm.h"

#include <c10/cuda/CUDAFunctions.h>
#include <unistd.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lora::dist {
namespace {

constexpr char kAbortKey[] = "lora/abort";
constexpr auto kHeartbeatPeriod = std::chrono::milliseconds(500);

std::string HeartbeatKey(int rank) { return absl::StrCat("lora/heartbeat/", rank); }

std::string Env(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

bool IsReduced(torch::Dtype d) { return d == torch::kFloat32 || d == torch::kFloat64; }

// Gloo gathers, broadcasts and point-to-point transfers copy bytes, but only accept some
// dtypes (no bf16, no int16): move bf16 as fp16, bit for bit (nothing does arithmetic on it).
torch::Tensor AsTransferable(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? t.view(torch::kFloat16) : t;
}

// Gloo reports a dead or stuck peer as a closed / reset connection or a timeout; anything
// else (a bad argument) is this rank's own error and retrying would not help.
bool IsPeerFailure(const std::string& detail) {
  for (const char* sign : {"timed out", "Timed out", "onnection", "Read error", "Write error",
                           "closed", "reset by peer", "Broken pipe", "EOF"}) {
    if (detail.find(sign) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

Group::Group(c10::intrusive_ptr<c10d::Backend> pg, int rank, int size,
             std::chrono::milliseconds timeout, std::vector<int> world_ranks, torch::Device device)
    : pg_(std::move(pg)),
      rank_(rank),
      size_(size),
      timeout_(timeout),
      world_ranks_(std::move(world_ranks)),
      device_(device) {}

bool Group::OnGroupDevice(const torch::Tensor& t) const { return t.device() == device_; }

void Group::Wait(c10::intrusive_ptr<c10d::Work> work, const char* what) {
  auto fail = [&](const std::string& detail) {
    if (!IsPeerFailure(detail)) {
      throw std::runtime_error(absl::StrCat(
          what, " among ranks [", absl::StrJoin(world_ranks_, ", "), "] failed: ", detail));
    }
    throw CommError(absl::StrCat(what, " among ranks [", absl::StrJoin(world_ranks_, ", "),
                                 "] failed (timeout ", timeout_.count() / 1000.0, " s; ",
                                 kCommErrorMarker, "): ", detail));
  };
  try {
    work->wait(timeout_);
  } catch (const c10::Error& e) {
    std::string detail = e.what_without_backtrace();
    if (const size_t cut = detail.find("\nException raised from"); cut != std::string::npos)
      detail.resize(cut);
    fail(detail);
  } catch (const std::exception& e) {
    fail(e.what());
  }
}

void Group::AllReduceSum(torch::Tensor& t) {
  if (size_ == 1) return;
  // Reduced in fp32 (fp64 stays fp64), on the group's device.
  const torch::Dtype dtype = IsReduced(t.scalar_type()) ? t.scalar_type() : torch::kFloat32;
  torch::Tensor buf = t.scalar_type() == dtype && t.is_contiguous() && OnGroupDevice(t)
                          ? t
                          : t.to(device_, dtype).contiguous();
  std::vector<torch::Tensor> v = {buf};
  bytes_sent_ += 2 * (size_ - 1) * buf.numel() * buf.element_size() / size_;
  Wait(pg_->allreduce(v), "all-reduce");
  if (!buf.is_same(t)) t.copy_(buf);
}

torch::Tensor Group::AllGather(const torch::Tensor& t, int64_t dim) {
  if (size_ == 1) return t;
  // One contiguous buffer of size x the input's first dimension, filled by the backend in rank
  // order: already the concatenation along dim 0, no per-rank list and no extra copy.
  torch::Tensor src = AsTransferable((t.dim() == 0 ? t.reshape({1}) : t).to(device_).contiguous());
  std::vector<int64_t> shape = src.sizes().vec();
  shape[0] *= size_;
  torch::Tensor out = torch::empty(shape, src.options());
  bytes_sent_ += (size_ - 1) * src.numel() * src.element_size();
  Wait(pg_->_allgather_base(out, src), "all-gather");
  if (out.scalar_type() != t.scalar_type()) out = out.view(t.scalar_type());
  out = out.to(t.device());
  const int64_t d = dim < 0 ? dim + t.dim() : dim;
  if (d == 0) return out;
  // [size * d0, ...] -> [size, d0, ...] -> concatenation along `dim`.
  std::vector<int64_t> split = t.sizes().vec();
  split.insert(split.begin(), size_);
  std::vector<int64_t> joined = t.sizes().vec();
  joined[static_cast<size_t>(d)] *= size_;
  return out.view(split).movedim(0, d).reshape(joined);
}

torch::Tensor Group::ReduceScatterSum(const torch::Tensor& t, int64_t dim) {
  return device_.is_cuda() ? NativeReduceScatterSum(t, dim) : RingReduceScatterSum(t, dim);
}

torch::Tensor Group::NativeReduceScatterSum(const torch::Tensor& t, int64_t dim) {
  if (size_ == 1) return t;
  const int64_t d = dim < 0 ? dim + t.dim() : dim;
  // Chunk i of `dim` goes to rank i: make the chunks contiguous along a leading axis.
  torch::Tensor in = t.to(device_, torch::kFloat32).movedim(d, 0).contiguous();
  std::vector<int64_t> out_shape = in.sizes().vec();
  out_shape[0] /= size_;
  torch::Tensor out = torch::empty(out_shape, in.options());
  bytes_sent_ += (size_ - 1) * out.numel() * out.element_size();
  c10d::ReduceScatterOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  Wait(pg_->_reduce_scatter_base(out, in, opts), "reduce-scatter");
  return out.movedim(0, d).to(t.device(), t.scalar_type()).contiguous();
}

torch::Tensor Group::RingReduceScatterSum(const torch::Tensor& t, int64_t dim) {
  if (size_ == 1) return t;
  // A ring of sends and receives. In step s, rank r passes its
  // running sum of chunk (r - s - 1) to r + 1 and adds what r - 1 sends into chunk (r - s - 2);
  // after size - 1 steps chunk r holds every rank's contribution. Each rank sends
  // (size - 1) / size of the tensor, half of what an all-reduce would.
  const int64_t n = t.size(dim) / size_;
  torch::Tensor acc = t.movedim(dim, 0).to(device_, torch::kFloat32).contiguous().clone();
  auto chunk = [&](int64_t i) { return acc.narrow(0, ((i % size_) + size_) % size_ * n, n); };
  const int right = (rank_ + 1) % size_, left = (rank_ + size_ - 1) % size_;
  torch::Tensor incoming = torch::empty_like(chunk(0));
  for (int s = 0; s < size_ - 1; ++s) {
    Send(chunk(rank_ - s - 1), right, kReduceScatterTag);
    Recv(incoming, left, kReduceScatterTag);
    chunk(rank_ - s - 2).add_(incoming);
    Flush();
  }
  return chunk(rank_).movedim(0, dim).to(t.device(), t.scalar_type()).contiguous();
}

void Group::Broadcast(torch::Tensor& t, int root) {
  if (size_ == 1) return;
  torch::Tensor buf = t.is_contiguous() && OnGroupDevice(t) ? t : t.to(device_).contiguous();
  std::vector<torch::Tensor> v = {AsTransferable(buf)};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  if (rank_ == root) bytes_sent_ += (size_ - 1) * buf.numel() * buf.element_size();
  Wait(pg_->broadcast(v, opts), "broadcast");
  if (!buf.is_same(t)) t.copy_(buf);
}

void Group::Send(const torch::Tensor& t, int dst, int tag) {
  torch::Tensor buf = AsTransferable(t.to(device_).contiguous());
  std::vector<torch::Tensor> v = {buf};
  bytes_sent_ += buf.numel() * buf.element_size();
  pending_sends_.emplace_back(pg_->send(v, dst, tag), buf);
}

void Group::Recv(torch::Tensor& t, int src, int tag) {
  torch::Tensor buf = OnGroupDevice(t) && t.is_contiguous()
                          ? t
                          : torch::empty(t.sizes(), t.options().device(device_));
  std::vector<torch::Tensor> v = {AsTransferable(buf)};
  Wait(pg_->recv(v, src, tag), "receive");
  if (!buf.is_same(t)) t.copy_(buf);
}

void Group::PostRecv(torch::Tensor& t, int src, int tag) {
  TORCH_CHECK(t.is_contiguous(), "PostRecv needs a contiguous buffer");
  // Received in place, or into a staging buffer on the group's device copied into `t` by Flush.
  torch::Tensor staged =
      OnGroupDevice(t) ? t : torch::empty(t.sizes(), t.options().device(device_));
  std::vector<torch::Tensor> v = {AsTransferable(staged)};  // a view of staged's storage
  pending_recvs_.push_back({pg_->recv(v, src, tag), staged, t});
}
void Group::Flush() {
  for (auto& r : pending_recvs_) {
    Wait(r.work, "receive");
    if (!r.staged.is_same(r.target)) r.target.copy_(r.staged);
  }
  pending_recvs_.clear();
  for (auto& [work, buf] : pending_sends_) Wait(work, "send");
  pending_sends_.clear();
}

void Group::Barrier() {
  if (size_ == 1) return;
  Wait(pg_->barrier(), "barrier");
}

absl::StatusOr<std::unique_ptr<DistContext>> DistContext::Init(const MeshShape& shape,
                                                               const DistOptions& options) {
  int rank = 0, world = 1, port = 29500;
  if (!absl::SimpleAtoi(Env("RANK", "0"), &rank) ||
      !absl::SimpleAtoi(Env("WORLD_SIZE", "1"), &world) ||
      !absl::SimpleAtoi(Env("MASTER_PORT", "29500"), &port)) {
    return absl::InvalidArgumentError("RANK, WORLD_SIZE and MASTER_PORT must be integers");
  }
  if (world != shape.world()) {
    return absl::InvalidArgumentError(
        absl::StrCat("WORLD_SIZE=", world, " but the parallelism in the job spec (",
                     shape.ToString(), ") needs ", shape.world(), " ranks"));
  }
  if (rank < 0 || rank >= world)
    return absl::InvalidArgumentError(absl::StrCat("RANK=", rank, " outside [0, ", world, ")"));
  const std::string master = Env("MASTER_ADDR", "127.0.0.1");
  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = options.timeout;
    store = c10::make_intrusive<c10d::TCPStore>(master, so);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", rank, ": rendezvous with ", master, ":",
                                               port, " failed: ", e.what()));
  }
  auto ctx = std::unique_ptr<DistContext>(new DistContext(rank, world, shape, options, store));
  ctx->watchdog_ = std::thread([c = ctx.get()] { c->Watchdog(); });
  return ctx;
}

DistContext::DistContext(int rank, int world, MeshShape shape, DistOptions options,
                         c10::intrusive_ptr<c10d::Store> store)
    : rank_(rank),
      world_(world),
      mesh_(shape),
      coord_(mesh_.Coord(rank)),
      options_(options),
      store_(std::move(store)) {}

DistContext::~DistContext() { Shutdown(); }

void DistContext::Shutdown() {
  if (stop_.exchange(true)) return;
  if (watchdog_.joinable()) watchdog_.join();
  // Rank 0 hosts the store: nobody may leave while others still use it.
  try {
    world_group().Barrier();
  } catch (...) {
  }
  groups_.clear();
}

Group& DistContext::group(const std::vector<Dim>& dims) {
  const std::string name = mesh_.GroupName(rank_, dims);
  auto it = groups_.find(name);
  if (it != groups_.end()) return *it->second;
  std::vector<int> members = mesh_.GroupOf(rank_, dims);
  const int index =
      static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
  c10::intrusive_ptr<c10d::Backend> pg;
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(name, store_);
  // LORA_DIST_BACKEND=gloo keeps Gloo for CUDA ranks (tensors staged through the host): the
  // only way to run several ranks on one GPU, which NCCL refuses.
  const bool nccl = options_.device.is_cuda() && Env("LORA_DIST_BACKEND") != "gloo";
  if (members.size() > 1 && nccl) {
    // NCCL binds a communicator to the current device; one rank per GPU (NCCL refuses two
    // ranks of one communicator on the same GPU).
    c10::cuda::set_device(options_.device.index());
    auto opts = c10::make_intrusive<c10d::ProcessGroupNCCL::Options>();
    opts->timeout = options_.timeout;
    pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, index,
                                                     static_cast<int>(members.size()), opts);
  } else if (members.size() > 1) {
    auto opts = c10d::ProcessGroupGloo::Options::create(options_.timeout);
    const std::string host =
        Env("LORA_GLOO_HOSTNAME", Env("MASTER_ADDR", "127.0.0.1") == "127.0.0.1" ||
                                          Env("MASTER_ADDR", "127.0.0.1") == "localhost"
                                      ? "127.0.0.1"
                                      : "");
    const std::string ifname = Env("GLOO_SOCKET_IFNAME");
    opts->devices.push_back(!ifname.empty()
                                ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                            : !host.empty() ? c10d::ProcessGroupGloo::createDeviceForHostname(host)
                                            : c10d::ProcessGroupGloo::createDefaultDevice());
    opts->threads = 2;
    pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, index,
                                                     static_cast<int>(members.size()), opts);
  }
  auto g = std::make_unique<Group>(pg, index, static_cast<int>(members.size()), options_.timeout,
                                   members, nccl ? options_.device : torch::Device(torch::kCPU));
  Group& ref = *g;
  groups_[name] = std::move(g);
  return ref;
}

Group& DistContext::world_group() {
  return group({Dim::kPp, Dim::kReplicate, Dim::kShard, Dim::kCp, Dim::kTp});
}

int64_t DistContext::TotalBytesSent() const {
  int64_t total = 0;
  for (const auto& [name, g] : groups_) total += g->bytes_sent();
  return total;
}

std::vector<int> DistContext::SilentRanks(std::chrono::milliseconds window) {
  std::vector<int64_t> before(static_cast<size_t>(world_), 0);
  std::vector<int> silent;
  try {
    for (int r = 0; r < world_; ++r)
      before[static_cast<size_t>(r)] = store_->add(HeartbeatKey(r), 0);
    std::this_thread::sleep_for(window);
    for (int r = 0; r < world_; ++r) {
      if (r != rank_ && store_->add(HeartbeatKey(r), 0) == before[static_cast<size_t>(r)])
        silent.push_back(r);
    }
  } catch (const std::exception&) {
    silent = {0};  // the store lives in rank 0
  }
  return silent;
}

void DistContext::Abort(const absl::Status& status) {
  absl::StatusCode code = status.code();
  std::string message = absl::StrCat("rank ", rank_, ": ", status.message());
  // A peer's death shows up here as a socket error or a timeout that does not say which peer;
  // the heartbeats do.
  const std::vector<int> silent =
      world_ > 1 ? SilentRanks(5 * kHeartbeatPeriod) : std::vector<int>{};
  if (!silent.empty()) {
    absl::StrAppend(&message, " [unresponsive: rank ", absl::StrJoin(silent, ", rank "), "]");
    code = absl::StatusCode::kUnavailable;
  }
  // Every rank reports the first failure, with its code: "<code>:<message>".
  const std::string value = absl::StrCat(static_cast<int>(code), ":", message);
  try {
    store_->set(kAbortKey, std::vector<uint8_t>(value.begin(), value.end()));
  } catch (...) {
  }
  std::cerr << "lora-train: aborting: " << message << std::endl;
  if (options_.on_abort) options_.on_abort(absl::Status(code, message));
  ::_exit(1);
}

void DistContext::Watchdog() {
  // Another rank's failure stops this one within a second, with that rank's reason, instead of
  // leaving it blocked in a collective until the timeout.
  while (!stop_) {
    for (int i = 0; i < 5 && !stop_; ++i) std::this_thread::sleep_for(kHeartbeatPeriod / 5);
    if (stop_) return;
    try {
      store_->add(HeartbeatKey(rank_), 1);
      if (store_->check({kAbortKey})) {
        std::vector<uint8_t> v = store_->get(kAbortKey);
        const std::string value(v.begin(), v.end());
        const size_t colon = value.find(':');
        int code = static_cast<int>(absl::StatusCode::kUnavailable);
        if (colon != std::string::npos) (void)absl::SimpleAtoi(value.substr(0, colon), &code);
        const std::string reason = colon == std::string::npos ? value : value.substr(colon + 1);
        std::cerr << "lora-train: rank " << rank_ << " stopping: " << reason << std::endl;
        if (options_.on_abort)
          options_.on_abort(absl::Status(static_cast<absl::StatusCode>(code), reason));
        ::_exit(1);
      }
    } catch (const std::exception& e) {
      if (stop_) return;
      const std::string reason = absl::StrCat(
          "rank ", rank_, ": lost the rendezvous store on rank 0 (", e.what(), "); rank 0 is gone");
      std::cerr << "lora-train: " << reason << std::endl;
      if (options_.on_abort) options_.on_abort(absl::UnavailableError(reason));
      ::_exit(1);
    }
  }
}

}  // namespace lora::dist
