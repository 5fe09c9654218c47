// Reads the JSON-lines event files that lora-train writes (events.jsonl).
#ifndef LORA_TESTS_INTEGRATION_EVENTS_FILE_H_
#define LORA_TESTS_INTEGRATION_EVENTS_FILE_H_

#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace lora::testing {

// The events of `type` in file order; unparsable lines are skipped.
inline std::vector<nlohmann::json> Events(const std::string& path, const std::string& type) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("event", "") == type) out.push_back(j);
  }
  return out;
}

}  // namespace lora::testing

#endif  // LORA_TESTS_INTEGRATION_EVENTS_FILE_H_
