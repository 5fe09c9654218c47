#include "common/grpc_log.h"

#include <grpc/support/log.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace lora {
namespace {

void Forward(gpr_log_func_args* args) {
  const char* file = args->file != nullptr ? args->file : "";
  const char* slash = std::strrchr(file, '/');
  LogLine(args->severity == GPR_LOG_SEVERITY_ERROR ? LogLevel::kError : LogLevel::kInfo,
          args->message != nullptr ? args->message : "")
      .Field("source", "grpc")
      .Field("file", absl::StrCat(slash != nullptr ? slash + 1 : file, ":", args->line));
}

}  // namespace

void RouteGrpcLogs() { gpr_set_log_function(&Forward); }

}  // namespace lora
