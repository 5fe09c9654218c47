// TOML <-> JobSpec by protobuf reflection.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/job_spec/job_spec.h"
#include "common/nesting.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"
#include "toml.hpp"

namespace lora {
namespace {

namespace pb = google::protobuf;
using lora::v1::JobSpec;

constexpr char kRegexSuffix[] = "_regex";

struct ParseContext {
  std::string source;
  ParsedJobSpec* out;
};

int LineOf(const toml::value& v) { return static_cast<int>(v.location().line()); }

absl::Status KeyError(const ParseContext& ctx, const toml::value& v, const std::string& path,
                      const std::string& rule) {
  return absl::InvalidArgumentError(
      absl::StrCat(ctx.source, ":", LineOf(v), ": ", path, ": ", rule));
}

const char* TomlTypeName(const toml::value& v) {
  if (v.is_integer()) return "an integer";
  if (v.is_floating()) return "a float";
  if (v.is_boolean()) return "a boolean";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  if (v.is_table()) return "a table";
  return "a date/time";
}

std::string EnumPrefix(const pb::EnumDescriptor* e) {
  // JobKind -> "JOB_KIND_"
  std::string out;
  for (char c : e->name()) {
    if (absl::ascii_isupper(c) && !out.empty()) out += '_';
    out += absl::ascii_toupper(c);
  }
  return out + "_";
}

// Sets (or appends, for repeated fields) one scalar from a TOML value.
absl::Status SetScalar(const ParseContext& ctx, const toml::value& v, pb::Message* msg,
                       const pb::FieldDescriptor* f, const std::string& path) {
  const pb::Reflection* r = msg->GetReflection();
  const bool rep = f->is_repeated();
  auto type_error = [&](const char* expected) {
    return KeyError(ctx, v, path, absl::StrCat("expected ", expected, ", got ", TomlTypeName(v)));
  };
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
    case pb::FieldDescriptor::CPPTYPE_INT64:
    case pb::FieldDescriptor::CPPTYPE_UINT32:
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      if (!v.is_integer()) return type_error("an integer");
      const int64_t x = v.as_integer();
      const auto t = f->cpp_type();
      if ((t == pb::FieldDescriptor::CPPTYPE_INT32 &&
           (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max())) ||
          (t == pb::FieldDescriptor::CPPTYPE_UINT32 &&
           (x < 0 || x > std::numeric_limits<uint32_t>::max())) ||
          (t == pb::FieldDescriptor::CPPTYPE_UINT64 && x < 0)) {
        return KeyError(ctx, v, path, absl::StrCat("value ", x, " is out of range"));
      }
      if (t == pb::FieldDescriptor::CPPTYPE_INT32)
        rep ? r->AddInt32(msg, f, static_cast<int32_t>(x))
            : r->SetInt32(msg, f, static_cast<int32_t>(x));
      if (t == pb::FieldDescriptor::CPPTYPE_INT64)
        rep ? r->AddInt64(msg, f, x) : r->SetInt64(msg, f, x);
      if (t == pb::FieldDescriptor::CPPTYPE_UINT32)
        rep ? r->AddUInt32(msg, f, static_cast<uint32_t>(x))
            : r->SetUInt32(msg, f, static_cast<uint32_t>(x));
      if (t == pb::FieldDescriptor::CPPTYPE_UINT64)
        rep ? r->AddUInt64(msg, f, static_cast<uint64_t>(x))
            : r->SetUInt64(msg, f, static_cast<uint64_t>(x));
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
    case pb::FieldDescriptor::CPPTYPE_FLOAT: {
      double x;
      if (v.is_floating())
        x = v.as_floating();
      else if (v.is_integer())
        x = static_cast<double>(v.as_integer());
      else
        return type_error("a number");
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_DOUBLE)
        rep ? r->AddDouble(msg, f, x) : r->SetDouble(msg, f, x);
      else
        rep ? r->AddFloat(msg, f, static_cast<float>(x))
            : r->SetFloat(msg, f, static_cast<float>(x));
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      if (!v.is_boolean()) return type_error("true or false");
      rep ? r->AddBool(msg, f, v.as_boolean()) : r->SetBool(msg, f, v.as_boolean());
      return absl::OkStatus();
    case pb::FieldDescriptor::CPPTYPE_STRING:
      if (!v.is_string()) return type_error("a string");
      rep ? r->AddString(msg, f, v.as_string().str) : r->SetString(msg, f, v.as_string().str);
      return absl::OkStatus();
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      if (!v.is_string()) return type_error("a string");
      const std::string name = v.as_string().str;
      const pb::EnumDescriptor* e = f->enum_type();
      const pb::EnumValueDescriptor* ev =
          e->FindValueByName(EnumPrefix(e) + absl::AsciiStrToUpper(name));
      if (ev == nullptr || ev->number() == 0) {
        std::vector<std::string> allowed;
        for (int i = 1; i < e->value_count(); ++i) {
          allowed.push_back(
              absl::AsciiStrToLower(e->value(i)->name().substr(EnumPrefix(e).size())));
        }
        return KeyError(ctx, v, path,
                        absl::StrCat("'", name, "' is not one of ", absl::StrJoin(allowed, ", ")));
      }
      rep ? r->AddEnum(msg, f, ev) : r->SetEnum(msg, f, ev);
      return absl::OkStatus();
    }
    default:
      return KeyError(ctx, v, path, "unsupported field type");
  }
}

