// Values of the Jinja2 subset that chat templates use, with Python's semantics where a template
// can observe them (str(), repr(), ==, <, truthiness, json.dumps as transformers calls it).
//
//   Value v = Value::List({Value::String("a"), Value::Int(1)});
//   std::string s;
//   LORA_RETURN_IF_ERROR(AppendStr(v, &s));   // "['a', 1]", as Python's str() prints it
//
// Invariants: lists and dicts are immutable once built (transformers renders in an
// ImmutableSandboxedEnvironment) and shared by pointer; only a namespace is mutable. A value's
// nesting depth is recorded when it is built so that no recursive walk (printing, comparing,
// destroying) can exceed kMaxValueDepth. Strings are UTF-8 bytes; lengths, indexes and slices
// count code points as Python does, and invalid bytes count as one code point each.
#ifndef LORA_WORKER_ENGINE_DATA_JINJA_VALUE_H_
#define LORA_WORKER_ENGINE_DATA_JINJA_VALUE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lora::jinja {

inline constexpr int kMaxValueDepth = 64;

struct Stmt;  // a macro definition (jinja_ast.h)
class Value;

struct DictData {
  std::vector<std::pair<std::string, Value>> entries;  // insertion order, as Python's dict

  const Value* Find(absl::string_view key) const;
  void Set(const std::string& key, Value value);
};

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable
  };

  Value() = default;
  static Value Undefined(std::string hint = "") {
    Value v;
    v.text_ = std::move(hint);
    return v;
  }
  static Value None() { return Make(Kind::kNone); }
  static Value Bool(bool b) {
    Value v = Make(Kind::kBool);
    v.int_ = b ? 1 : 0;
    return v;
  }
  static Value Int(int64_t i) {
    Value v = Make(Kind::kInt);
    v.int_ = i;
    return v;
  }
  static Value Float(double f) {
    Value v = Make(Kind::kFloat);
    v.float_ = f;
    return v;
  }
  static Value String(std::string s) {
    Value v = Make(Kind::kString);
    v.text_ = std::move(s);
    return v;
  }
  // Fails when the result would nest deeper than kMaxValueDepth. `lazy` marks what Jinja
  // returns as a generator (selectattr, map, items, ...): iterable, but with no length or index.
  static absl::StatusOr<Value> List(std::vector<Value> items, bool lazy = false);
  // A Python tuple: a list that prints as (a, b) and is never equal to a list.
  static absl::StatusOr<Value> Tuple(std::vector<Value> items, bool lazy = false);
  static absl::StatusOr<Value> Dict(std::vector<std::pair<std::string, Value>> entries);
  static Value Namespace();
  // A builtin global (`name`, macro == nullptr) or a macro.
  static Value Callable(std::string name, const Stmt* macro) {
    Value v = Make(Kind::kCallable);
    v.text_ = std::move(name);
    v.macro_ = macro;
    return v;
  }

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_number() const {
    return kind_ == Kind::kBool || kind_ == Kind::kInt || kind_ == Kind::kFloat;
  }
  bool lazy() const { return lazy_; }
  bool tuple() const { return tuple_; }
  int depth() const { return depth_; }

  bool bool_value() const { return int_ != 0; }
  int64_t int_value() const { return int_; }
  double float_value() const { return float_; }
  double AsDouble() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& str() const { return text_; }  // string, undefined hint, callable name
  const std::vector<Value>& items() const { return *list_; }
  const DictData& dict() const { return *dict_; }
  DictData& mutable_namespace() const { return *dict_; }
  const Stmt* macro() const { return macro_; }

  bool Truthy() const;
  const char* TypeName() const;

 private:
  static Value Make(Kind k) {
    Value v;
    v.kind_ = k;
    return v;
  }

  Kind kind_ = Kind::kUndefined;
  bool lazy_ = false;
  bool tuple_ = false;
  int depth_ = 0;
  int64_t int_ = 0;
  double float_ = 0;
  std::string text_;
  std::shared_ptr<const std::vector<Value>> list_;
  std::shared_ptr<DictData> dict_;
  const Stmt* macro_ = nullptr;
};

// Python's str(v) appended to `out`; Undefined prints as "" (Jinja's default Undefined).
absl::Status AppendStr(const Value& v, std::string* out);
absl::StatusOr<std::string> Str(const Value& v);
// Python's repr(v).
absl::Status AppendRepr(const Value& v, std::string* out);
std::string FloatRepr(double d);

// json.dumps(v, ensure_ascii, indent, separators, sort_keys) as transformers' `tojson` filter
// calls it. indent < 0 means None.
struct JsonOptions {
  bool ensure_ascii = false;
  int indent = -1;
  bool has_separators = false;
  std::string item_separator;
  std::string key_separator;
  bool sort_keys = false;
};
absl::StatusOr<std::string> ToJson(const Value& v, const JsonOptions& options);

// Python ==, and <  (which fails for values Python cannot order).
bool Equals(const Value& a, const Value& b);
absl::StatusOr<bool> Less(const Value& a, const Value& b);

// Code-point views of UTF-8 text: offsets of each code point, plus the end offset.
std::vector<size_t> CodePointOffsets(absl::string_view s);
uint32_t DecodeAt(absl::string_view s, size_t offset, size_t* length);
bool IsPythonSpace(uint32_t cp);
// Python's str.strip/lstrip/rstrip; `chars` == nullptr strips whitespace.
std::string PyStrip(absl::string_view s, const std::string* chars, bool left, bool right);

}  // namespace lora::jinja

#endif  // LORA_WORKER_ENGINE_DATA_JINJA_VALUE_H_
