#include "worker/engine/data/jsonl.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/nesting.h"

namespace lora {

absl::Status ForEachJsonLine(
    const std::string& path,
    const std::function<absl::Status(int64_t, const nlohmann::json&)>& fn) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open dataset file"));
  std::string text;
  int64_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (absl::StripAsciiWhitespace(text).empty()) continue;
    nlohmann::json j;
    absl::Status bounded = CheckJsonNesting(text, absl::StrCat(path, ":", line));
    if (!bounded.ok()) return bounded;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line, ": invalid JSON: ", e.what()));
    }
    absl::Status s = fn(line, j);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(path, ":", line, ": ", s.message()));
  }
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read error"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<int64_t>>> ReadTokenSequences(const std::string& path,
                                                                     int64_t vocab_size) {
  std::vector<std::vector<int64_t>> out;
  absl::Status s = ForEachJsonLine(path, [&](int64_t, const nlohmann::json& j) -> absl::Status {
    if (!j.is_object() || !j.contains("input_ids")) {
      return absl::InvalidArgumentError("expected an object with \"input_ids\"");
    }
    const nlohmann::json& ids = j["input_ids"];
    if (!ids.is_array()) return absl::InvalidArgumentError("input_ids: must be a list of integers");
    std::vector<int64_t> seq;
    seq.reserve(ids.size());
    for (const nlohmann::json& id : ids) {
      if (!id.is_number_integer())
        return absl::InvalidArgumentError("input_ids: must be a list of integers");
      int64_t v = id.get<int64_t>();
      if (v < 0 || v >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "input_ids: token ", v, " is outside the vocabulary [0, ", vocab_size, ")"));
      }
      seq.push_back(v);
    }
    out.push_back(std::move(seq));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

}  // namespace lora
