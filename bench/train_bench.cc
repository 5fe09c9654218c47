// Training throughput of the LoRA engine: tokens/s and MFU, LoRA vs full fine-tuning, and the
// same loop in PyTorch eager (bench/python/eager_lora_train.py) measured in the same run.
//
//   train_bench                       # the whole table (each row in its own process, for RSS)
//   train_bench --row lora --dtype bf16 [--steps 20 --warmup 3 --seq-len 256 --batch 8]
//   train_bench --device cuda --flavor llama3.2-1b --seq-len 2048 --batch 4 --dtypes bf16
//
// Rows: lora-train LoRA and full fine-tuning (fused CPU kernels; on the CPU also the portable
// SDPA path), then the same model and loop in PyTorch eager and under torch.compile.
// MFU = achieved FLOP/s (worker/engine/train/flops.h convention) / the square matmul rate this
// program measures first, per dtype, on the same device (2048 on the CPU, 8192 on a GPU).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <set>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "worker/engine/cli/runtime_env.h"
#include "worker/engine/data/batcher.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/model/llama.h"
#include "worker/engine/train/adamw.h"
#include "worker/engine/train/flops.h"
#include "worker/engine/train/trainer.h"

namespace lora {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The CUDA allocator's statistics take a real index: "cuda" means device 0.
torch::Device ResolveDevice(const std::string& name) {
  torch::Device device(name);
  return device.is_cuda() && !device.has_index() ? torch::Device(torch::kCUDA, 0) : device;
}

void Sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

double MatmulGflops(torch::Dtype dtype, const torch::Device& device) {
  const int64_t n = device.is_cuda() ? 8192 : 2048;
  const auto opts = torch::TensorOptions().dtype(dtype).device(device);
  torch::Tensor a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
  torch::mm(a, b);
  Sync(device);
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    double t0 = Now();
    torch::mm(a, b);
    Sync(device);
    best = std::min(best, Now() - t0);
  }
  return 2.0 * n * n * n / best / 1e9;
}

struct RowOptions {
  std::string row = "lora";  // lora | full
  std::string dtype = "bf16";
  int steps = 20;
  int warmup = 3;
  int64_t seq_len = 256;
  int64_t batch = 8;
  std::string flavor = "debugmodel";
  std::string device = "cpu";
  std::string dtypes = "fp32,bf16";  // the table's dtypes
  bool portable = false;             // SDPA and unfused SwiGLU instead of the fused CPU kernels
  bool checkpointing = false;
  std::string profile;  // chrome-trace file of the measured steps
};

