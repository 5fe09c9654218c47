// A lorad address list as lora-worker --controller, loractl --addr and ClientOptions.address
// take it: one address, or several separated by commas (lorad replicas).
//
//   for (const std::string& address : SplitAddressList("a:50051, b:50051")) ...  // a:50051,
//   b:50051
//
// Each entry is trimmed of whitespace; an empty entry ("a:1,", ",") stays in the result, empty,
// so that the caller decides whether to refuse it.
#ifndef LORA_COMMON_ADDRESS_LIST_H_
#define LORA_COMMON_ADDRESS_LIST_H_

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace lora {

inline std::vector<std::string> SplitAddressList(absl::string_view list) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    out.emplace_back(absl::StripAsciiWhitespace(part));
  }
  return out;
}

}  // namespace lora

#endif  // LORA_COMMON_ADDRESS_LIST_H_
