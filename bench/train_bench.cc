// Training throughput of the LoRA engine: tokens/s and MFU, LoRA vs full fine-tuning, and the
// same loop in PyTorch eager (bench/python/eager_lora_train.py) measured in the same run.
//
//   train_bench                       # the whole table (each row in its own process, for RSS)
//   train_bench --row lora --dtype bf16 [--steps 20 --warmup 3 --seq-len 256 --batch 8]
//
// MFU = achieved FLOP/s (worker/engine/train/flops.h convention) / the 2048x2048 matmul rate
// this program measures first, per dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
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

double MatmulGflops(torch::Dtype dtype) {
  torch::Tensor a = torch::randn({2048, 2048}).to(dtype), b = torch::randn({2048, 2048}).to(dtype);
  torch::mm(a, b);
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    double t0 = Now();
    torch::mm(a, b);
    best = std::min(best, Now() - t0);
  }
  return 2.0 * 2048 * 2048 * 2048 / best / 1e9;
}

struct RowOptions {
  std::string row = "lora";  // lora | full
  std::string dtype = "bf16";
  int steps = 20;
  int warmup = 3;
  int64_t seq_len = 256;
  int64_t batch = 8;
  std::string flavor = "debugmodel";
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
  AdamW opt(trainable, {});
  torch::Tensor ids = torch::randint(0, c.vocab_size, {o.batch, o.seq_len + 1});
  Batch batch;
  batch.input_ids = ids.narrow(1, 0, o.seq_len).contiguous();
  batch.targets = ids.narrow(1, 1, o.seq_len).contiguous();
  batch.position_ids =
      torch::arange(o.seq_len).unsqueeze(0).expand({o.batch, o.seq_len}).contiguous();
  batch.num_targets = o.batch * o.seq_len;
  if (full && bf16) {
    at::autocast::set_cpu_enabled(true);
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  }
  model->train();
  std::vector<double> times;
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profiler;
  for (int step = 0; step < o.warmup + o.steps; ++step) {
    if (step == o.warmup && !o.profile.empty()) {
      profiler = std::make_unique<torch::autograd::profiler::RecordProfile>(o.profile);
    }
    const double t0 = Now();
    for (auto& [name, p] : trainable) p.mutable_grad() = torch::Tensor();
    torch::Tensor loss = BatchLossSum(*model, batch) / static_cast<double>(batch.num_targets);
    loss.backward();
    ClipGradNorm(trainable, 1.0);
    opt.Step(1e-4);
    if (full && bf16) at::autocast::clear_cache();
    if (step >= o.warmup) times.push_back(Now() - t0);
  }
  profiler.reset();
  std::sort(times.begin(), times.end());
  const double step_s = times[times.size() / 2];
  const double tps = static_cast<double>(o.batch * o.seq_len) / step_s;
  struct rusage usage;
  ::getrusage(RUSAGE_SELF, &usage);
  nlohmann::json j = {{"row", o.row},
                      {"dtype", o.dtype},
                      {"step_seconds", step_s},
                      {"tokens_per_second", tps},
                      {"flops_per_token", TrainingFlopsPerToken(c, o.seq_len, lora_params, full)},
                      {"peak_rss_bytes", static_cast<int64_t>(usage.ru_maxrss) * 1024},
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
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  const double peak_fp32 = MatmulGflops(torch::kFloat32),
               peak_bf16 = MatmulGflops(torch::kBFloat16);
  std::cout << absl::StrFormat(
      "matmul 2048x2048: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s (%d threads)\n", peak_fp32, peak_bf16,
      at::get_num_threads());
  std::cout << absl::StrFormat(
      "%s LoRA r8 (7 projections), seq %d, batch %d, %d steps after %d warmup (median)\n\n",
      base.flavor, base.seq_len, base.batch, base.steps, base.warmup);
  std::cout << absl::StrFormat("%-28s %10s %10s %8s %10s\n", "row", "tok/s", "step_ms", "MFU",
                               "peak_RSS");
  const std::string self = "/proc/self/exe";
  char exe[4096];
  ssize_t n = ::readlink(self.c_str(), exe, sizeof(exe) - 1);
  exe[n > 0 ? n : 0] = '\0';
  std::map<std::string, double> tps;
  for (const char* dtype : {"fp32", "bf16"}) {
    for (const char* row : {"lora", "full"}) {
      auto j = RunChild({exe, "--row", row, "--dtype", dtype, "--steps", std::to_string(base.steps),
                         "--warmup", std::to_string(base.warmup), "--seq-len",
                         std::to_string(base.seq_len), "--batch", std::to_string(base.batch),
                         "--flavor", base.flavor});
      if (j.is_null()) continue;
      const double peak = std::string(dtype) == "bf16" ? peak_bf16 : peak_fp32;
      const double mfu =
          j["tokens_per_second"].get<double>() * j["flops_per_token"].get<double>() / (peak * 1e9);
      tps[std::string(row) + dtype] = j["tokens_per_second"];
      std::cout << absl::StrFormat(
          "%-28s %10.0f %10.1f %7.1f%% %9.0fM\n",
          absl::StrCat("lora-train ", row == std::string("lora") ? "LoRA" : "full FT", " ", dtype),
          j["tokens_per_second"].get<double>(), 1000 * j["step_seconds"].get<double>(), 100 * mfu,
          j["peak_rss_bytes"].get<double>() / 1048576);
    }
    // PyTorch eager, best of its default threading and one thread per core.
    std::string script = std::string(LORA_SOURCE_DIR) + "/bench/python/eager_lora_train.py";
    double best = 0;
    nlohmann::json best_j;
    for (const char* threads : {"0", "2"}) {
      auto j = RunChild({"/usr/bin/python3", script, "--dtype", dtype, "--steps",
                         std::to_string(base.steps), "--warmup", std::to_string(base.warmup),
                         "--seq-len", std::to_string(base.seq_len), "--batch",
                         std::to_string(base.batch), "--threads", threads});
      if (!j.is_null() && j["tokens_per_second"].get<double>() > best)
        best = j["tokens_per_second"], best_j = j;
    }
    if (best > 0) {
      const double peak = std::string(dtype) == "bf16" ? peak_bf16 : peak_fp32;
      LlamaConfig c = *LlamaConfig::FromFlavor(base.flavor);
      const double mfu = best * TrainingFlopsPerToken(c, base.seq_len, 245760) / (peak * 1e9);
      tps[std::string("python") + dtype] = best;
      std::cout << absl::StrFormat(
          "%-28s %10.0f %10.1f %7.1f%% %10s\n",
          absl::StrCat("PyTorch eager LoRA ", dtype, " (", best_j["threads"].get<int>(), "t)"),
          best, 1000 * best_j["step_seconds"].get<double>(), 100 * mfu, "-");
    }
  }
  std::cout << "\nratios (same run):\n";
  for (const char* dtype : {"fp32", "bf16"}) {
    const std::string d = dtype;
    if (tps.count("lora" + d) && tps.count("python" + d)) {
      std::cout << absl::StrFormat("  lora-train / PyTorch eager, %s: %.2fx\n", dtype,
                                   tps["lora" + d] / tps["python" + d]);
    }
    if (tps.count("lora" + d) && tps.count("full" + d)) {
      std::cout << absl::StrFormat("  LoRA / full fine-tuning step time, %s: %.2fx faster\n", dtype,
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
  app.add_flag("--checkpointing", o.checkpointing, "Full activation checkpointing");
  app.add_option("--profile", o.profile, "Write a chrome trace of the measured steps (with --row)");
  CLI11_PARSE(app, argc, argv);
  if (!row.empty()) {
    o.row = row;
    return lora::RunRow(o);
  }
  return lora::RunTable(o);
}
