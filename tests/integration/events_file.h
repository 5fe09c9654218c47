// Reads what lora-train writes for its readers: the events file (events.jsonl, one
// lora.engine.v1.EngineEvent per line) and summary.json (a lora.engine.v1.Summary), both
// through the same strict parsers lora-worker and lorad use, so a field the engine misnames
// fails the test instead of reading as 0.
//
//   for (const auto& e : Events(run + "/events.jsonl", "step")) loss[e.step().step()] = ...;
//   EXPECT_EQ(ReadSummary(run + "/summary.json").steps(), 40);
//
// A complete line that does not parse is a test failure; a last line without its newline is
// still being written (tests poll running engines) and is left for the next read.
#ifndef LORA_TESTS_INTEGRATION_EVENTS_FILE_H_
#define LORA_TESTS_INTEGRATION_EVENTS_FILE_H_

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/engine_events.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "lora/engine/v1/events.pb.h"

namespace lora::testing {

// The events of `kind` ("step", "checkpoint", ...; "" for all) in file order.
inline std::vector<lora::engine::v1::EngineEvent> Events(const std::string& path,
                                                         const std::string& kind) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const std::string all = text.str();
  std::vector<lora::engine::v1::EngineEvent> out;
  for (size_t begin = 0, end; (end = all.find('\n', begin)) != std::string::npos; begin = end + 1) {
    auto event = ParseEngineEvent(all.substr(begin, end - begin));
    if (!event.ok()) {
      ADD_FAILURE() << path << ": " << event.status();
      continue;
    }
    if (kind.empty() || EngineEventKind(*event) == kind) out.push_back(*std::move(event));
  }
  return out;
}

// summary.json, strictly (an empty Summary and a test failure when it does not parse).
inline lora::engine::v1::Summary ReadSummary(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  lora::engine::v1::Summary summary;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(text.str(), &summary, options);
  EXPECT_TRUE(status.ok()) << path << ": " << status.ToString();
  return summary;
}

}  // namespace lora::testing

#endif  // LORA_TESTS_INTEGRATION_EVENTS_FILE_H_