absl::Status SetField(const ParseContext& ctx, const toml::value& v, pb::Message* section,
                      const pb::FieldDescriptor* f, const std::string& path) {
  const pb::Reflection* r = section->GetReflection();
  ctx.out->lines[path] = LineOf(v);
  if (f->is_map()) {
    if (!v.is_table())
      return KeyError(ctx, v, path, absl::StrCat("expected a table, got ", TomlTypeName(v)));
    r->ClearField(section, f);
    std::vector<std::string> keys;
    for (const auto& kv : v.as_table()) keys.push_back(kv.first);
    std::sort(keys.begin(), keys.end());
    for (const std::string& key : keys) {
      pb::Message* entry = r->AddMessage(section, f);
      const pb::FieldDescriptor* kf = entry->GetDescriptor()->FindFieldByName("key");
      const pb::FieldDescriptor* vf = entry->GetDescriptor()->FindFieldByName("value");
      entry->GetReflection()->SetString(entry, kf, key);
      LORA_RETURN_IF_ERROR(
          SetScalar(ctx, v.as_table().at(key), entry, vf, absl::StrCat(path, ".", key)));
    }
    return absl::OkStatus();
  }
  if (f->is_repeated()) {
    if (v.is_string() && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
      // PEFT convention: a string instead of a list is a full-match regex.
      const pb::FieldDescriptor* regex =
          section->GetDescriptor()->FindFieldByName(f->name() + kRegexSuffix);
      if (regex != nullptr) {
        r->ClearField(section, f);
        r->SetString(section, regex, v.as_string().str);
        return absl::OkStatus();
      }
    }
    if (!v.is_array())
      return KeyError(ctx, v, path, absl::StrCat("expected an array, got ", TomlTypeName(v)));
    r->ClearField(section, f);
    const auto& arr = v.as_array();
    for (size_t i = 0; i < arr.size(); ++i) {
      LORA_RETURN_IF_ERROR(SetScalar(ctx, arr[i], section, f, absl::StrCat(path, "[", i, "]")));
    }
    return absl::OkStatus();
  }
  if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE)
    return KeyError(ctx, v, path, "unexpected nested table");
  return SetScalar(ctx, v, section, f, path);
}

std::vector<std::string> SortedKeys(const toml::value& table) {
  std::vector<std::string> keys;
  for (const auto& kv : table.as_table()) keys.push_back(kv.first);
  std::sort(keys.begin(), keys.end());
  return keys;
}

std::vector<std::string> FieldNames(const pb::Descriptor* d) {
  std::vector<std::string> names;
  for (int i = 0; i < d->field_count(); ++i) names.push_back(d->field(i)->name());
  return names;
}

absl::Status FillSpec(const ParseContext& ctx, const toml::value& root, JobSpec* spec) {
  const pb::Descriptor* d = spec->GetDescriptor();
  const pb::Reflection* r = spec->GetReflection();
  for (const std::string& section_name : SortedKeys(root)) {
    const toml::value& section_value = root.as_table().at(section_name);
    const pb::FieldDescriptor* sf = d->FindFieldByName(section_name);
    if (sf == nullptr || sf->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      return KeyError(ctx, section_value, section_name,
                      absl::StrCat("unknown section; expected one of [",
                                   absl::StrJoin(FieldNames(d), "], ["), "]"));
    }
    if (!section_value.is_table()) {
      return KeyError(ctx, section_value, section_name,
                      absl::StrCat("expected a table, got ", TomlTypeName(section_value)));
    }
    ctx.out->lines[section_name] = LineOf(section_value);
    pb::Message* section = r->MutableMessage(spec, sf);
    for (const std::string& key : SortedKeys(section_value)) {
      const toml::value& v = section_value.as_table().at(key);
      const std::string path = absl::StrCat(section_name, ".", key);
      const pb::FieldDescriptor* f = section->GetDescriptor()->FindFieldByName(key);
      if (f == nullptr) {
        return KeyError(ctx, v, path,
                        absl::StrCat("unknown key; [", section_name, "] takes ",
                                     absl::StrJoin(FieldNames(section->GetDescriptor()), ", ")));
      }
      LORA_RETURN_IF_ERROR(SetField(ctx, v, section, f, path));
    }
  }
  return absl::OkStatus();
}

