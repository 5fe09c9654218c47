// Fuzzes the nesting scans of common/nesting.h and checks what they promise: a JSON document
// that passes CheckJsonNesting(max) and then parses is nested at most max deep, and a TOML
// document that passes CheckTomlNesting goes through toml11 (which recurses) safely, by the
// path every TOML document takes (ParseJobSpecToml).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "common/job_spec/job_spec.h"
#include "common/nesting.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_util.h"

namespace {

constexpr int kMaxDepth = 8;  // small, so that the fuzzer reaches the bound quickly

// Iterative: a recursive walk would itself be what the bound protects against.
int JsonDepth(const nlohmann::json& root) {
  int deepest = 0;
  std::vector<std::pair<const nlohmann::json*, int>> stack = {{&root, 0}};
  while (!stack.empty()) {
    auto [j, depth] = stack.back();
    stack.pop_back();
    if (!j->is_structured()) continue;
    deepest = std::max(deepest, depth + 1);
    for (const auto& child : *j) stack.push_back({&child, depth + 1});
  }
  return deepest;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text = lora::fuzz::AsString(data, size);
  if (lora::CheckJsonNesting(text, "fuzz.json", kMaxDepth).ok()) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_discarded() && JsonDepth(j) > kMaxDepth) std::abort();
  }
  (void)lora::ParseJsonDocument(text, "fuzz.json", kMaxDepth);
  (void)lora::CheckTomlNesting(text, "fuzz.toml", kMaxDepth);
  (void)lora::ParseJobSpecToml(text, "fuzz.toml");
  return 0;
}
