// lora-train: the LoRA compute engine. Runs alone or under lora-worker; see docs/ENGINE.md.
#include <iostream>

#include "CLI/CLI.hpp"
#include "worker/engine/cli/cli_common.h"

int main(int argc, char** argv) {
  CLI::App app{"lora-train: convert, fine-tune, merge and evaluate LoRA adapters for Llama-family models"};
  app.require_subcommand(1);
  lora::CommandRunner runner;
  lora::AddInitModelCommand(app, &runner);
  lora::AddConvertCommand(app, &runner);
  lora::AddMergeCommand(app, &runner);
  lora::AddEvalCommand(app, &runner);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? lora::kExitOk : lora::kExitUsage;
  }
  try {
    return runner ? runner() : lora::kExitUsage;
  } catch (const std::exception& e) {
    // LibTorch reports misuse by exception; never let one escape as a crash.
    std::cerr << "lora-train: internal error: " << e.what() << std::endl;
    return lora::kExitFailure;
  }
}