// One configuration, in this process: prints a JSON line.
int RunRow(const RowOptions& o) {
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  const bool bf16 = o.dtype == "bf16";
  const bool full = o.row == "full";
  LlamaConfig c = *LlamaConfig::FromFlavor(o.flavor);
  // LoRA keeps the frozen base in bf16 (no master copy needed); full fine-tuning needs fp32
  // master weights and runs bf16 through autocast.
  const torch::Dtype base_dtype = (bf16 && !full) ? torch::kBFloat16 : torch::kFloat32;
  const torch::Device device = ResolveDevice(o.device);
  LlamaForCausalLM model(c, base_dtype);
  InitializeWeights(*model, 0);
  model->model->set_activation_checkpointing(o.checkpointing);
  int64_t lora_params = 0;
  if (!full) {
    auto report = ConvertToLora(*model, LoraConfig{});
    lora_params = report->trainable_parameters;
  }
  NamedTensors trainable;
  for (const auto& item : model->named_parameters()) {
    if (full) item.value().set_requires_grad(true);
    if (item.value().requires_grad()) trainable.emplace_back(item.key(), item.value());
  }
  model->to(device);
  model->model->set_fused_kernels(device.is_cpu() && !o.portable);
  AdamW opt(trainable, {});
  torch::Tensor ids = torch::randint(0, c.vocab_size, {o.batch, o.seq_len + 1});
  Batch batch;
  batch.input_ids = ids.narrow(1, 0, o.seq_len).contiguous();
  batch.targets = ids.narrow(1, 1, o.seq_len).contiguous();
  batch.position_ids =
      torch::arange(o.seq_len).unsqueeze(0).expand({o.batch, o.seq_len}).contiguous();
  batch.num_targets = o.batch * o.seq_len;
  if (full && bf16) {
    at::autocast::set_autocast_enabled(device.type(), true);
    at::autocast::set_autocast_dtype(device.type(), at::kBFloat16);
  }
  model->train();
  std::vector<double> times;
  // Kineto: host operator spans, and on CUDA the kernels themselves (what the GPU ran, and
  // when it sat idle waiting for the host).
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const torch::profiler::impl::ProfilerConfig profiler_config(
      torch::profiler::impl::ProfilerState::KINETO);
  std::set<ActivityType> activities = {ActivityType::CPU};
  if (device.is_cuda()) activities.insert(ActivityType::CUDA);
  bool profiling = false;
  for (int step = 0; step < o.warmup + o.steps; ++step) {
    if (step == o.warmup && !o.profile.empty()) {
      prof::prepareProfiler(profiler_config, activities);
      prof::enableProfiler(profiler_config, activities);
      profiling = true;
    }
    if (step == o.warmup && device.is_cuda())
      c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
    Sync(device);
    const double t0 = Now();
    for (auto& [name, p] : trainable) p.mutable_grad() = torch::Tensor();
    torch::Tensor loss = BatchLossSum(*model, batch) / static_cast<double>(batch.num_targets);
    loss.backward();
    const torch::Tensor norm = ClipGradNorm(trainable, 1.0);
    opt.Step(1e-4);
    // The step's logged loss and gradient norm: one host read, as `lora-train run`.
    (void)at::stack({loss.detach().to(torch::kFloat64), norm.to(loss.device())}).to(torch::kCPU);
    if (full && bf16) at::autocast::clear_cache();
    Sync(device);
    if (step >= o.warmup) times.push_back(Now() - t0);
  }
  if (profiling) prof::disableProfiler()->save(o.profile);
  std::sort(times.begin(), times.end());
  const double step_s = times[times.size() / 2];
  const double tps = static_cast<double>(o.batch * o.seq_len) / step_s;
  struct rusage usage;
  ::getrusage(RUSAGE_SELF, &usage);
  int64_t peak_gpu = 0;
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    peak_gpu =
        stats.allocated_bytes[static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE)]
            .peak;
  }
  nlohmann::json j = {{"row", o.row},
                      {"dtype", o.dtype},
                      {"step_seconds", step_s},
                      {"tokens_per_second", tps},
                      {"flops_per_token", TrainingFlopsPerToken(c, o.seq_len, lora_params, full)},
                      {"trainable_parameters", lora_params},
                      {"peak_rss_bytes", static_cast<int64_t>(usage.ru_maxrss) * 1024},
                      {"peak_gpu_bytes", peak_gpu},
                      {"threads", at::get_num_threads()}};
  std::cout << j.dump() << std::endl;
  return 0;
}

// Runs `argv` and returns the last JSON line it printed (null on failure).
nlohmann::json RunChild(const std::vector<std::string>& argv) {
  std::string cmd;
  for (const auto& a : argv) cmd += "'" + a + "' ";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return nullptr;
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), p)) out += buf;
  ::pclose(p);
  nlohmann::json last = nullptr;
  size_t start = 0;
  while (start < out.size()) {
    size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    auto j = nlohmann::json::parse(out.substr(start, end - start), nullptr, false);
    if (!j.is_discarded() && j.is_object()) last = j;
    start = end + 1;
  }
  return last;
}

