// Process exit codes and other constants shared by lora-train, lora-worker and lorad. One
// definition: the engine returns them, the agent reports them, the controller's retry policy
// reads them (docs/ENGINE.md lists them for users).
#ifndef LORA_COMMON_EXIT_CODES_H_
#define LORA_COMMON_EXIT_CODES_H_

namespace lora {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
// Stopped on request (SIGTERM/SIGINT, or a cancel) after writing a checkpoint: a planned stop.
// `lora-train run --resume` continues it; lorad requeues it without spending an attempt.
inline constexpr int kExitInterrupted = 75;  // sysexits' EX_TEMPFAIL

// The descriptor lora-worker gives lora-train for its events (passed as --events-fd).
inline constexpr int kEngineEventsFd = 3;

}  // namespace lora

#endif  // LORA_COMMON_EXIT_CODES_H_
