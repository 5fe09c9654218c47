#include "worker/engine/cli/runtime_env.h"

#include <unistd.h>

#include <cstdlib>

namespace lora {

void ReexecWithRuntimeEnvironment(int argc, char** argv) {
  (void)argc;
  if (std::getenv("GOMP_SPINCOUNT") != nullptr || std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("GOMP_SPINCOUNT", "20000", /*overwrite=*/0);
  ::execv("/proc/self/exe", argv);
  // exec failed (no /proc?): carry on with the defaults.
}

}  // namespace lora