std::string TomlString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string TomlDouble(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", x);
  // Shortest representation that reads back to the same double.
  for (int precision = 1; precision <= 17; ++precision) {
    char shorter[40];
    std::snprintf(shorter, sizeof(shorter), "%.*g", precision, x);
    if (std::strtod(shorter, nullptr) == x) {
      std::snprintf(buf, sizeof(buf), "%s", shorter);
      break;
    }
  }
  std::string s = buf;
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string ScalarToToml(const pb::Message& msg, const pb::FieldDescriptor* f, int index) {
  const pb::Reflection* r = msg.GetReflection();
  const bool rep = index >= 0;
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(rep ? r->GetRepeatedInt32(msg, f, index) : r->GetInt32(msg, f));
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return absl::StrCat(rep ? r->GetRepeatedInt64(msg, f, index) : r->GetInt64(msg, f));
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      return absl::StrCat(rep ? r->GetRepeatedUInt32(msg, f, index) : r->GetUInt32(msg, f));
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      return absl::StrCat(rep ? r->GetRepeatedUInt64(msg, f, index) : r->GetUInt64(msg, f));
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      return TomlDouble(rep ? r->GetRepeatedDouble(msg, f, index) : r->GetDouble(msg, f));
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      return TomlDouble(rep ? r->GetRepeatedFloat(msg, f, index) : r->GetFloat(msg, f));
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      return (rep ? r->GetRepeatedBool(msg, f, index) : r->GetBool(msg, f)) ? "true" : "false";
    case pb::FieldDescriptor::CPPTYPE_STRING:
      return TomlString(rep ? r->GetRepeatedString(msg, f, index) : r->GetString(msg, f));
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* ev =
          rep ? r->GetRepeatedEnum(msg, f, index) : r->GetEnum(msg, f);
      return TomlString(
          absl::AsciiStrToLower(ev->name().substr(EnumPrefix(f->enum_type()).size())));
    }
    default:
      return "\"?\"";
  }
}

std::string TomlKey(const std::string& key) {
  for (char c : key) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '-') return TomlString(key);
  }
  return key.empty() ? "\"\"" : key;
}

// Offset of the first byte that is not well-formed UTF-8 (Unicode table 3-7), or -1.
int64_t FirstInvalidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = byte(i);
    size_t n = 1;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else if (c >= 0x80) {
      return static_cast<int64_t>(i);
    }
    if (n > s.size() - i) return static_cast<int64_t>(i);
    for (size_t k = 1; k < n; ++k) {
      const unsigned char min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
      if (byte(i + k) < min || byte(i + k) > max) return static_cast<int64_t>(i);
    }
    i += n;
  }
  return -1;
}

}  // namespace

absl::StatusOr<ParsedJobSpec> ParseJobSpecToml(const std::string& text, const std::string& source) {
  ParsedJobSpec parsed;
  toml::value root;
  // toml11 parses recursively: bound the nesting before it sees the document.
  LORA_RETURN_IF_ERROR(CheckTomlNesting(text, source));
  // TOML is UTF-8 only, and toml11 3.7 overreads its buffer while reporting an invalid
  // sequence inside a string (tests/fuzz/regressions/job_spec_toml/): refuse it first.
  if (int64_t bad = FirstInvalidUtf8(text); bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": invalid TOML: not UTF-8 (byte ", bad, ")"));
  }
  try {
    std::istringstream in(text);
    root = toml::parse(in, source);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid TOML: ", e.what()));
  }
  if (!root.is_table())
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a TOML document"));
  ParseContext ctx{source, &parsed};
  LORA_RETURN_IF_ERROR(FillSpec(ctx, root, &parsed.spec));
  return parsed;
}

absl::StatusOr<ParsedJobSpec> ReadJobSpecFile(const std::string& path) {
  LORA_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseJobSpecToml(text, path);
}

