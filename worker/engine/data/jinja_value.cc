#include "worker/engine/data/jinja_value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace lora::jinja {

const Value* DictData::Find(absl::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k == key) return &v;
  }
  return nullptr;
}

void DictData::Set(const std::string& key, Value value) {
  for (auto& [k, v] : entries) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  entries.emplace_back(key, std::move(value));
}

absl::StatusOr<Value> Value::List(std::vector<Value> items, bool lazy) {
  int depth = 0;
  for (const Value& item : items) {
    // A namespace inside a container could be made to contain itself: a cycle that no walk
    // (or destructor) would survive. Chat templates never need it.
    if (item.is_namespace()) {
      return absl::InvalidArgumentError("a namespace cannot be stored in a list");
    }
    depth = std::max(depth, item.depth_);
  }
  if (depth + 1 > kMaxValueDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("values nest deeper than ", kMaxValueDepth, " levels"));
  }
  Value v = Make(Kind::kList);
  v.depth_ = depth + 1;
  v.lazy_ = lazy;
  v.list_ = std::make_shared<const std::vector<Value>>(std::move(items));
  return v;
}

absl::StatusOr<Value> Value::Dict(std::vector<std::pair<std::string, Value>> entries) {
  int depth = 0;
  auto data = std::make_shared<DictData>();
  for (auto& [k, item] : entries) {
    if (item.is_namespace()) {
      return absl::InvalidArgumentError("a namespace cannot be stored in a dict");
    }
    depth = std::max(depth, item.depth_);
    data->Set(k, std::move(item));
  }
  if (depth + 1 > kMaxValueDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("values nest deeper than ", kMaxValueDepth, " levels"));
  }
  Value v = Make(Kind::kDict);
  v.depth_ = depth + 1;
  v.dict_ = std::move(data);
  return v;
}

absl::StatusOr<Value> Value::Tuple(std::vector<Value> items, bool lazy) {
  LORA_ASSIGN_OR_RETURN(Value v, List(std::move(items), lazy));
  v.tuple_ = true;
  return v;
}

Value Value::Namespace() {
  Value v = Make(Kind::kNamespace);
  v.depth_ = 1;
  v.dict_ = std::make_shared<DictData>();
  return v;
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
    case Kind::kInt:
      return int_ != 0;
    case Kind::kFloat:
      return float_ != 0;
    case Kind::kString:
      return !text_.empty();
    case Kind::kList:
      return lazy_ || !list_->empty();  // a generator object is always true in Python
    case Kind::kDict:
      return !dict_->entries.empty();
    case Kind::kNamespace:
    case Kind::kCallable:
      return true;
  }
  return false;
}

const char* Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "undefined";
    case Kind::kNone:
      return "none";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "string";
    case Kind::kList:
      return lazy_ ? "generator" : "list";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "namespace";
    case Kind::kCallable:
      return "function";
  }
  return "?";
}

uint32_t DecodeAt(absl::string_view s, size_t i, size_t* length) {
  const auto c = static_cast<unsigned char>(s[i]);
  auto cont = [&](size_t k) {
    return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
  };
  auto byte = [&](size_t k) {
    return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k]) & 0x3F);
  };
  if (c < 0x80) {
    *length = 1;
    return c;
  }
  if ((c & 0xE0) == 0xC0 && c >= 0xC2 && cont(1)) {
    *length = 2;
    return ((c & 0x1Fu) << 6) | byte(1);
  }
  if ((c & 0xF0) == 0xE0 && cont(1) && cont(2)) {
    *length = 3;
    return ((c & 0x0Fu) << 12) | (byte(1) << 6) | byte(2);
  }
  if ((c & 0xF8) == 0xF0 && c <= 0xF4 && cont(1) && cont(2) && cont(3)) {
    *length = 4;
    return ((c & 0x07u) << 18) | (byte(1) << 12) | (byte(2) << 6) | byte(3);
  }
  *length = 1;  // an invalid byte stands for itself
  return 0xFFFD;
}

std::vector<size_t> CodePointOffsets(absl::string_view s) {
  std::vector<size_t> offsets;
  offsets.reserve(s.size() + 1);
  size_t i = 0;
  while (i < s.size()) {
    offsets.push_back(i);
    size_t n = 1;
    DecodeAt(s, i, &n);
    i += n;
  }
  offsets.push_back(s.size());
  return offsets;
}

bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string PyStrip(absl::string_view s, const std::string* chars, bool left, bool right) {
  std::vector<uint32_t> set;
  if (chars != nullptr) {
    for (size_t i = 0; i < chars->size();) {
      size_t n = 1;
      set.push_back(DecodeAt(*chars, i, &n));
      i += n;
    }
  }
  auto strip = [&](uint32_t cp) {
    return chars == nullptr ? IsPythonSpace(cp)
                            : std::find(set.begin(), set.end(), cp) != set.end();
  };
  const std::vector<size_t> off = CodePointOffsets(s);
  size_t b = 0, e = off.size() - 1;  // code point indexes
  size_t n = 0;
  if (left) {
    while (b < e && strip(DecodeAt(s, off[b], &n))) ++b;
  }
  if (right) {
    while (e > b && strip(DecodeAt(s, off[e - 1], &n))) --e;
  }
  return std::string(s.substr(off[b], off[e] - off[b]));
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // Shortest round-tripping digits, then Python's repr layout (fixed for 1e-4 <= |d| < 1e16).
  char buf[64];
  int precision = 1;
  for (; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*e", precision - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string sci = buf;
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci = sci.substr(1);
  }
  const size_t epos = sci.find('e');
  const int exponent = std::atoi(sci.c_str() + epos + 1);
  std::string digits;
  for (size_t i = 0; i < epos; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int decpt = exponent + 1;
  std::string out;
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out = "0." + std::string(-decpt, '0') + digits;
    } else if (decpt >= static_cast<int>(digits.size())) {
      out = digits + std::string(decpt - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += absl::StrFormat("e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  }
  return sign + out;
}

namespace {

void AppendStringRepr(absl::string_view s, std::string* out) {
  const bool has_single = s.find('\'') != absl::string_view::npos;
  const bool has_double = s.find('"') != absl::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  out->push_back(quote);
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    const uint32_t cp = DecodeAt(s, i, &n);
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out->push_back('\\');
      out->push_back(static_cast<char>(cp));
    } else if (cp == '\n') {
      *out += "\\n";
    } else if (cp == '\r') {
      *out += "\\r";
    } else if (cp == '\t') {
      *out += "\\t";
    } else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) {
      *out += absl::StrFormat("\\x%02x", cp);
    } else {
      out->append(s.data() + i, n);
    }
    i += n;
  }
  out->push_back(quote);
}

absl::Status AppendPy(const Value& v, std::string* out, bool repr) {
  using K = Value::Kind;
  switch (v.kind()) {
    case K::kUndefined:
      if (repr) *out += "Undefined";
      return absl::OkStatus();
    case K::kNone:
      *out += "None";
      return absl::OkStatus();
    case K::kBool:
      *out += v.bool_value() ? "True" : "False";
      return absl::OkStatus();
    case K::kInt:
      absl::StrAppend(out, v.int_value());
      return absl::OkStatus();
    case K::kFloat:
      *out += FloatRepr(v.float_value());
      return absl::OkStatus();
    case K::kString:
      if (repr) {
        AppendStringRepr(v.str(), out);
      } else {
        *out += v.str();
      }
      return absl::OkStatus();
    case K::kList: {
      if (v.lazy()) {
        return absl::InvalidArgumentError(
            "printing a generator (the result of selectattr, map, items, ...) is not supported; "
            "apply `| list` first");
      }
      out->push_back(v.tuple() ? '(' : '[');
      bool first = true;
      for (const Value& item : v.items()) {
        if (!first) *out += ", ";
        first = false;
        LORA_RETURN_IF_ERROR(AppendPy(item, out, true));
      }
      if (v.tuple() && v.items().size() == 1) out->push_back(',');
      out->push_back(v.tuple() ? ')' : ']');
      return absl::OkStatus();
    }
    case K::kDict:
    case K::kNamespace: {
      if (v.is_namespace()) *out += "<Namespace ";
      out->push_back('{');
      bool first = true;
      for (const auto& [k, item] : v.dict().entries) {
        if (!first) *out += ", ";
        first = false;
        AppendStringRepr(k, out);
        *out += ": ";
        LORA_RETURN_IF_ERROR(AppendPy(item, out, true));
      }
      out->push_back('}');
      if (v.is_namespace()) out->push_back('>');
      return absl::OkStatus();
    }
    case K::kCallable:
      return absl::InvalidArgumentError(
          absl::StrCat("printing the function '", v.str(), "' is not supported"));
  }
  return absl::OkStatus();
}

void AppendJsonString(absl::string_view s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    const uint32_t cp = DecodeAt(s, i, &n);
    switch (cp) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (cp < 0x20) {
          *out += absl::StrFormat("\\u%04x", cp);
        } else if (ensure_ascii && cp >= 0x7F) {
          if (cp >= 0x10000) {
            const uint32_t c = cp - 0x10000;
            *out += absl::StrFormat("\\u%04x\\u%04x", 0xD800 + (c >> 10), 0xDC00 + (c & 0x3FF));
          } else {
            *out += absl::StrFormat("\\u%04x", cp);
          }
        } else {
          out->append(s.data() + i, n);
        }
    }
    i += n;
  }
  out->push_back('"');
}

