#include "common/nesting.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace lora {
namespace {

absl::Status TooDeep(absl::string_view source, int max_depth) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": nested deeper than ", max_depth, " levels"));
}

}  // namespace

absl::Status CheckJsonNesting(absl::string_view text, absl::string_view source, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return TooDeep(source, max_depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTomlNesting(absl::string_view text, absl::string_view source, int max_depth) {
  int depth = 0;
  size_t i = 0;
  const size_t n = text.size();
  auto starts = [&](absl::string_view s) { return text.substr(i, s.size()) == s; };
  while (i < n) {
    const char c = text[i];
    if (c == '#') {  // comment to the end of the line
      while (i < n && text[i] != '\n') ++i;
    } else if (starts("\"\"\"") || starts("'''")) {  // multi-line strings
      const absl::string_view close = text.substr(i, 3);
      const bool basic = close[0] == '"';
      i += 3;
      while (i < n && !starts(close)) i += (basic && text[i] == '\\') ? 2 : 1;
      i += 3;
      continue;
    } else if (c == '"' || c == '\'') {
      ++i;
      while (i < n && text[i] != c && text[i] != '\n') i += (c == '"' && text[i] == '\\') ? 2 : 1;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return TooDeep(source, max_depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
    ++i;
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> ParseJsonDocument(absl::string_view text, absl::string_view source,
                                                 int max_depth) {
  absl::Status bounded = CheckJsonNesting(text, source, max_depth);
  if (!bounded.ok()) return bounded;
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() quotes the offending text; report only where it is.
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": invalid JSON near byte ", e.byte, " of ", text.size()));
  } catch (const nlohmann::json::out_of_range&) {
    // A number beyond double's range ("1e999") throws this, not parse_error.
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: number out of range"));
  }
}

absl::StatusOr<nlohmann::json> ReadJsonDocument(const std::string& path, uint64_t max_bytes,
                                                int max_depth) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot read its size"));
  if (size > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", size, " bytes, more than the ", max_bytes, " allowed"));
  }
  std::ifstream in(path, std::ios::binary);
  std::string text(size, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(size)))
    return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return ParseJsonDocument(text, path, max_depth);
}

}  // namespace lora
