// `loractl completion bash|zsh|fish`: shell completion scripts, generated from loractl's own
// command line definition (CLI11), so that every command and flag is in them: commands, global
// and per-command flags, the values of flags that have a fixed set (-o, --state, --kind),
// files and directories where a flag names one, and job names (from `loractl list`) where a
// command takes a job.
#ifndef LORA_CLIENT_LORACTL_COMPLETION_H_
#define LORA_CLIENT_LORACTL_COMPLETION_H_

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"

namespace lora::loractl {

// The shells there is a script for: bash, zsh, fish.
const std::vector<std::string>& CompletionShells();

// The script for `shell`; INVALID_ARGUMENT for another shell.
absl::StatusOr<std::string> CompletionScript(const CLI::App& app, const std::string& shell);

}  // namespace lora::loractl

#endif  // LORA_CLIENT_LORACTL_COMPLETION_H_