int RunTable(const RowOptions& base) {
  // Each row reaches the log as soon as it is measured: a run stopped at its time limit (the
  // accelerator's per-command limit) keeps the rows it finished.
  std::cout << std::unitbuf;
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  const torch::Device device = ResolveDevice(base.device);
  const bool gpu = device.is_cuda();
  const double peak_fp32 = MatmulGflops(torch::kFloat32, device),
               peak_bf16 = MatmulGflops(torch::kBFloat16, device);
  const int64_t n = gpu ? 8192 : 2048;
  std::cout << absl::StrFormat("matmul %dx%d on %s: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s", n, n,
                               device.str(), peak_fp32, peak_bf16)
            << (gpu ? "\n" : absl::StrFormat(" (%d threads)\n", at::get_num_threads()));
  std::cout << absl::StrFormat(
      "%s LoRA r8 (7 projections), seq %d, batch %d, %d steps after %d warmup (median)\n\n",
      base.flavor, base.seq_len, base.batch, base.steps, base.warmup);
  std::cout << absl::StrFormat("%-34s %10s %10s %8s %10s\n", "row", "tok/s", "step_ms", "MFU",
                               gpu ? "peak_GPU" : "peak_RSS");
  char exe[4096];
  ssize_t len = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  exe[len > 0 ? len : 0] = '\0';
  const LlamaConfig c = *LlamaConfig::FromFlavor(base.flavor);
  std::map<std::string, double> tps;
  auto print = [&](const std::string& label, const std::string& dtype, const nlohmann::json& j,
                   double flops_per_token) {
    const double peak = dtype == "bf16" ? peak_bf16 : peak_fp32;
    const double t = j["tokens_per_second"].get<double>();
    const double mem = j.value(gpu ? "peak_gpu_bytes" : "peak_rss_bytes", 0.0);
    std::cout << absl::StrFormat("%-34s %10.0f %10.1f %7.1f%% %10s\n", label, t,
                                 1000 * j["step_seconds"].get<double>(),
                                 100 * t * flops_per_token / (peak * 1e9),
                                 mem > 0 ? absl::StrFormat("%.0fM", mem / 1048576) : "-");
  };
  auto common = [&](std::vector<std::string> argv) {
    for (const std::string& a :
         {std::string("--steps"), std::to_string(base.steps), std::string("--warmup"),
          std::to_string(base.warmup), std::string("--seq-len"), std::to_string(base.seq_len),
          std::string("--batch"), std::to_string(base.batch), std::string("--flavor"), base.flavor,
          std::string("--device"), base.device}) {
      argv.push_back(a);
    }
    return argv;
  };
  int64_t lora_params = 0;
  for (const std::string& dtype : std::vector<std::string>(absl::StrSplit(base.dtypes, ','))) {
    struct Variant {
      const char* row;
      bool portable;
      const char* label;
    };
    std::vector<Variant> variants = {{"lora", false, "LoRA"}, {"full", false, "full FT"}};
    if (!gpu) variants.insert(variants.begin() + 1, {"lora", true, "LoRA, SDPA"});
    for (const Variant& v : variants) {
      std::vector<std::string> argv = common({exe, "--row", v.row, "--dtype", dtype});
      if (v.portable) argv.push_back("--portable-kernels");
      auto j = RunChild(argv);
      if (j.is_null()) continue;
      if (std::string(v.row) == "lora") lora_params = j.value("trainable_parameters", int64_t{0});
      tps[absl::StrCat(v.row, v.portable ? "-sdpa" : "", dtype)] = j["tokens_per_second"];
      print(absl::StrCat("lora-train ", v.label, " ", dtype), dtype, j,
            j["flops_per_token"].get<double>());
    }
    // The Python loop: eager (on the CPU the best of its default threading and one thread per
    // core), then torch.compile.
    // LORA_PYTHON / LORA_TEST_SOURCE_DIR: another machine's Python and checkout (gpu-check.sh).
    const char* env_python = std::getenv("LORA_PYTHON");
    const char* env_source = std::getenv("LORA_TEST_SOURCE_DIR");
    const std::string python = env_python != nullptr ? env_python : LORA_PYTHON;
    const std::string script = std::string(env_source != nullptr ? env_source : LORA_SOURCE_DIR) +
                               "/bench/python/eager_lora_train.py";
    for (bool compiled : {false, true}) {
      double best = 0;
      nlohmann::json best_j;
      std::vector<const char*> thread_choices =
          gpu || compiled ? std::vector<const char*>{"0"} : std::vector<const char*>{"0", "2"};
      for (const char* threads : thread_choices) {
        std::vector<std::string> argv =
            common({python, script, "--dtype", dtype, "--threads", threads});
        if (compiled) argv.push_back("--compile");
        auto j = RunChild(argv);
        if (!j.is_null() && j["tokens_per_second"].get<double>() > best)
          best = j["tokens_per_second"], best_j = j;
      }
      if (best <= 0) continue;
      tps[absl::StrCat(compiled ? "compiled" : "eager", dtype)] = best;
      print(absl::StrCat("PyTorch ", compiled ? "compile" : "eager", " LoRA ", dtype,
                         gpu ? "" : absl::StrCat(" (", best_j["threads"].get<int>(), "t)")),
            dtype, best_j, TrainingFlopsPerToken(c, base.seq_len, lora_params));
    }
  }
  std::cout << "\nratios (same run):\n";
  for (const std::string& d : std::vector<std::string>(absl::StrSplit(base.dtypes, ','))) {
    for (const char* other : {"eager", "compiled"}) {
      if (tps.count("lora" + d) && tps.count(other + d)) {
        std::cout << absl::StrFormat("  lora-train / PyTorch %s, %s: %.2fx\n", other, d,
                                     tps["lora" + d] / tps[other + d]);
      }
    }
    if (tps.count("lora" + d) && tps.count("lora-sdpa" + d)) {
      std::cout << absl::StrFormat("  fused CPU kernels / SDPA path, %s: %.2fx\n", d,
                                   tps["lora" + d] / tps["lora-sdpa" + d]);
    }
    if (tps.count("lora" + d) && tps.count("full" + d)) {
      std::cout << absl::StrFormat("  LoRA / full fine-tuning step time, %s: %.2fx faster\n", d,
                                   tps["lora" + d] / tps["full" + d]);
    }
  }
  return 0;
}

}  // namespace
}  // namespace lora

