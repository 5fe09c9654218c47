#include "worker/engine/data/jinja_eval.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace lora::jinja {
namespace {

using Kwargs = std::vector<std::pair<std::string, Value>>;

absl::Status Err(int line, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("chat template line ", line, ": ", why));
}

// Adds the line to errors raised below the evaluator (value helpers), once.
absl::Status At(int line, const absl::Status& s) {
  if (s.ok() || absl::StartsWith(s.message(), "chat template ")) return s;
  return Err(line, s.message());
}

std::string Describe(const Value& v) {
  if (v.is_undefined()) return v.str().empty() ? "undefined" : absl::StrCat("'", v.str(), "'");
  return v.TypeName();
}

// Python's index normalization for x[i].
bool NormalizeIndex(int64_t i, size_t size, size_t* out) {
  const int64_t n = static_cast<int64_t>(size);
  if (i < 0) i += n;
  if (i < 0 || i >= n) return false;
  *out = static_cast<size_t>(i);
  return true;
}

// Python's slice.indices(): the positions a[start:stop:step] visits.
absl::StatusOr<std::vector<size_t>> SliceIndices(const Value* start, const Value* stop,
                                                 const Value* step, size_t size) {
  auto as_int = [](const Value* v, int64_t* out) -> absl::Status {
    if (v == nullptr || v->is_none()) return absl::OkStatus();
    if (v->kind() != Value::Kind::kInt && v->kind() != Value::Kind::kBool) {
      return absl::InvalidArgumentError("slice indices must be integers or none");
    }
    *out = v->int_value();
    return absl::OkStatus();
  };
  const int64_t n = static_cast<int64_t>(size);
  int64_t st = 1;
  LORA_RETURN_IF_ERROR(as_int(step, &st));
  if (st == 0) return absl::InvalidArgumentError("slice step cannot be zero");
  int64_t b = st > 0 ? 0 : n - 1, e = st > 0 ? n : -1;
  const bool has_b = start != nullptr && !start->is_none();
  const bool has_e = stop != nullptr && !stop->is_none();
  int64_t rb = 0, re = 0;
  LORA_RETURN_IF_ERROR(as_int(start, &rb));
  LORA_RETURN_IF_ERROR(as_int(stop, &re));
  auto clamp = [&](int64_t x) {
    if (x < 0) x += n;
    if (st > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  if (has_b) b = clamp(rb);
  if (has_e) e = clamp(re);
  std::vector<size_t> out;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) out.push_back(static_cast<size_t>(i));
  return out;
}

bool IsAsciiOnly(absl::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

class Interpreter {
 public:
  Interpreter(const RenderLimits& limits, std::string* out) : limits_(limits), out_(out) {}

  absl::Status Run(const Program& program,
                   const std::vector<std::pair<std::string, Value>>& context) {
    frames_.emplace_back();
    for (const char* name : {"raise_exception", "strftime_now", "namespace", "range", "dict"}) {
      frames_.back()[name] = Value::Callable(name, nullptr);
    }
    for (const auto& [name, value] : context) frames_.back()[name] = value;
    frames_.emplace_back();  // the template's own top-level assignments
    LORA_ASSIGN_OR_RETURN(Flow flow, Exec(program.body));
    (void)flow;
    return absl::OkStatus();
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  using Frame = absl::flat_hash_map<std::string, Value>;

  absl::Status Emit(absl::string_view text, int line) {
    if (out_->size() + text.size() > limits_.max_output_bytes) {
      return Err(line,
                 absl::StrCat("the rendered text exceeds ", limits_.max_output_bytes, " bytes"));
    }
    out_->append(text.data(), text.size());
    return absl::OkStatus();
  }

  absl::Status Work(size_t bytes, int line) {
    work_ += bytes;
    if (work_ > limits_.max_string_work || bytes > limits_.max_output_bytes) {
      return Err(line, absl::StrCat("the template builds more than ", limits_.max_string_work,
                                    " bytes of strings"));
    }
    return absl::OkStatus();
  }

  absl::Status Iterations(int64_t n, int line) {
    iterations_ += n;
    if (n < 0 || iterations_ > limits_.max_loop_iterations) {
      return Err(line, absl::StrCat("the template runs more than ", limits_.max_loop_iterations,
                                    " loop iterations"));
    }
    return absl::OkStatus();
  }

  Value Lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    return Value::Undefined(name);
  }

  absl::StatusOr<Flow> Exec(const Body& body) {
    for (const auto& stmt : body) {
      LORA_ASSIGN_OR_RETURN(Flow flow, ExecStmt(*stmt));
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  absl::StatusOr<std::string> Capture(const Body& body, int line) {
    std::string captured;
    std::string* saved = out_;
    out_ = &captured;
    absl::StatusOr<Flow> flow = Exec(body);
    out_ = saved;
    if (!flow.ok()) return flow.status();
    if (*flow != Flow::kNormal) return Err(line, "'break' or 'continue' outside a loop");
    LORA_RETURN_IF_ERROR(Work(captured.size(), line));
    return captured;
  }

  absl::StatusOr<Flow> ExecStmt(const Stmt& s) {
    switch (s.kind) {
      case Stmt::Kind::kText:
        LORA_RETURN_IF_ERROR(Emit(s.text, s.line));
        return Flow::kNormal;
      case Stmt::Kind::kPrint: {
        LORA_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        std::string text;
        LORA_RETURN_IF_ERROR(At(s.line, AppendStr(v, &text)));
        LORA_RETURN_IF_ERROR(Emit(text, s.line));
        return Flow::kNormal;
      }
      case Stmt::Kind::kIf:
        for (const auto& [cond, body] : s.branches) {
          LORA_ASSIGN_OR_RETURN(Value c, Eval(*cond));
          if (c.Truthy()) return Exec(body);
        }
        return Exec(s.else_body);
      case Stmt::Kind::kFor:
        return ExecFor(s);
      case Stmt::Kind::kSet: {
        LORA_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        if (!s.attr.empty()) {
          Value ns = Lookup(s.targets[0]);
          if (!ns.is_namespace()) {
            return Err(s.line, absl::StrCat("cannot assign attribute '", s.attr, "' on ",
                                            Describe(ns), ": only a namespace() can be changed"));
          }
          if (v.is_namespace()) return Err(s.line, "a namespace cannot be stored in a namespace");
          if (!s.attr.empty() && s.attr[0] == '_') {
            return Err(s.line, "namespace attributes cannot start with '_'");
          }
          ns.mutable_namespace().Set(s.attr, std::move(v));
          return Flow::kNormal;
        }
        return Assign(s.targets, std::move(v), s.line);
      }
      case Stmt::Kind::kSetBlock: {
        LORA_ASSIGN_OR_RETURN(std::string text, Capture(s.body, s.line));
        frames_.back()[s.targets[0]] = Value::String(std::move(text));
        return Flow::kNormal;
      }
      case Stmt::Kind::kMacro:
        frames_.back()[s.text] = Value::Callable(s.text, &s);
        return Flow::kNormal;
      case Stmt::Kind::kBreak:
        if (loop_depth_ == 0) return Err(s.line, "'break' outside a loop");
        return Flow::kBreak;
      case Stmt::Kind::kContinue:
        if (loop_depth_ == 0) return Err(s.line, "'continue' outside a loop");
        return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> Assign(const std::vector<std::string>& targets, Value v, int line) {
    if (targets.size() == 1) {
      frames_.back()[targets[0]] = std::move(v);
      return Flow::kNormal;
    }
    LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v, line));
    if (items.size() != targets.size()) {
      return Err(line, absl::StrCat("cannot unpack ", items.size(), " values into ", targets.size(),
                                    " names"));
    }
    for (size_t i = 0; i < targets.size(); ++i) frames_.back()[targets[i]] = items[i];
    return Flow::kNormal;
  }

  absl::StatusOr<std::vector<Value>> Iterate(const Value& v, int line) {
    switch (v.kind()) {
      case Value::Kind::kUndefined:
        return std::vector<Value>();
      case Value::Kind::kList:
        return v.items();
      case Value::Kind::kDict: {
        std::vector<Value> keys;
        for (const auto& [k, unused] : v.dict().entries) keys.push_back(Value::String(k));
        return keys;
      }
      case Value::Kind::kString: {
        std::vector<Value> chars;
        const std::vector<size_t> off = CodePointOffsets(v.str());
        for (size_t i = 0; i + 1 < off.size(); ++i) {
          chars.push_back(Value::String(v.str().substr(off[i], off[i + 1] - off[i])));
        }
        return chars;
      }
      default:
        return Err(line, absl::StrCat("cannot iterate over ", Describe(v)));
    }
  }

  absl::StatusOr<Flow> ExecFor(const Stmt& s) {
    LORA_ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr));
    LORA_ASSIGN_OR_RETURN(std::vector<Value> all, Iterate(iterable, s.line));
    frames_.emplace_back();
    ++loop_depth_;
    auto done = [&](absl::StatusOr<Flow> result) -> absl::StatusOr<Flow> {
      --loop_depth_;
      frames_.pop_back();
      return result;
    };
    std::vector<Value> items;
    if (s.filter != nullptr) {
      for (Value& item : all) {
        absl::Status st = Iterations(1, s.line);
        if (st.ok()) st = Bind(s, item);
        if (!st.ok()) return done(st);
        absl::StatusOr<Value> keep = Eval(*s.filter);
        if (!keep.ok()) return done(keep.status());
        if (keep->Truthy()) items.push_back(std::move(item));
      }
    } else {
      items = std::move(all);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      absl::Status st = Iterations(1, s.line);
      if (st.ok()) st = Bind(s, items[i]);
      if (!st.ok()) return done(st);
      std::vector<std::pair<std::string, Value>> loop = {
          {"index", Value::Int(i + 1)},    {"index0", Value::Int(i)},
          {"revindex", Value::Int(n - i)}, {"revindex0", Value::Int(n - i - 1)},
          {"first", Value::Bool(i == 0)},  {"last", Value::Bool(i == n - 1)},
          {"length", Value::Int(n)},       {"depth", Value::Int(1)},
          {"depth0", Value::Int(0)}};
      if (i > 0) loop.emplace_back("previtem", items[i - 1]);
      if (i + 1 < n) loop.emplace_back("nextitem", items[i + 1]);
      absl::StatusOr<Value> loop_value = Value::Dict(std::move(loop));
      if (!loop_value.ok()) return done(At(s.line, loop_value.status()));
      frames_.back()["loop"] = *std::move(loop_value);
      absl::StatusOr<Flow> flow = Exec(s.body);
      if (!flow.ok()) return done(flow);
      if (*flow == Flow::kBreak) break;
    }
    if (n == 0) {
      frames_.back().erase("loop");
      absl::StatusOr<Flow> flow = Exec(s.else_body);
      if (!flow.ok() || *flow != Flow::kNormal) return done(flow);
    }
    return done(Flow::kNormal);
  }

  absl::Status Bind(const Stmt& s, const Value& item) {
    if (s.targets.size() == 1) {
      frames_.back()[s.targets[0]] = item;
      return absl::OkStatus();
    }
    LORA_ASSIGN_OR_RETURN(std::vector<Value> parts, Iterate(item, s.line));
    if (parts.size() != s.targets.size()) {
      return Err(s.line, absl::StrCat("cannot unpack ", parts.size(), " values into ",
                                      s.targets.size(), " loop variables"));
    }
    for (size_t k = 0; k < parts.size(); ++k) frames_.back()[s.targets[k]] = parts[k];
    return absl::OkStatus();
  }

  // ---- expressions

  absl::StatusOr<Value> GetAttr(const Value& obj, const std::string& name, int line) {
    if (obj.is_undefined()) {
      return Err(line, absl::StrCat(Describe(obj), " is undefined (reading '.", name, "')"));
    }
    if (obj.is_dict() || obj.is_namespace()) {
      const Value* v = obj.dict().Find(name);
      if (v != nullptr) return *v;
    }
    return Value::Undefined(name);
  }

  absl::StatusOr<Value> GetItem(const Value& obj, const Value& key, int line) {
    if (obj.is_undefined()) {
      return Err(line, absl::StrCat(Describe(obj), " is undefined (indexing it)"));
    }
    if (obj.is_dict() || obj.is_namespace()) {
      if (key.is_string()) {
        const Value* v = obj.dict().Find(key.str());
        if (v != nullptr) return *v;
      }
      return Value::Undefined(key.is_string() ? key.str() : "");
    }
    const bool int_key = key.kind() == Value::Kind::kInt || key.kind() == Value::Kind::kBool;
    if (obj.is_list()) {
      if (obj.lazy()) return Err(line, "a generator cannot be indexed; apply `| list` first");
      size_t i = 0;
      if (int_key && NormalizeIndex(key.int_value(), obj.items().size(), &i)) {
        return obj.items()[i];
      }
      return Value::Undefined();
    }
    if (obj.is_string()) {
      if (!int_key) return Value::Undefined();
      const std::vector<size_t> off = CodePointOffsets(obj.str());
      size_t i = 0;
      if (!NormalizeIndex(key.int_value(), off.size() - 1, &i)) return Value::Undefined();
      return Value::String(obj.str().substr(off[i], off[i + 1] - off[i]));
    }
    if (key.is_string()) return GetAttr(obj, key.str(), line);
    return Value::Undefined();
  }

  absl::StatusOr<Value> Slice(const Value& obj, const Value* b, const Value* e, const Value* st,
                              int line) {
    if (obj.is_list() && !obj.lazy()) {
      absl::StatusOr<std::vector<size_t>> idx = SliceIndices(b, e, st, obj.items().size());
      if (!idx.ok()) return At(line, idx.status());
      std::vector<Value> out;
      for (size_t i : *idx) out.push_back(obj.items()[i]);
      return obj.tuple() ? Value::Tuple(std::move(out)) : Value::List(std::move(out));
    }
    if (obj.is_string()) {
      const std::vector<size_t> off = CodePointOffsets(obj.str());
      absl::StatusOr<std::vector<size_t>> idx = SliceIndices(b, e, st, off.size() - 1);
      if (!idx.ok()) return At(line, idx.status());
      std::string out;
      for (size_t i : *idx) out += obj.str().substr(off[i], off[i + 1] - off[i]);
      LORA_RETURN_IF_ERROR(Work(out.size(), line));
      return Value::String(std::move(out));
    }
    return Err(line, absl::StrCat("cannot slice ", Describe(obj)));
  }

  absl::StatusOr<Value> Eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.literal;
      case Expr::Kind::kName:
        return Lookup(e.name);
      case Expr::Kind::kAttr: {
        LORA_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        return GetAttr(obj, e.name, e.line);
      }
      case Expr::Kind::kItem: {
        LORA_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        LORA_ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
        return GetItem(obj, key, e.line);
      }
      case Expr::Kind::kSlice: {
        LORA_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        Value bounds[3];
        for (int k = 0; k < 3; ++k) {
          if (e.args[k + 1] != nullptr) {
            LORA_ASSIGN_OR_RETURN(bounds[k], Eval(*e.args[k + 1]));
          }
        }
        return Slice(obj, e.args[1] ? &bounds[0] : nullptr, e.args[2] ? &bounds[1] : nullptr,
                     e.args[3] ? &bounds[2] : nullptr, e.line);
      }
      case Expr::Kind::kCall:
        return EvalCall(e);
      case Expr::Kind::kFilter: {
        LORA_ASSIGN_OR_RETURN(Value operand, Eval(*e.args[0]));
        std::vector<Value> args;
        Kwargs kwargs;
        LORA_RETURN_IF_ERROR(EvalArgs(e, 1, &args, &kwargs));
        return Filter(e.name, operand, args, kwargs, e.line);
      }
      case Expr::Kind::kTest: {
        LORA_ASSIGN_OR_RETURN(Value operand, Eval(*e.args[0]));
        std::vector<Value> args;
        Kwargs kwargs;
        LORA_RETURN_IF_ERROR(EvalArgs(e, 1, &args, &kwargs));
        LORA_ASSIGN_OR_RETURN(bool result, Test(e.name, operand, args, e.line));
        return Value::Bool(result != e.negated);
      }
      case Expr::Kind::kNeg:
      case Expr::Kind::kPos: {
        LORA_ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
        if (!v.is_number()) {
          return Err(e.line, absl::StrCat("unary ", e.kind == Expr::Kind::kNeg ? "-" : "+",
                                          " needs a number, not ", Describe(v)));
        }
        if (e.kind == Expr::Kind::kPos) {
          return v.kind() == Value::Kind::kBool ? Value::Int(v.int_value()) : v;
        }
        if (v.kind() == Value::Kind::kFloat) return Value::Float(-v.float_value());
        if (v.int_value() == std::numeric_limits<int64_t>::min()) {
          return Err(e.line, "integer overflow");
        }
        return Value::Int(-v.int_value());
      }
      case Expr::Kind::kNot: {
        LORA_ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
        return Value::Bool(!v.Truthy());
      }
      case Expr::Kind::kAnd: {
        LORA_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (!a.Truthy()) return a;
        return Eval(*e.args[1]);
      }
      case Expr::Kind::kOr: {
        LORA_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (a.Truthy()) return a;
        return Eval(*e.args[1]);
      }
      case Expr::Kind::kCond: {
        LORA_ASSIGN_OR_RETURN(Value c, Eval(*e.args[1]));
        if (c.Truthy()) return Eval(*e.args[0]);
        if (e.args[2] == nullptr) return Value::Undefined();
        return Eval(*e.args[2]);
      }
      case Expr::Kind::kList: {
        std::vector<Value> items;
        for (const auto& item : e.args) {
          LORA_ASSIGN_OR_RETURN(Value v, Eval(*item));
          items.push_back(std::move(v));
        }
        absl::StatusOr<Value> list =
            e.tuple ? Value::Tuple(std::move(items)) : Value::List(std::move(items));
        if (!list.ok()) return At(e.line, list.status());
        return list;
      }
      case Expr::Kind::kDict: {
        std::vector<std::pair<std::string, Value>> entries;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          LORA_ASSIGN_OR_RETURN(Value k, Eval(*e.args[i]));
          if (!k.is_string()) {
            return Err(e.line, absl::StrCat("dict keys must be strings, not ", Describe(k)));
          }
          LORA_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i + 1]));
          entries.emplace_back(k.str(), std::move(v));
        }
        absl::StatusOr<Value> dict = Value::Dict(std::move(entries));
        if (!dict.ok()) return At(e.line, dict.status());
        return dict;
      }
      case Expr::Kind::kBinary: {
        LORA_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        LORA_ASSIGN_OR_RETURN(Value b, Eval(*e.args[1]));
        return Binary(e.name, a, b, e.line);
      }
    }
    return Err(e.line, "unknown expression");
  }

  absl::Status EvalArgs(const Expr& e, size_t first, std::vector<Value>* args, Kwargs* kwargs) {
    for (size_t i = first; i < e.args.size(); ++i) {
      LORA_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i]));
      args->push_back(std::move(v));
    }
    for (const auto& [name, expr] : e.kwargs) {
      LORA_ASSIGN_OR_RETURN(Value v, Eval(*expr));
      kwargs->emplace_back(name, std::move(v));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Value> Arith(const std::string& op, const Value& a, const Value& b, int line) {
    const bool floats = a.kind() == Value::Kind::kFloat || b.kind() == Value::Kind::kFloat;
    if (op == "/") {
      if (b.AsDouble() == 0) return Err(line, "division by zero");
      return Value::Float(a.AsDouble() / b.AsDouble());
    }
    if (op == "**") {
      if (!floats && b.int_value() >= 0) {
        double r = std::pow(static_cast<double>(a.int_value()), static_cast<double>(b.int_value()));
        if (std::fabs(r) > 9.0e18) return Err(line, "integer overflow");
        int64_t out = 1;
        for (int64_t k = 0; k < b.int_value(); ++k) out *= a.int_value();
        return Value::Int(out);
      }
      return Value::Float(std::pow(a.AsDouble(), b.AsDouble()));
    }
    if (floats) {
      const double x = a.AsDouble(), y = b.AsDouble();
      if (op == "+") return Value::Float(x + y);
      if (op == "-") return Value::Float(x - y);
      if (op == "*") return Value::Float(x * y);
      if (y == 0) return Err(line, "division by zero");
      if (op == "//") return Value::Float(std::floor(x / y));
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::Float(m);
    }
    const int64_t x = a.int_value(), y = b.int_value();
    int64_t r = 0;
    if (op == "+") {
      if (__builtin_add_overflow(x, y, &r)) return Err(line, "integer overflow");
      return Value::Int(r);
    }
    if (op == "-") {
      if (__builtin_sub_overflow(x, y, &r)) return Err(line, "integer overflow");
      return Value::Int(r);
    }
    if (op == "*") {
      if (__builtin_mul_overflow(x, y, &r)) return Err(line, "integer overflow");
      return Value::Int(r);
    }
    if (y == 0) return Err(line, "division by zero");
    if (x == std::numeric_limits<int64_t>::min() && y == -1) return Err(line, "integer overflow");
    int64_t q = x / y, m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) {
      --q;
      m += y;
    }
    return Value::Int(op == "//" ? q : m);
  }

  absl::StatusOr<bool> Contains(const Value& container, const Value& item, int line) {
    if (container.is_string()) {
      if (!item.is_string()) {
        return Err(line,
                   absl::StrCat("'in <string>' needs a string on the left, not ", Describe(item)));
      }
      return absl::StrContains(container.str(), item.str());
    }
    if (container.is_dict() || container.is_namespace()) {
      return item.is_string() && container.dict().Find(item.str()) != nullptr;
    }
    if (container.is_list() || container.is_undefined()) {
      LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(container, line));
      for (const Value& v : items) {
        if (Equals(v, item)) return true;
      }
      return false;
    }
    return Err(line, absl::StrCat("'in' needs a string, list or dict on the right, not ",
                                  Describe(container)));
  }

  absl::StatusOr<Value> Binary(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "==") return Value::Bool(Equals(a, b));
    if (op == "!=") return Value::Bool(!Equals(a, b));
    if (op == "in" || op == "not in") {
      LORA_ASSIGN_OR_RETURN(bool in, Contains(b, a, line));
      return Value::Bool(in == (op == "in"));
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      if (a.is_undefined() || b.is_undefined()) {
        return Err(line, absl::StrCat("cannot compare ", Describe(a), " and ", Describe(b)));
      }
      const bool swap = op == ">" || op == "<=";
      absl::StatusOr<bool> less = swap ? Less(b, a) : Less(a, b);
      if (!less.ok()) return At(line, less.status());
      return Value::Bool(op == "<" || op == ">" ? *less : !*less);
    }
    if (op == "~") {
      std::string s;
      LORA_RETURN_IF_ERROR(At(line, AppendStr(a, &s)));
      LORA_RETURN_IF_ERROR(At(line, AppendStr(b, &s)));
      LORA_RETURN_IF_ERROR(Work(s.size(), line));
      return Value::String(std::move(s));
    }
    if (op == "+" && a.is_string() && b.is_string()) {
      LORA_RETURN_IF_ERROR(Work(a.str().size() + b.str().size(), line));
      return Value::String(a.str() + b.str());
    }
    if (op == "+" && a.is_list() && b.is_list() && !a.lazy() && !b.lazy()) {
      std::vector<Value> items = a.items();
      items.insert(items.end(), b.items().begin(), b.items().end());
      LORA_RETURN_IF_ERROR(Iterations(static_cast<int64_t>(items.size()), line));
      absl::StatusOr<Value> list = Value::List(std::move(items));
      if (!list.ok()) return At(line, list.status());
      return list;
    }
    if (op == "*" && ((a.is_string() && b.kind() == Value::Kind::kInt) ||
                      (b.is_string() && a.kind() == Value::Kind::kInt))) {
      const Value& s = a.is_string() ? a : b;
      const int64_t n = std::max<int64_t>(0, a.is_string() ? b.int_value() : a.int_value());
      if (n > 0 && s.str().size() > limits_.max_output_bytes / static_cast<size_t>(n)) {
        return Err(line,
                   absl::StrCat("string repetition exceeds ", limits_.max_output_bytes, " bytes"));
      }
      std::string out;
      for (int64_t k = 0; k < n; ++k) out += s.str();
      LORA_RETURN_IF_ERROR(Work(out.size(), line));
      return Value::String(std::move(out));
    }
    if (op == "%" && a.is_string()) {
      return Err(line, "unsupported construct: '%' string formatting");
    }
    if (a.is_number() && b.is_number()) return Arith(op, a, b, line);
    return Err(line, absl::StrCat("unsupported operand types for ", op, ": ", Describe(a), " and ",
                                  Describe(b)));
  }

  // ---- calls

  absl::StatusOr<Value> EvalCall(const Expr& e) {
    const Expr& callee = *e.args[0];
    std::vector<Value> args;
    Kwargs kwargs;
    if (callee.kind == Expr::Kind::kAttr) {
      LORA_ASSIGN_OR_RETURN(Value obj, Eval(*callee.args[0]));
      if (obj.is_string() || obj.is_dict() || obj.is_list()) {
        LORA_RETURN_IF_ERROR(EvalArgs(e, 1, &args, &kwargs));
        return Method(obj, callee.name, args, kwargs, e.line);
      }
      LORA_ASSIGN_OR_RETURN(Value fn, GetAttr(obj, callee.name, e.line));
      LORA_RETURN_IF_ERROR(EvalArgs(e, 1, &args, &kwargs));
      return CallValue(fn, args, kwargs, e.line);
    }
    LORA_ASSIGN_OR_RETURN(Value fn, Eval(callee));
    LORA_RETURN_IF_ERROR(EvalArgs(e, 1, &args, &kwargs));
    return CallValue(fn, args, kwargs, e.line);
  }

  absl::StatusOr<Value> CallValue(const Value& fn, const std::vector<Value>& args,
                                  const Kwargs& kwargs, int line) {
    if (fn.is_undefined()) {
      return Err(line, absl::StrCat(Describe(fn), " is undefined (calling it)"));
    }
    if (fn.kind() != Value::Kind::kCallable) {
      return Err(line, absl::StrCat("a ", fn.TypeName(), " is not callable"));
    }
    if (fn.macro() != nullptr) return CallMacro(*fn.macro(), args, kwargs, line);
    const std::string& name = fn.str();
    if (name == "raise_exception") {
      std::string message;
      if (!args.empty()) LORA_RETURN_IF_ERROR(At(line, AppendStr(args[0], &message)));
      return absl::InvalidArgumentError(
          absl::StrCat("chat template raised an exception (line ", line, "): ", message));
    }
    if (name == "namespace" || name == "dict") {
      if (!args.empty()) {
        return Err(line, absl::StrCat(name, "() takes keyword arguments only here"));
      }
      if (name == "dict") {
        absl::StatusOr<Value> d = Value::Dict(kwargs);
        if (!d.ok()) return At(line, d.status());
        return d;
      }
      Value ns = Value::Namespace();
      for (const auto& [k, v] : kwargs) {
        if (v.is_namespace()) return Err(line, "a namespace cannot be stored in a namespace");
        ns.mutable_namespace().Set(k, v);
      }
      return ns;
    }
    if (name == "range") {
      if (!kwargs.empty() || args.empty() || args.size() > 3) {
        return Err(line, "range() takes 1 to 3 positional arguments");
      }
      int64_t bounds[3] = {0, 0, 1};
      for (size_t k = 0; k < args.size(); ++k) {
        if (args[k].kind() != Value::Kind::kInt && args[k].kind() != Value::Kind::kBool) {
          return Err(line, "range() arguments must be integers");
        }
      }
      if (args.size() == 1) {
        bounds[1] = args[0].int_value();
      } else {
        bounds[0] = args[0].int_value();
        bounds[1] = args[1].int_value();
        if (args.size() == 3) bounds[2] = args[2].int_value();
      }
      if (bounds[2] == 0) return Err(line, "range() step cannot be zero");
      std::vector<Value> items;
      for (int64_t i = bounds[0]; bounds[2] > 0 ? i < bounds[1] : i > bounds[1];) {
        LORA_RETURN_IF_ERROR(Iterations(1, line));
        items.push_back(Value::Int(i));
        if (__builtin_add_overflow(i, bounds[2], &i)) break;
      }
      return Value::List(std::move(items));
    }
    if (name == "strftime_now") {
      if (args.size() != 1 || !args[0].is_string()) {
        return Err(line, "strftime_now() takes one format string");
      }
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof(buf), args[0].str().c_str(), &local);
      if (n == 0 && !args[0].str().empty()) return Err(line, "strftime_now(): format too long");
      return Value::String(std::string(buf, n));
    }
    return Err(line, absl::StrCat("unsupported function '", name, "'"));
  }

  absl::StatusOr<Value> CallMacro(const Stmt& macro, const std::vector<Value>& args,
                                  const Kwargs& kwargs, int line) {
    if (call_depth_ >= limits_.max_call_depth) {
      return Err(line, absl::StrCat("macro calls nest deeper than ", limits_.max_call_depth));
    }
    if (args.size() > macro.targets.size()) {
      return Err(line, absl::StrCat("macro '", macro.text, "' takes ", macro.targets.size(),
                                    " arguments, got ", args.size()));
    }
    Frame params;
    for (size_t i = 0; i < args.size(); ++i) params[macro.targets[i]] = args[i];
    for (const auto& [k, v] : kwargs) {
      if (std::find(macro.targets.begin(), macro.targets.end(), k) == macro.targets.end()) {
        return Err(line, absl::StrCat("macro '", macro.text, "' has no parameter '", k, "'"));
      }
      params[k] = v;
    }
    // Macros see the template's globals and top-level names, not the caller's locals.
    std::vector<Frame> saved;
    saved.swap(frames_);
    frames_.push_back(saved[0]);
    frames_.push_back(saved[1]);
    frames_.push_back(Frame());
    absl::Status status;
    for (size_t i = 0; i < macro.targets.size() && status.ok(); ++i) {
      if (params.contains(macro.targets[i])) continue;
      if (macro.defaults[i] == nullptr) {
        params[macro.targets[i]] = Value::Undefined(macro.targets[i]);
        continue;
      }
      absl::StatusOr<Value> def = Eval(*macro.defaults[i]);
      if (!def.ok()) status = def.status();
      if (status.ok()) params[macro.targets[i]] = *std::move(def);
    }
    std::string text;
    if (status.ok()) {
      for (auto& [k, v] : params) frames_.back()[k] = std::move(v);
      const int saved_loops = loop_depth_;
      loop_depth_ = 0;
      ++call_depth_;
      absl::StatusOr<std::string> captured = Capture(macro.body, line);
      --call_depth_;
      loop_depth_ = saved_loops;
      if (captured.ok()) {
        text = *std::move(captured);
      } else {
        status = captured.status();
      }
    }
    frames_.swap(saved);
    if (!status.ok()) return status;
    return Value::String(std::move(text));
  }

  // ---- methods on strings, dicts and lists (the sandbox forbids mutating ones)

  absl::StatusOr<std::string> StrArg(const std::vector<Value>& args, size_t i,
                                     absl::string_view what, int line) {
    if (i >= args.size() || !args[i].is_string()) {
      return Err(line, absl::StrCat(what, " needs a string argument"));
    }
    return args[i].str();
  }

  static const Value* Kwarg(const Kwargs& kwargs, absl::string_view name) {
    for (const auto& [k, v] : kwargs) {
      if (k == name) return &v;
    }
    return nullptr;
  }

  absl::StatusOr<Value> Split(const std::string& s, const Value* sep_value, int64_t maxsplit,
                              bool from_right, int line) {
    std::vector<std::string> parts;
    if (sep_value == nullptr || sep_value->is_none()) {
      // Runs of whitespace separate; leading and trailing whitespace yields nothing.
      std::vector<std::pair<size_t, size_t>> words;
      const std::vector<size_t> off = CodePointOffsets(s);
      size_t n = 0;
      size_t start = std::string::npos;
      for (size_t i = 0; i + 1 < off.size(); ++i) {
        const bool space = IsPythonSpace(DecodeAt(s, off[i], &n));
        if (!space && start == std::string::npos) start = off[i];
        if (space && start != std::string::npos) {
          words.emplace_back(start, off[i]);
          start = std::string::npos;
        }
      }
      if (start != std::string::npos) words.emplace_back(start, s.size());
      if (maxsplit >= 0 && static_cast<int64_t>(words.size()) > maxsplit + 1) {
        if (from_right) {
          const size_t keep = words.size() - maxsplit;
          std::string head = PyStrip(s.substr(0, words[keep - 1].second), nullptr, true, false);
          parts.push_back(head);
          for (size_t i = keep; i < words.size(); ++i) {
            parts.push_back(s.substr(words[i].first, words[i].second - words[i].first));
          }
        } else {
          for (int64_t i = 0; i < maxsplit; ++i) {
            parts.push_back(s.substr(words[i].first, words[i].second - words[i].first));
          }
          parts.push_back(PyStrip(s.substr(words[maxsplit].first), nullptr, false, true));
        }
      } else {
        for (const auto& [b, e] : words) parts.push_back(s.substr(b, e - b));
      }
    } else {
      if (!sep_value->is_string()) return Err(line, "split() separator must be a string");
      const std::string& sep = sep_value->str();
      if (sep.empty()) return Err(line, "split(): empty separator");
      if (!from_right) {
        size_t pos = 0;
        int64_t done = 0;
        while (maxsplit < 0 || done < maxsplit) {
          const size_t hit = s.find(sep, pos);
          if (hit == std::string::npos) break;
          parts.push_back(s.substr(pos, hit - pos));
          pos = hit + sep.size();
          ++done;
        }
        parts.push_back(s.substr(pos));
      } else {
        size_t end = s.size();
        int64_t done = 0;
        std::vector<std::string> rev;
        while (maxsplit < 0 || done < maxsplit) {
          if (end < sep.size()) break;
          const size_t hit = s.rfind(sep, end - sep.size());
          if (hit == std::string::npos) break;
          rev.push_back(s.substr(hit + sep.size(), end - hit - sep.size()));
          end = hit;
          ++done;
        }
        rev.push_back(s.substr(0, end));
        parts.assign(rev.rbegin(), rev.rend());
      }
    }
    LORA_RETURN_IF_ERROR(Iterations(static_cast<int64_t>(parts.size()), line));
    LORA_RETURN_IF_ERROR(Work(s.size(), line));
    std::vector<Value> items;
    for (auto& p : parts) items.push_back(Value::String(std::move(p)));
    return Value::List(std::move(items));
  }

  absl::StatusOr<std::string> CaseMap(const std::string& how, const std::string& s, int line) {
    if (!IsAsciiOnly(s)) {
      return Err(line, absl::StrCat("'", how, "' of non-ASCII text is not supported"));
    }
    std::string out = s;
    if (how == "upper") {
      for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    } else if (how == "lower") {
      for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (how == "capitalize") {
      for (size_t i = 0; i < out.size(); ++i) {
        const auto c = static_cast<unsigned char>(out[i]);
        out[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
      }
    } else {  // title: a letter after a non-letter starts a word
      bool prev_letter = false;
      for (char& ch : out) {
        const auto c = static_cast<unsigned char>(ch);
        const bool letter = std::isalpha(c) != 0;
        ch = static_cast<char>(letter ? (prev_letter ? std::tolower(c) : std::toupper(c)) : c);
        prev_letter = letter;
      }
    }
    return out;
  }

  absl::StatusOr<Value> Replace(const std::string& s, const std::string& old,
                                const std::string& repl, int64_t count, int line) {
    std::string out;
    if (old.empty()) {
      const std::vector<size_t> off = CodePointOffsets(s);
      int64_t done = 0;
      for (size_t i = 0; i < off.size(); ++i) {
        if (count < 0 || done < count) {
          out += repl;
          ++done;
        }
        if (i + 1 < off.size()) out += s.substr(off[i], off[i + 1] - off[i]);
      }
    } else {
      size_t pos = 0;
      int64_t done = 0;
      while (count < 0 || done < count) {
        const size_t hit = s.find(old, pos);
        if (hit == std::string::npos) break;
        out += s.substr(pos, hit - pos);
        out += repl;
        pos = hit + old.size();
        ++done;
      }
      out += s.substr(pos);
    }
    LORA_RETURN_IF_ERROR(Work(out.size(), line));
    return Value::String(std::move(out));
  }

  absl::StatusOr<Value> Method(const Value& obj, const std::string& name,
                               const std::vector<Value>& args, const Kwargs& kwargs, int line) {
    auto unsupported = [&]() {
      return Err(line, absl::StrCat("unsupported method '", name, "' on a ", obj.TypeName()));
    };
    if (obj.is_string()) {
      const std::string& s = obj.str();
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        const Value* chars = !args.empty() ? &args[0] : Kwarg(kwargs, "chars");
        if (chars != nullptr && !chars->is_none() && !chars->is_string()) {
          return Err(line, absl::StrCat(name, "() needs a string argument"));
        }
        const std::string* set = chars != nullptr && chars->is_string() ? &chars->str() : nullptr;
        return Value::String(PyStrip(s, set, name != "rstrip", name != "lstrip"));
      }
      if (name == "split" || name == "rsplit") {
        const Value* sep = !args.empty() ? &args[0] : Kwarg(kwargs, "sep");
        const Value* max = args.size() > 1 ? &args[1] : Kwarg(kwargs, "maxsplit");
        int64_t maxsplit = -1;
        if (max != nullptr) {
          if (max->kind() != Value::Kind::kInt) return Err(line, "maxsplit must be an integer");
          maxsplit = max->int_value();
        }
        return Split(s, sep, maxsplit, name == "rsplit", line);
      }
      if (name == "startswith" || name == "endswith") {
        if (args.size() != 1) {
          return Err(line, absl::StrCat(name, "() with start/end positions is not supported"));
        }
        std::vector<Value> candidates;
        if (args[0].is_list() && !args[0].lazy()) {
          candidates = args[0].items();
        } else {
          candidates.push_back(args[0]);
        }
        for (const Value& c : candidates) {
          if (!c.is_string()) return Err(line, absl::StrCat(name, "() needs strings"));
          if (name == "startswith" ? absl::StartsWith(s, c.str()) : absl::EndsWith(s, c.str())) {
            return Value::Bool(true);
          }
        }
        return Value::Bool(false);
      }
      if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        LORA_ASSIGN_OR_RETURN(std::string out, CaseMap(name, s, line));
        return Value::String(std::move(out));
      }
      if (name == "replace") {
        LORA_ASSIGN_OR_RETURN(std::string old, StrArg(args, 0, "replace()", line));
        LORA_ASSIGN_OR_RETURN(std::string repl, StrArg(args, 1, "replace()", line));
        int64_t count = -1;
        if (args.size() > 2) {
          if (args[2].kind() != Value::Kind::kInt) return Err(line, "replace() count must be int");
          count = args[2].int_value();
        }
        return Replace(s, old, repl, count, line);
      }
      if (name == "find" || name == "rfind" || name == "count") {
        if (args.size() != 1) {
          return Err(line, absl::StrCat(name, "() with start/end positions is not supported"));
        }
        LORA_ASSIGN_OR_RETURN(std::string needle, StrArg(args, 0, name, line));
        if (name == "count") {
          if (needle.empty()) {
            return Value::Int(static_cast<int64_t>(CodePointOffsets(s).size()));
          }
          int64_t n = 0;
          for (size_t pos = s.find(needle); pos != std::string::npos;
               pos = s.find(needle, pos + needle.size())) {
            ++n;
          }
          return Value::Int(n);
        }
        const size_t hit = name == "find" ? s.find(needle) : s.rfind(needle);
        if (hit == std::string::npos) return Value::Int(-1);
        return Value::Int(static_cast<int64_t>(CodePointOffsets(s.substr(0, hit)).size()) - 1);
      }
      if (name == "join") {
        if (args.size() != 1) return Err(line, "join() takes one iterable");
        LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(args[0], line));
        std::string out;
        for (size_t i = 0; i < items.size(); ++i) {
          if (!items[i].is_string()) return Err(line, "join() needs strings");
          if (i > 0) out += s;
          out += items[i].str();
        }
        LORA_RETURN_IF_ERROR(Work(out.size(), line));
        return Value::String(std::move(out));
      }
      return unsupported();
    }
    if (obj.is_dict()) {
      if (name == "get") {
        if (args.empty() || args.size() > 2) return Err(line, "get() takes 1 or 2 arguments");
        if (args[0].is_string()) {
          const Value* v = obj.dict().Find(args[0].str());
          if (v != nullptr) return *v;
        }
        return args.size() == 2 ? args[1] : Value::None();
      }
      if (name == "items" || name == "keys" || name == "values") {
        std::vector<Value> out;
        for (const auto& [k, v] : obj.dict().entries) {
          if (name == "keys") {
            out.push_back(Value::String(k));
          } else if (name == "values") {
            out.push_back(v);
          } else {
            LORA_ASSIGN_OR_RETURN(Value pair, Value::Tuple({Value::String(k), v}));
            out.push_back(std::move(pair));
          }
        }
        return Value::List(std::move(out));
      }
      const Value* v = obj.dict().Find(name);
      if (v != nullptr) return CallValue(*v, args, kwargs, line);
      return unsupported();
    }
    return unsupported();
  }

  // ---- filters and tests

  absl::StatusOr<Value> Attribute(const Value& item, const std::string& path, int line) {
    Value v = item;
    size_t start = 0;
    while (true) {
      const size_t dot = path.find('.', start);
      const std::string part =
          path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      const bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
      if (numeric) {
        LORA_ASSIGN_OR_RETURN(v, GetItem(v, Value::Int(std::stoll(part)), line));
      } else {
        LORA_ASSIGN_OR_RETURN(v, GetItem(v, Value::String(part), line));
      }
      if (dot == std::string::npos) return v;
      start = dot + 1;
    }
  }

  absl::StatusOr<Value> Filter(const std::string& name, const Value& v,
                               const std::vector<Value>& args, const Kwargs& kwargs, int line) {
    auto arg = [&](size_t i, absl::string_view key) -> const Value* {
      if (i < args.size()) return &args[i];
      return Kwarg(kwargs, key);
    };
    if (name == "default" || name == "d") {
      const Value* def = arg(0, "default_value");
      const Value* boolean = arg(1, "boolean");
      const bool use_default =
          v.is_undefined() || (boolean != nullptr && boolean->Truthy() && !v.Truthy());
      if (use_default) return def != nullptr ? *def : Value::String("");
      return v;
    }
    if (name == "length" || name == "count") {
      if (v.is_string())
        return Value::Int(static_cast<int64_t>(CodePointOffsets(v.str()).size()) - 1);
      if (v.is_list() && !v.lazy()) return Value::Int(static_cast<int64_t>(v.items().size()));
      if (v.is_dict() || v.is_namespace()) {
        return Value::Int(static_cast<int64_t>(v.dict().entries.size()));
      }
      if (v.is_undefined()) return Value::Int(0);
      return Err(line, absl::StrCat("'", name, "' of ", Describe(v),
                                    " is not supported (apply `| list` to a generator)"));
    }
    if (name == "tojson") {
      JsonOptions o;
      const Value* ensure_ascii = arg(0, "ensure_ascii");
      const Value* indent = arg(1, "indent");
      const Value* separators = arg(2, "separators");
      const Value* sort_keys = arg(3, "sort_keys");
      if (ensure_ascii != nullptr) o.ensure_ascii = ensure_ascii->Truthy();
      if (indent != nullptr && !indent->is_none()) {
        if (indent->kind() != Value::Kind::kInt || indent->int_value() < 0 ||
            indent->int_value() > 64) {
          return Err(line, "tojson: indent must be an integer in [0, 64]");
        }
        o.indent = static_cast<int>(indent->int_value());
      }
      if (separators != nullptr && !separators->is_none()) {
        if (!separators->is_list() || separators->items().size() != 2 ||
            !separators->items()[0].is_string() || !separators->items()[1].is_string()) {
          return Err(line, "tojson: separators must be a pair of strings");
        }
        o.has_separators = true;
        o.item_separator = separators->items()[0].str();
        o.key_separator = separators->items()[1].str();
      }
      if (sort_keys != nullptr) o.sort_keys = sort_keys->Truthy();
      absl::StatusOr<std::string> json = ToJson(v, o);
      if (!json.ok()) return At(line, json.status());
      LORA_RETURN_IF_ERROR(Work(json->size(), line));
      return Value::String(*std::move(json));
    }
    if (name == "string") {
      if (v.is_string()) return v;
      std::string s;
      LORA_RETURN_IF_ERROR(At(line, AppendStr(v, &s)));
      return Value::String(std::move(s));
    }
    if (name == "safe") return v;
    if (name == "trim" || name == "upper" || name == "lower" || name == "capitalize" ||
        name == "title" || name == "e" || name == "escape") {
      std::string s;
      LORA_RETURN_IF_ERROR(At(line, AppendStr(v, &s)));
      if (name == "trim") {
        const Value* chars = arg(0, "chars");
        if (chars != nullptr && !chars->is_none() && !chars->is_string()) {
          return Err(line, "trim: chars must be a string");
        }
        return Value::String(PyStrip(
            s, chars != nullptr && chars->is_string() ? &chars->str() : nullptr, true, true));
      }
      if (name == "e" || name == "escape") {
        std::string out;
        for (char c : s) {
          switch (c) {
            case '&':
              out += "&amp;";
              break;
            case '<':
              out += "&lt;";
              break;
            case '>':
              out += "&gt;";
              break;
            case '"':
              out += "&#34;";
              break;
            case '\'':
              out += "&#39;";
              break;
            default:
              out.push_back(c);
          }
        }
        return Value::String(std::move(out));
      }
      LORA_ASSIGN_OR_RETURN(std::string out, CaseMap(name, s, line));
      return Value::String(std::move(out));
    }
    if (name == "first" || name == "last") {
      if (name == "last" && v.is_list() && v.lazy()) {
        return Err(line, "'last' of a generator is not supported; apply `| list` first");
      }
      LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v, line));
      if (items.empty()) return Value::Undefined();
      return name == "first" ? items.front() : items.back();
    }
    if (name == "join") {
      const Value* sep = arg(0, "d");
      const Value* attribute = arg(1, "attribute");
      std::string sep_text;
      if (sep != nullptr) LORA_RETURN_IF_ERROR(At(line, AppendStr(*sep, &sep_text)));
      LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v, line));
      std::string out;
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += sep_text;
        Value item = items[i];
        if (attribute != nullptr) {
          if (!attribute->is_string()) return Err(line, "join: attribute must be a string");
          LORA_ASSIGN_OR_RETURN(item, Attribute(item, attribute->str(), line));
        }
        LORA_RETURN_IF_ERROR(At(line, AppendStr(item, &out)));
      }
      LORA_RETURN_IF_ERROR(Work(out.size(), line));
      return Value::String(std::move(out));
    }
    if (name == "replace") {
      std::string s;
      LORA_RETURN_IF_ERROR(At(line, AppendStr(v, &s)));
      const Value* old = arg(0, "old");
      const Value* repl = arg(1, "new");
      const Value* count = arg(2, "count");
      if (old == nullptr || repl == nullptr) return Err(line, "replace needs old and new");
      std::string old_text, repl_text;
      LORA_RETURN_IF_ERROR(At(line, AppendStr(*old, &old_text)));
      LORA_RETURN_IF_ERROR(At(line, AppendStr(*repl, &repl_text)));
      int64_t n = -1;
      if (count != nullptr && !count->is_none()) {
        if (count->kind() != Value::Kind::kInt) return Err(line, "replace: count must be int");
        n = count->int_value();
      }
      return Replace(s, old_text, repl_text, n, line);
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
      const bool by_attr = name == "selectattr" || name == "rejectattr";
      const bool keep_if = name == "selectattr" || name == "select";
      if (!kwargs.empty()) return Err(line, absl::StrCat(name, ": keyword arguments unsupported"));
      size_t next = 0;
      std::string attribute;
      if (by_attr) {
        if (args.empty() || !args[0].is_string()) {
          return Err(line, absl::StrCat(name, " needs an attribute name"));
        }
        attribute = args[0].str();
        next = 1;
      }
      std::string test;
      if (next < args.size()) {
        if (!args[next].is_string()) return Err(line, absl::StrCat(name, ": test must be a name"));
        test = args[next].str();
        ++next;
      }
      const std::vector<Value> test_args(args.begin() + static_cast<std::ptrdiff_t>(next),
                                         args.end());
      LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v, line));
      std::vector<Value> out;
      for (const Value& item : items) {
        Value probe = item;
        if (by_attr) {
          LORA_ASSIGN_OR_RETURN(probe, Attribute(item, attribute, line));
        }
        bool pass = probe.Truthy();
        if (!test.empty()) {
          LORA_ASSIGN_OR_RETURN(pass, Test(test, probe, test_args, line));
        }
        if (pass == keep_if) out.push_back(item);
      }
      return Value::List(std::move(out), /*lazy=*/true);
    }
    if (name == "map") {
      LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v, line));
      std::vector<Value> out;
      const Value* attribute = Kwarg(kwargs, "attribute");
      if (attribute != nullptr) {
        if (!attribute->is_string()) return Err(line, "map: attribute must be a string");
        const Value* def = Kwarg(kwargs, "default");
        for (const Value& item : items) {
          LORA_ASSIGN_OR_RETURN(Value a, Attribute(item, attribute->str(), line));
          out.push_back(a.is_undefined() && def != nullptr ? *def : a);
        }
      } else {
        if (args.empty() || !args[0].is_string()) return Err(line, "map needs a filter name");
        const std::string filter = args[0].str();
        static const char* const kMappable[] = {"string", "trim",  "upper", "lower",      "tojson",
                                                "length", "first", "last",  "capitalize", "title",
                                                "int",    "float", "abs",   "list"};
        if (std::find(std::begin(kMappable), std::end(kMappable), filter) == std::end(kMappable)) {
          return Err(line, absl::StrCat("map: unsupported filter '", filter, "'"));
        }
        const std::vector<Value> rest(args.begin() + 1, args.end());
        for (const Value& item : items) {
          LORA_ASSIGN_OR_RETURN(Value mapped, Filter(filter, item, rest, {}, line));
          out.push_back(std::move(mapped));
        }
      }
      return Value::List(std::move(out), /*lazy=*/true);
    }
    if (name == "items") {
      if (v.is_undefined()) return Value::List({}, /*lazy=*/true);
      if (!v.is_dict()) return Err(line, absl::StrCat("'items' of ", Describe(v)));
      std::vector<Value> out;
      for (const auto& [k, item] : v.dict().entries) {
        LORA_ASSIGN_OR_RETURN(Value pair, Value::Tuple({Value::String(k), item}));
        out.push_back(std::move(pair));
      }
      return Value::List(std::move(out), /*lazy=*/true);
    }
    if (name == "list") {
      LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v, line));
      return Value::List(std::move(items));
    }
    if (name == "reverse") {
      if (v.is_string()) {
        const std::vector<size_t> off = CodePointOffsets(v.str());
        std::string out;
        for (size_t i = off.size() - 1; i > 0; --i) {
          out += v.str().substr(off[i - 1], off[i] - off[i - 1]);
        }
        return Value::String(std::move(out));
      }
      LORA_ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(v, line));
      std::reverse(items.begin(), items.end());
      return Value::List(std::move(items), /*lazy=*/!v.lazy());
    }
    if (name == "int" || name == "float") {
      const Value* def = arg(0, "default");
      const Value fallback =
          def != nullptr ? *def : (name == "int" ? Value::Int(0) : Value::Float(0));
      if (v.is_number()) {
        if (name == "float") return Value::Float(v.AsDouble());
        if (v.kind() != Value::Kind::kFloat) return Value::Int(v.int_value());
        if (!std::isfinite(v.float_value()) || std::fabs(v.float_value()) > 9.2e18) return fallback;
        return Value::Int(static_cast<int64_t>(v.float_value()));
      }
      if (v.is_string()) {
        const std::string t = PyStrip(v.str(), nullptr, true, true);
        char* end = nullptr;
        errno = 0;
        if (name == "int") {
          const long long i = std::strtoll(t.c_str(), &end, 10);
          if (!t.empty() && end == t.c_str() + t.size() && errno == 0) return Value::Int(i);
        }
        const double d = std::strtod(t.c_str(), &end);
        if (!t.empty() && end == t.c_str() + t.size()) {
          if (name == "float") return Value::Float(d);
          if (std::isfinite(d) && std::fabs(d) < 9.2e18) return Value::Int(static_cast<int64_t>(d));
        }
      }
      return fallback;
    }
    if (name == "abs") {
      if (v.kind() == Value::Kind::kFloat) return Value::Float(std::fabs(v.float_value()));
      if (v.is_number()) {
        if (v.int_value() == std::numeric_limits<int64_t>::min()) return Err(line, "overflow");
        return Value::Int(std::llabs(v.int_value()));
      }
      return Err(line, absl::StrCat("'abs' of ", Describe(v)));
    }
    return Err(line, absl::StrCat("unsupported filter '", name, "'"));
  }

  absl::StatusOr<bool> Test(const std::string& name, const Value& v, const std::vector<Value>& args,
                            int line) {
    using K = Value::Kind;
    auto need_arg = [&]() -> absl::Status {
      if (args.size() != 1) return Err(line, absl::StrCat("test '", name, "' takes one argument"));
      return absl::OkStatus();
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_dict();
    if (name == "boolean") return v.kind() == K::kBool;
    if (name == "true") return v.kind() == K::kBool && v.bool_value();
    if (name == "false") return v.kind() == K::kBool && !v.bool_value();
    if (name == "number") return v.is_number();
    if (name == "integer") return v.kind() == K::kInt;
    if (name == "float") return v.kind() == K::kFloat;
    if (name == "callable") return v.kind() == K::kCallable;
    if (name == "iterable") {
      return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
    }
    if (name == "sequence") {
      return v.is_undefined() || v.is_string() || (v.is_list() && !v.lazy()) || v.is_dict();
    }
    if (name == "lower" || name == "upper") {
      if (!v.is_string()) return false;
      LORA_ASSIGN_OR_RETURN(std::string mapped, CaseMap(name, v.str(), line));
      bool has_cased = false;
      for (char c : v.str()) has_cased |= std::isalpha(static_cast<unsigned char>(c)) != 0;
      return has_cased && mapped == v.str();
    }
    if (name == "odd" || name == "even") {
      if (v.kind() != K::kInt && v.kind() != K::kBool) {
        return Err(line, absl::StrCat("test '", name, "' needs an integer"));
      }
      return (v.int_value() % 2 != 0) == (name == "odd");
    }
    if (name == "divisibleby") {
      LORA_RETURN_IF_ERROR(need_arg());
      if (v.kind() != K::kInt || args[0].kind() != K::kInt || args[0].int_value() == 0) {
        return Err(line, "test 'divisibleby' needs non-zero integers");
      }
      return v.int_value() % args[0].int_value() == 0;
    }
    if (name == "eq" || name == "equalto" || name == "==" || name == "ne" || name == "!=") {
      LORA_RETURN_IF_ERROR(need_arg());
      const bool eq = Equals(v, args[0]);
      return (name == "ne" || name == "!=") ? !eq : eq;
    }
    if (name == "sameas") {
      LORA_RETURN_IF_ERROR(need_arg());
      // Python identity: singletons compare by value; containers by pointer.
      if (v.kind() != args[0].kind()) return false;
      if (v.is_none() || v.kind() == K::kBool) return Equals(v, args[0]);
      return false;
    }
    if (name == "in") {
      LORA_RETURN_IF_ERROR(need_arg());
      return Contains(args[0], v, line);
    }
    if (name == "lt" || name == "<" || name == "le" || name == "<=" || name == "gt" ||
        name == ">" || name == "ge" || name == ">=") {
      LORA_RETURN_IF_ERROR(need_arg());
      const std::string op = name == "lt"   ? "<"
                             : name == "le" ? "<="
                             : name == "gt" ? ">"
                             : name == "ge" ? ">="
                                            : name;
      LORA_ASSIGN_OR_RETURN(Value r, Binary(op, v, args[0], line));
      return r.bool_value();
    }
    return Err(line, absl::StrCat("unsupported test '", name, "'"));
  }

  const RenderLimits& limits_;
  std::string* out_;
  std::vector<Frame> frames_;
  int64_t iterations_ = 0;
  size_t work_ = 0;
  int loop_depth_ = 0;
  int call_depth_ = 0;
};

}  // namespace

absl::StatusOr<std::string> RenderProgram(const Program& program,
                                          const std::vector<std::pair<std::string, Value>>& context,
                                          const RenderLimits& limits) {
  std::string out;
  Interpreter interpreter(limits, &out);
  LORA_RETURN_IF_ERROR(interpreter.Run(program, context));
  return out;
}

}  // namespace lora::jinja
