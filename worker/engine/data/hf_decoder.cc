#include "worker/engine/data/hf_decoder.h"

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "worker/engine/data/hf_pretokenizer.h"
#include "worker/engine/data/unicode.h"

namespace lora::hf {
namespace {

using json = nlohmann::json;

absl::Status Invalid(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("decoder: ", why));
}

// The string field `key`, or an error naming it.
absl::StatusOr<std::string> StringField(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) return Invalid(absl::StrCat(key, " must be a string"));
  return it->get<std::string>();
}

bool IsOneChar(absl::string_view s) {
  if (s.empty()) return false;
  size_t len;
  return unicode::DecodeUtf8(s.data(), s.size(), &len) != unicode::kInvalidCodePoint &&
         len == s.size();
}

// Splits valid UTF-8 into characters (Strip counts characters, not bytes).
std::vector<absl::string_view> Chars(absl::string_view s) {
  std::vector<absl::string_view> out;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    unicode::DecodeUtf8(s.data() + i, s.size() - i, &len);
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

int ParseByteToken(absl::string_view t) {  // "<0xAB>" -> 0xAB, else -1
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (char c : t.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      v |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      v |= c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return v;
}

}  // namespace

absl::Status Decoder::AddSteps(const json& d, int depth, std::vector<Step>* steps) {
  if (depth > 8) return Invalid("Sequence nested too deeply");
  if (!d.is_object()) return Invalid("must be an object or null");
  auto type_it = d.find("type");
  if (type_it == d.end() || !type_it->is_string()) return Invalid("missing \"type\"");
  const std::string& type = type_it->get_ref<const std::string&>();
  Step step;
  if (type == "Sequence") {
    auto list = d.find("decoders");
    if (list == d.end() || !list->is_array()) return Invalid("Sequence needs a decoders array");
    for (const json& child : *list) {
      if (auto s = AddSteps(child, depth + 1, steps); !s.ok()) return s;
    }
    return absl::OkStatus();
  } else if (type == "ByteLevel") {
    step.kind = Step::kByteLevel;
  } else if (type == "ByteFallback") {
    step.kind = Step::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = Step::kFuse;
  } else if (type == "Replace") {
    step.kind = Step::kReplace;
    auto pattern = d.find("pattern");
    if (pattern == d.end() || !pattern->is_object() || !pattern->contains("String") ||
        !(*pattern)["String"].is_string()) {
      return Invalid("Replace supports only {\"String\": ...} patterns");
    }
    step.from = (*pattern)["String"].get<std::string>();
    if (step.from.empty()) return Invalid("Replace pattern must not be empty");
    auto content = StringField(d, "content");
    if (!content.ok()) return content.status();
    step.to = *content;
  } else if (type == "Strip") {
    step.kind = Step::kStrip;
    auto content = StringField(d, "content");
    if (!content.ok()) return content.status();
    if (!IsOneChar(*content)) return Invalid("Strip content must be one character");
    step.strip = *content;
    for (auto [key, out] : {std::pair<const char*, int64_t*>{"start", &step.start},
                            std::pair<const char*, int64_t*>{"stop", &step.stop}}) {
      auto it = d.find(key);
      if (it == d.end() || !it->is_number_unsigned())
        return Invalid(absl::StrCat("Strip ", key, " must be a non-negative integer"));
      *out = static_cast<int64_t>(std::min<uint64_t>(it->get<uint64_t>(), 1 << 20));
    }
  } else if (type == "Metaspace") {
    step.kind = Step::kMetaspace;
    auto replacement = StringField(d, "replacement");
    if (!replacement.ok()) return replacement.status();
    if (!IsOneChar(*replacement)) return Invalid("Metaspace replacement must be one character");
    step.from = *replacement;
    step.drop_first = true;
    if (auto it = d.find("prepend_scheme"); it != d.end() && it->is_string()) {
      step.drop_first = it->get_ref<const std::string&>() != "never";
    } else if (auto legacy = d.find("add_prefix_space");
               legacy != d.end() && legacy->is_boolean()) {
      step.drop_first = legacy->get<bool>();
    }
  } else {
    return Invalid(absl::StrCat(
        "type ",
        (type == "WordPiece" || type == "BPEDecoder" || type == "CTC") ? type : "(unknown)",
        " is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, "
        "Strip, Sequence)"));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

absl::StatusOr<Decoder> Decoder::FromJson(const json& d) {
  Decoder decoder;
  if (d.is_null()) {
    decoder.join_with_spaces_ = true;
    return decoder;
  }
  if (auto s = AddSteps(d, 0, &decoder.steps_); !s.ok()) return s;
  return decoder;
}

std::string Decoder::Decode(std::vector<std::string> tokens) const {
  if (join_with_spaces_) return absl::StrJoin(tokens, " ");
  std::string bytes;
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::kByteLevel: {
        // Tokens made only of alphabet characters become their bytes; others pass as they are.
        std::string all, one;
        for (const std::string& t : tokens) {
          if (ByteLevelDecode(t, &one)) {
            all += one;
          } else {
            all += t;
          }
        }
        tokens.assign(1, unicode::Utf8Lossy(all));
        break;
      }
      case Step::kReplace:
        for (std::string& t : tokens) t = absl::StrReplaceAll(t, {{step.from, step.to}});
        break;
      case Step::kByteFallback: {
        std::vector<std::string> out;
        bytes.clear();
        auto flush = [&] {
          if (bytes.empty()) return;
          if (unicode::IsValidUtf8(bytes)) {
            out.push_back(bytes);
          } else {
            for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\xEF\xBF\xBD");
          }
          bytes.clear();
        };
        for (std::string& t : tokens) {
          const int b = ParseByteToken(t);
          if (b >= 0) {
            bytes.push_back(static_cast<char>(b));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case Step::kFuse:
        tokens.assign(1, absl::StrJoin(tokens, ""));
        break;
      case Step::kStrip:
        for (std::string& t : tokens) {
          std::vector<absl::string_view> chars = Chars(t);
          size_t begin = 0, end = chars.size();
          while (begin < static_cast<size_t>(step.start) && begin < end &&
                 chars[begin] == step.strip) {
            ++begin;
          }
          for (int64_t i = 0; i < step.stop && end > begin && chars[end - 1] == step.strip; ++i)
            --end;
          std::string out;
          for (size_t i = begin; i < end; ++i) out.append(chars[i].data(), chars[i].size());
          t = std::move(out);
        }
        break;
      case Step::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          const bool drop = i == 0 && step.drop_first;
          tokens[i] = absl::StrReplaceAll(tokens[i], {{step.from, drop ? "" : " "}});
        }
        break;
    }
  }
  return absl::StrJoin(tokens, "");
}

}  // namespace lora::hf