absl::Status AppendJson(const Value& v, const JsonOptions& o, int level, std::string* out) {
  using K = Value::Kind;
  const std::string item_sep = o.has_separators ? o.item_separator : (o.indent >= 0 ? "," : ", ");
  const std::string key_sep = o.has_separators ? o.key_separator : ": ";
  auto newline = [&](int lvl) {
    if (o.indent >= 0) {
      out->push_back('\n');
      out->append(static_cast<size_t>(o.indent) * lvl, ' ');
    }
  };
  switch (v.kind()) {
    case K::kNone:
      *out += "null";
      return absl::OkStatus();
    case K::kBool:
      *out += v.bool_value() ? "true" : "false";
      return absl::OkStatus();
    case K::kInt:
      absl::StrAppend(out, v.int_value());
      return absl::OkStatus();
    case K::kFloat: {
      const double d = v.float_value();
      if (std::isnan(d)) {
        *out += "NaN";
      } else if (std::isinf(d)) {
        *out += d > 0 ? "Infinity" : "-Infinity";
      } else {
        *out += FloatRepr(d);
      }
      return absl::OkStatus();
    }
    case K::kString:
      AppendJsonString(v.str(), o.ensure_ascii, out);
      return absl::OkStatus();
    case K::kList: {
      if (v.lazy()) {
        return absl::InvalidArgumentError("tojson: a generator is not JSON serializable");
      }
      if (v.items().empty()) {
        *out += "[]";
        return absl::OkStatus();
      }
      out->push_back('[');
      bool first = true;
      for (const Value& item : v.items()) {
        if (!first) *out += item_sep;
        first = false;
        newline(level + 1);
        LORA_RETURN_IF_ERROR(AppendJson(item, o, level + 1, out));
      }
      newline(level);
      out->push_back(']');
      return absl::OkStatus();
    }
    case K::kDict: {
      if (v.dict().entries.empty()) {
        *out += "{}";
        return absl::OkStatus();
      }
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& e : v.dict().entries) entries.push_back(&e);
      if (o.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto* a, const auto* b) { return a->first < b->first; });
      }
      out->push_back('{');
      bool first = true;
      for (const auto* e : entries) {
        if (!first) *out += item_sep;
        first = false;
        newline(level + 1);
        AppendJsonString(e->first, o.ensure_ascii, out);
        *out += key_sep;
        LORA_RETURN_IF_ERROR(AppendJson(e->second, o, level + 1, out));
      }
      newline(level);
      out->push_back('}');
      return absl::OkStatus();
    }
    case K::kUndefined:
    case K::kNamespace:
    case K::kCallable:
      return absl::InvalidArgumentError(
          absl::StrCat("tojson: a value of type ", v.TypeName(), " is not JSON serializable"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status AppendStr(const Value& v, std::string* out) { return AppendPy(v, out, false); }

absl::Status AppendRepr(const Value& v, std::string* out) { return AppendPy(v, out, true); }

absl::StatusOr<std::string> Str(const Value& v) {
  std::string out;
  LORA_RETURN_IF_ERROR(AppendStr(v, &out));
  return out;
}

absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& options) {
  std::string out;
  LORA_RETURN_IF_ERROR(AppendJson(v, options, 0, &out));
  return out;
}

bool Equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.kind() == K::kFloat || b.kind() == K::kFloat) return a.AsDouble() == b.AsDouble();
    return a.int_value() == b.int_value();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.str() == b.str();
    case K::kList: {
      if (a.lazy() || b.lazy()) return false;  // generators compare by identity
      if (a.tuple() != b.tuple()) return false;
      if (a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i) {
        if (!Equals(a.items()[i], b.items()[i])) return false;
      }
      return true;
    }
    case K::kDict: {
      if (a.dict().entries.size() != b.dict().entries.size()) return false;
      for (const auto& [k, v] : a.dict().entries) {
        const Value* other = b.dict().Find(k);
        if (other == nullptr || !Equals(v, *other)) return false;
      }
      return true;
    }
    case K::kNamespace:
      return &a.dict() == &b.dict();
    case K::kCallable:
      return a.str() == b.str() && a.macro() == b.macro();
    default:
      return false;
  }
}

absl::StatusOr<bool> Less(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.kind() == K::kFloat || b.kind() == K::kFloat) return a.AsDouble() < b.AsDouble();
    return a.int_value() < b.int_value();
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str();  // UTF-8 order = code point order
  if (a.is_list() && b.is_list() && !a.lazy() && !b.lazy() && a.tuple() == b.tuple()) {
    const auto& x = a.items();
    const auto& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (Equals(x[i], y[i])) continue;
      return Less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cannot order a ", a.TypeName(), " and a ", b.TypeName()));
}

}  // namespace lora::jinja
