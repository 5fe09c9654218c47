// Status propagation helpers for absl::Status / absl::StatusOr.
//
// Abseil 20220623 ships no RETURN_IF_ERROR / ASSIGN_OR_RETURN, so the project defines its own:
//
//   LORA_RETURN_IF_ERROR(WriteHeader(out));
//   LORA_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
#ifndef LORA_COMMON_STATUS_MACROS_H_
#define LORA_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LORA_STATUS_CONCAT_INNER_(a, b) a##b
#define LORA_STATUS_CONCAT_(a, b) LORA_STATUS_CONCAT_INNER_(a, b)

#define LORA_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status lora_status_ = (expr);        \
    if (!lora_status_.ok()) return lora_status_; \
  } while (false)

#define LORA_ASSIGN_OR_RETURN(lhs, expr) \
  LORA_ASSIGN_OR_RETURN_IMPL_(LORA_STATUS_CONCAT_(lora_statusor_, __LINE__), lhs, expr)

#define LORA_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)   \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // LORA_COMMON_STATUS_MACROS_H_
