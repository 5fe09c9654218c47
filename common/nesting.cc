#include "common/nesting.h"

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

}  // namespace lora
