// Learning-rate schedule: linear warmup, then linear / cosine decay to min_lr_factor, or
// constant. Steps are 1-based, as in the step events.
//
//   LrSchedule s{.base_lr = 8e-4, .warmup_steps = 2, .total_steps = 100, .decay = "cosine"};
//   double lr = s.At(step);
#ifndef LORA_WORKER_ENGINE_TRAIN_LR_SCHEDULE_H_
#define LORA_WORKER_ENGINE_TRAIN_LR_SCHEDULE_H_

#include <cmath>
#include <cstdint>
#include <string>

namespace lora {

struct LrSchedule {
  double base_lr = 8e-4;
  int64_t warmup_steps = 2;
  int64_t total_steps = 10;
  std::string decay = "cosine";  // linear | cosine | constant
  double min_lr_factor = 0.0;

  double Factor(int64_t step) const {
    // Warmup ramps (step / (warmup + 1)), as torchtitan does, so step 1 never has lr 0.
    if (step <= warmup_steps)
      return static_cast<double>(step) / static_cast<double>(warmup_steps + 1);
    if (decay == "constant") return 1.0;
    const int64_t decay_steps = total_steps - warmup_steps;
    const double progress = decay_steps <= 0 ? 1.0
                                             : static_cast<double>(step - warmup_steps) /
                                                   static_cast<double>(decay_steps);
    const double shape =
        decay == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
    return min_lr_factor + (1.0 - min_lr_factor) * shape;
  }
  double At(int64_t step) const { return base_lr * Factor(step); }
};

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_LR_SCHEDULE_H_
