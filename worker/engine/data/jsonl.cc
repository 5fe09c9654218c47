#include "worker/engine/data/jsonl.h"

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/nesting.h"
#include "common/status_macros.h"

namespace lora {

absl::Status ForEachJsonLine(
    const std::string& path,
    const std::function<absl::Status(int64_t, const nlohmann::json&)>& fn) {
  // Only regular files: a device (/dev/zero) or a FIFO would be read without end.
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open dataset file"));
  }
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (file == nullptr) return absl::NotFoundError(absl::StrCat(path, ": cannot open dataset file"));
  std::string text, block(1 << 20, '\0');
  int64_t line = 0;
  auto handle = [&]() -> absl::Status {
    ++line;
    if (absl::StripAsciiWhitespace(text).empty()) return absl::OkStatus();
    const std::string where = absl::StrCat(path, ":", line);
    LORA_ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonDocument(text, where));
    absl::Status s = fn(line, j);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));
    return absl::OkStatus();
  };
  while (true) {
    const size_t got = std::fread(block.data(), 1, block.size(), file.get());
    if (got == 0) break;
    size_t begin = 0;
    for (size_t i = 0; i < got; ++i) {
      if (block[i] != '\n') continue;
      text.append(block, begin, i - begin);
      LORA_RETURN_IF_ERROR(handle());
      text.clear();
      begin = i + 1;
    }
    text.append(block, begin, got - begin);
    if (text.size() > kMaxJsonLineBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line + 1, ": a line longer than ", kMaxJsonLineBytes, " bytes"));
    }
  }
  if (std::ferror(file.get())) return absl::InternalError(absl::StrCat(path, ": read error"));
  if (!text.empty()) LORA_RETURN_IF_ERROR(handle());
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