int main(int argc, char** argv) {
  lora::ReexecWithRuntimeEnvironment(argc, argv);
  CLI::App app{"LoRA training throughput benchmark"};
  lora::RowOptions o;
  std::string row;
  app.add_option("--row", row, "Run one configuration (lora | full) and print JSON");
  app.add_option("--dtype", o.dtype, "fp32 | bf16");
  app.add_option("--steps", o.steps);
  app.add_option("--warmup", o.warmup);
  app.add_option("--seq-len", o.seq_len);
  app.add_option("--batch", o.batch);
  app.add_option("--flavor", o.flavor);
  app.add_option("--device", o.device, "cpu | cuda (cuda:N)");
  app.add_option("--dtypes", o.dtypes, "The table's dtypes, comma-separated");
  app.add_flag("--portable-kernels", o.portable, "SDPA and unfused SwiGLU (with --row)");
  app.add_flag("--checkpointing", o.checkpointing, "Full activation checkpointing");
  app.add_option("--profile", o.profile, "Write a chrome trace of the measured steps (with --row)");
  CLI11_PARSE(app, argc, argv);
  if (torch::Device(o.device).is_cuda() && !torch::cuda::is_available()) {
    std::cerr << "train_bench: --device " << o.device << " but no CUDA device is visible"
              << std::endl;
    return 2;
  }
  try {
    if (!row.empty()) {
      o.row = row;
      return lora::RunRow(o);
    }
    return lora::RunTable(o);
  } catch (const std::exception& e) {
    std::cerr << "train_bench: " << e.what() << std::endl;
    return 1;
  }
}
