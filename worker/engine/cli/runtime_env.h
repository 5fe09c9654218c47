// Threading settings that must be in the environment before the OpenMP runtime starts.
//
// LibTorch's OpenMP threads spin ~300k iterations after each parallel region (libgomp's
// default), stealing the cores OpenBLAS needs for fp32 matmul: measured 2.2x slower fp32 LoRA
// training on 2 cores. A short spin (GOMP_SPINCOUNT=20000) keeps the bf16 (oneDNN) speed and
// recovers fp32. libgomp reads it once at load time, so the process re-executes itself with
// the variable set; a user's own setting always wins.
//
//   int main(int argc, char** argv) { lora::ReexecWithRuntimeEnvironment(argc, argv); ... }
#ifndef LORA_WORKER_ENGINE_CLI_RUNTIME_ENV_H_
#define LORA_WORKER_ENGINE_CLI_RUNTIME_ENV_H_

namespace lora {

void ReexecWithRuntimeEnvironment(int argc, char** argv);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_CLI_RUNTIME_ENV_H_
