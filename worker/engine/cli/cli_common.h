// Shared plumbing of the lora-train subcommands: registration, model loading, error reporting.
//
// Each command file exposes `void AddFooCommand(CLI::App& app, CommandRunner* runner)`; the
// subcommand's callback stores in `runner` what main() runs after parsing.
#ifndef LORA_WORKER_ENGINE_CLI_CLI_COMMON_H_
#define LORA_WORKER_ENGINE_CLI_CLI_COMMON_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/exit_codes.h"  // kExitOk, kExitFailure, kExitUsage, kExitInterrupted
#include "common/process_stats.h"
#include "worker/engine/model/llama.h"

namespace lora {

using CommandRunner = std::function<int()>;

void AddInitModelCommand(CLI::App& app, CommandRunner* runner);
void AddConvertCommand(CLI::App& app, CommandRunner* runner);
void AddMergeCommand(CLI::App& app, CommandRunner* runner);
void AddEvalCommand(CLI::App& app, CommandRunner* runner);
void AddRunCommand(CLI::App& app, CommandRunner* runner);
void AddVersionCommand(CLI::App& app, CommandRunner* runner);

// Prints "lora-train <command>: error: <message>" to stderr and returns the exit code.
int ReportError(const std::string& command, const absl::Status& status);

// Uses every core for intra-op parallelism unless OMP_NUM_THREADS says otherwise (LibTorch 1.13
// from Debian defaults to one thread).
void ConfigureThreads();

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  // Seconds since the previous Lap() (or construction).
  double Lap() {
    auto now = std::chrono::steady_clock::now();
    double s = std::chrono::duration<double>(now - lap_).count();
    lap_ = now;
    return s;
  }

 private:
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point lap_ = start_;
};

struct LoadedModel {
  LlamaForCausalLM model{nullptr};
  std::string source;  // absolute directory, or the flavor name
  bool from_flavor = false;
};

// `model_arg` is a Hugging Face checkpoint directory or a built-in flavor name (random init
// from `seed`).
absl::StatusOr<LoadedModel> LoadModelOrFlavor(const std::string& model_arg, torch::Dtype dtype,
                                              uint64_t seed);

// "1.5 GiB" style.
std::string HumanBytes(uint64_t bytes);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_CLI_CLI_COMMON_H_
