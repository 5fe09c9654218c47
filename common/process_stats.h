// What this process has used so far, for reports and health events.
#ifndef LORA_COMMON_PROCESS_STATS_H_
#define LORA_COMMON_PROCESS_STATS_H_

#include <cstdint>

namespace lora {

// Peak resident set size of this process, in bytes (getrusage's ru_maxrss).
int64_t PeakRssBytes();

}  // namespace lora

#endif  // LORA_COMMON_PROCESS_STATS_H_