std::string JobSpecToToml(const JobSpec& spec) {
  std::string out;
  const pb::Descriptor* d = spec.GetDescriptor();
  for (int s = 0; s < d->field_count(); ++s) {
    const pb::FieldDescriptor* sf = d->field(s);
    if (!spec.GetReflection()->HasField(spec, sf)) continue;
    const pb::Message& section = spec.GetReflection()->GetMessage(spec, sf);
    const pb::Reflection* r = section.GetReflection();
    std::string body;
    for (int i = 0; i < section.GetDescriptor()->field_count(); ++i) {
      const pb::FieldDescriptor* f = section.GetDescriptor()->field(i);
      std::string key = f->name();
      if (absl::EndsWith(key, kRegexSuffix)) {
        const std::string base = key.substr(0, key.size() - strlen(kRegexSuffix));
        const pb::FieldDescriptor* list = section.GetDescriptor()->FindFieldByName(base);
        if (list != nullptr && list->is_repeated()) {
          if (!r->GetString(section, f).empty())
            absl::StrAppend(&body, base, " = ", ScalarToToml(section, f, -1), "\n");
          continue;
        }
      }
      if (f->is_map()) {
        const int n = r->FieldSize(section, f);
        if (n == 0) continue;
        std::vector<std::pair<std::string, std::string>> entries;
        for (int j = 0; j < n; ++j) {
          const pb::Message& e = r->GetRepeatedMessage(section, f, j);
          const pb::FieldDescriptor* kf = e.GetDescriptor()->FindFieldByName("key");
          const pb::FieldDescriptor* vf = e.GetDescriptor()->FindFieldByName("value");
          entries.emplace_back(e.GetReflection()->GetString(e, kf), ScalarToToml(e, vf, -1));
        }
        std::sort(entries.begin(), entries.end());
        std::vector<std::string> parts;
        for (const auto& [k, v] : entries) parts.push_back(absl::StrCat(TomlKey(k), " = ", v));
        absl::StrAppend(&body, key, " = { ", absl::StrJoin(parts, ", "), " }\n");
      } else if (f->is_repeated()) {
        const int n = r->FieldSize(section, f);
        if (n == 0) continue;
        std::vector<std::string> items;
        for (int j = 0; j < n; ++j) items.push_back(ScalarToToml(section, f, j));
        absl::StrAppend(&body, key, " = [", absl::StrJoin(items, ", "), "]\n");
      } else if (r->HasField(section, f)) {
        absl::StrAppend(&body, key, " = ", ScalarToToml(section, f, -1), "\n");
      }
    }
    absl::StrAppend(&out, out.empty() ? "" : "\n", "[", sf->name(), "]\n", body);
  }
  return out;
}

absl::Status ApplyOverride(const std::string& assignment, JobSpec* spec) {
  const size_t eq = assignment.find('=');
  const size_t dot = assignment.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq) {
    return absl::InvalidArgumentError(
        absl::StrCat("--set ", assignment, ": expected section.key=value"));
  }
  const std::string section = std::string(absl::StripAsciiWhitespace(assignment.substr(0, dot)));
  const std::string key =
      std::string(absl::StripAsciiWhitespace(assignment.substr(dot + 1, eq - dot - 1)));
  std::string value = std::string(absl::StripAsciiWhitespace(assignment.substr(eq + 1)));
  // Bare words are strings: --set training.mixed_precision=none. A string field takes any
  // unquoted value as it is (--set parallelism.pipeline_parallel_schedule=1F1B).
  const pb::FieldDescriptor* target = nullptr;
  if (const pb::FieldDescriptor* sf = spec->GetDescriptor()->FindFieldByName(section);
      sf != nullptr && sf->message_type() != nullptr) {
    target = sf->message_type()->FindFieldByName(key);
  }
  const bool string_field = target != nullptr && !target->is_repeated() &&
                            (target->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING ||
                             target->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM);
  const bool quoted = !value.empty() && (value[0] == '"' || value[0] == '\'');
  const bool bare =
      !value.empty() && !quoted &&
      (string_field || absl::ascii_isalpha(value[0]) || value[0] == '/' || value[0] == '.') &&
      value != "true" && value != "false" && value != "inf" && value != "nan";
  if (bare || (string_field && value.empty())) value = TomlString(value);  // "key=" clears
  auto parsed = ParseJobSpecToml(absl::StrCat("[", section, "]\n", key, " = ", value, "\n"),
                                 "--set " + assignment);
  if (!parsed.ok()) return parsed.status();
  const pb::FieldDescriptor* sf = spec->GetDescriptor()->FindFieldByName(section);
  pb::Message* dst = spec->GetReflection()->MutableMessage(spec, sf);
  pb::Message* src = parsed->spec.GetReflection()->MutableMessage(&parsed->spec, sf);
  // Swap every field the override touched (the key, and its _regex sibling or list).
  std::vector<const pb::FieldDescriptor*> fields;
  for (const std::string& name : {key, key + kRegexSuffix}) {
    if (const pb::FieldDescriptor* f = dst->GetDescriptor()->FindFieldByName(name))
      fields.push_back(f);
  }
  dst->GetReflection()->SwapFields(dst, src, fields);
  return absl::OkStatus();
}

}  // namespace lora
