// A mistyped command gets a suggestion: `loractl wathc` -> "did you mean 'watch'?".
#ifndef LORA_CLIENT_LORACTL_SUGGEST_H_
#define LORA_CLIENT_LORACTL_SUGGEST_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "CLI/CLI.hpp"

namespace lora::loractl {

// Edits (insert, delete, substitute, swap two adjacent characters) that turn `a` into `b`.
int EditDistance(std::string_view a, std::string_view b);

// The commands closest to `word` (a prefix of one, or a few edits away), best first; empty
// when none is close.
std::vector<std::string> ClosestCommands(const std::string& word,
                                         const std::vector<std::string>& commands);

// When the command word of `args` (argv without argv[0]; global flags and their values are
// skipped) is not one of `app`'s commands: "unknown command 'wathc'; did you mean 'watch'?",
// or, with nothing close, the list of commands. nullopt when the command exists or is missing.
std::optional<std::string> UnknownCommand(const CLI::App& app,
                                          const std::vector<std::string>& args);

}  // namespace lora::loractl

#endif  // LORA_CLIENT_LORACTL_SUGGEST_H_
