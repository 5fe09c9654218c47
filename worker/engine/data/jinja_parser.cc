#include "worker/engine/data/jinja_parser.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/engine/data/jinja_lexer.h"

namespace lora::jinja {
namespace {

// What jinja_eval implements; anything else fails at parse time, as Jinja itself does for
// unknown filters and tests.
const absl::flat_hash_set<std::string>& SupportedFilters() {
  static const auto* const kFilters = new absl::flat_hash_set<std::string>{
      "abs",    "capitalize", "count",      "d",       "default", "e",      "escape", "first",
      "float",  "int",        "items",      "join",    "last",    "length", "list",   "lower",
      "map",    "reject",     "rejectattr", "replace", "reverse", "safe",   "select", "selectattr",
      "string", "title",      "tojson",     "trim",    "upper"};
  return *kFilters;
}

const absl::flat_hash_set<std::string>& SupportedTests() {
  static const auto* const kTests = new absl::flat_hash_set<std::string>{
      "boolean", "callable", "defined",  "divisibleby", "eq",        "equalto", "==",
      "even",    "false",    "float",    "ge",          "gt",        ">=",      ">",
      "in",      "integer",  "iterable", "le",          "lt",        "<=",      "<",
      "lower",   "mapping",  "ne",       "!=",          "none",      "number",  "odd",
      "sameas",  "sequence", "string",   "true",        "undefined", "upper"};
  return *kTests;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  absl::StatusOr<Body> ParseAll() {
    std::string end;
    LORA_ASSIGN_OR_RETURN(Body body, ParseBody({}, "", 0, &end));
    return body;
  }

 private:
  const Token& Peek(size_t ahead = 0) const { return t_[std::min(p_ + ahead, t_.size() - 1)]; }
  const Token& Next() {
    const Token& t = Peek();
    if (p_ < t_.size() - 1) ++p_;
    return t;
  }
  bool IsOp(absl::string_view op, size_t ahead = 0) const {
    return Peek(ahead).kind == TokenKind::kOperator && Peek(ahead).text == op;
  }
  bool IsName(absl::string_view name, size_t ahead = 0) const {
    return Peek(ahead).kind == TokenKind::kName && Peek(ahead).text == name;
  }
  absl::Status Error(int line, absl::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat("chat template line ", line, ": ", why));
  }
  std::string Describe(const Token& t) const {
    switch (t.kind) {
      case TokenKind::kText:
        return "template text";
      case TokenKind::kPrintBegin:
        return "'{{'";
      case TokenKind::kPrintEnd:
        return "'}}'";
      case TokenKind::kBlockBegin:
        return "'{%'";
      case TokenKind::kBlockEnd:
        return "'%}'";
      case TokenKind::kName:
        return absl::StrCat("'", t.text, "'");
      case TokenKind::kString:
        return "a string";
      case TokenKind::kInt:
      case TokenKind::kFloat:
        return "a number";
      case TokenKind::kOperator:
        return absl::StrCat("'", t.text, "'");
      case TokenKind::kEnd:
        return "the end of the template";
    }
    return "?";
  }
  absl::Status Expect(TokenKind kind, absl::string_view what) {
    if (Peek().kind != kind) {
      return Error(Peek().line, absl::StrCat("expected ", what, ", found ", Describe(Peek())));
    }
    Next();
    return absl::OkStatus();
  }
  absl::Status ExpectOp(absl::string_view op) {
    if (!IsOp(op)) {
      return Error(Peek().line, absl::StrCat("expected '", op, "', found ", Describe(Peek())));
    }
    Next();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().kind != TokenKind::kName) {
      return Error(Peek().line, absl::StrCat("expected a name, found ", Describe(Peek())));
    }
    return Next().text;
  }
  absl::Status EndTag() { return Expect(TokenKind::kBlockEnd, "'%}'"); }

  // Parses statements until one of `ends` opens a block tag; leaves the cursor after that tag
  // name and stores it in `*found`. `opener`/`opener_line` name the enclosing block for errors.
  absl::StatusOr<Body> ParseBody(const std::vector<std::string>& ends, absl::string_view opener,
                                 int opener_line, std::string* found) {
    if (++depth_ > kMaxNesting) {
      return Error(Peek().line, absl::StrCat("blocks nest deeper than ", kMaxNesting, " levels"));
    }
    Body body;
    while (true) {
      const Token& t = Peek();
      if (t.kind == TokenKind::kEnd) {
        if (!ends.empty()) {
          return Error(opener_line, absl::StrCat("'", opener, "' is never closed (expected '",
                                                 ends.back(), "')"));
        }
        break;
      }
      if (t.kind == TokenKind::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->line = t.line;
        s->text = t.text;
        Next();
        body.push_back(std::move(s));
        continue;
      }
      if (t.kind == TokenKind::kPrintBegin) {
        Next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kPrint;
        s->line = t.line;
        LORA_ASSIGN_OR_RETURN(s->expr, ParseTupleOrExpression());
        LORA_RETURN_IF_ERROR(Expect(TokenKind::kPrintEnd, "'}}'"));
        body.push_back(std::move(s));
        continue;
      }
      if (t.kind != TokenKind::kBlockBegin) {
        return Error(t.line, absl::StrCat("unexpected ", Describe(t)));
      }
      Next();
      const int line = Peek().line;
      LORA_ASSIGN_OR_RETURN(std::string tag, ExpectName());
      if (std::find(ends.begin(), ends.end(), tag) != ends.end()) {
        *found = tag;
        --depth_;
        return body;
      }
      LORA_RETURN_IF_ERROR(ParseTag(tag, line, &body));
    }
    --depth_;
    return body;
  }

  absl::Status ParseTag(const std::string& tag, int line, Body* body) {
    auto s = std::make_unique<Stmt>();
    s->line = line;
    std::string found;
    if (tag == "if") {
      s->kind = Stmt::Kind::kIf;
      LORA_ASSIGN_OR_RETURN(ExprPtr cond, ParseExpression());
      LORA_RETURN_IF_ERROR(EndTag());
      while (true) {
        LORA_ASSIGN_OR_RETURN(Body branch,
                              ParseBody({"elif", "else", "endif"}, "if", line, &found));
        s->branches.emplace_back(std::move(cond), std::move(branch));
        if (found == "elif") {
          LORA_ASSIGN_OR_RETURN(cond, ParseExpression());
          LORA_RETURN_IF_ERROR(EndTag());
          continue;
        }
        if (found == "else") {
          LORA_RETURN_IF_ERROR(EndTag());
          LORA_ASSIGN_OR_RETURN(s->else_body, ParseBody({"endif"}, "if", line, &found));
        }
        break;
      }
      LORA_RETURN_IF_ERROR(EndTag());
    } else if (tag == "for") {
      s->kind = Stmt::Kind::kFor;
      do {
        LORA_ASSIGN_OR_RETURN(std::string target, ExpectName());
        s->targets.push_back(std::move(target));
      } while (IsOp(",") && (Next(), true));
      if (!IsName("in")) return Error(Peek().line, "expected 'in' in 'for'");
      Next();
      LORA_ASSIGN_OR_RETURN(s->expr, ParseTupleOrExpression(/*with_condexpr=*/false));
      if (IsName("if")) {
        Next();
        LORA_ASSIGN_OR_RETURN(s->filter, ParseExpression());
      }
      if (IsName("recursive")) return Error(line, "unsupported construct: recursive for loops");
      LORA_RETURN_IF_ERROR(EndTag());
      LORA_ASSIGN_OR_RETURN(s->body, ParseBody({"else", "endfor"}, "for", line, &found));
      if (found == "else") {
        LORA_RETURN_IF_ERROR(EndTag());
        LORA_ASSIGN_OR_RETURN(s->else_body, ParseBody({"endfor"}, "for", line, &found));
      }
      LORA_RETURN_IF_ERROR(EndTag());
    } else if (tag == "set") {
      LORA_ASSIGN_OR_RETURN(std::string target, ExpectName());
      s->targets.push_back(std::move(target));
      if (IsOp(".")) {
        Next();
        LORA_ASSIGN_OR_RETURN(s->attr, ExpectName());
      } else {
        while (IsOp(",")) {
          Next();
          LORA_ASSIGN_OR_RETURN(std::string more, ExpectName());
          s->targets.push_back(std::move(more));
        }
      }
      if (IsOp("=")) {
        Next();
        s->kind = Stmt::Kind::kSet;
        LORA_ASSIGN_OR_RETURN(s->expr, ParseTupleOrExpression());
        LORA_RETURN_IF_ERROR(EndTag());
      } else {
        if (!s->attr.empty() || s->targets.size() != 1) {
          return Error(line, "expected '=' in 'set'");
        }
        if (IsOp("|")) return Error(line, "unsupported construct: filtered block 'set'");
        s->kind = Stmt::Kind::kSetBlock;
        LORA_RETURN_IF_ERROR(EndTag());
        LORA_ASSIGN_OR_RETURN(s->body, ParseBody({"endset"}, "set", line, &found));
        LORA_RETURN_IF_ERROR(EndTag());
      }
    } else if (tag == "macro") {
      s->kind = Stmt::Kind::kMacro;
      LORA_ASSIGN_OR_RETURN(s->text, ExpectName());
      LORA_RETURN_IF_ERROR(ExpectOp("("));
      while (!IsOp(")")) {
        LORA_ASSIGN_OR_RETURN(std::string param, ExpectName());
        s->targets.push_back(std::move(param));
        ExprPtr def;
        if (IsOp("=")) {
          Next();
          LORA_ASSIGN_OR_RETURN(def, ParseExpression());
        }
        s->defaults.push_back(std::move(def));
        if (!IsOp(",")) break;
        Next();
      }
      LORA_RETURN_IF_ERROR(ExpectOp(")"));
      LORA_RETURN_IF_ERROR(EndTag());
      LORA_ASSIGN_OR_RETURN(s->body, ParseBody({"endmacro"}, "macro", line, &found));
      if (Peek().kind == TokenKind::kName) Next();  // `endmacro name` is allowed
      LORA_RETURN_IF_ERROR(EndTag());
    } else if (tag == "break" || tag == "continue") {
      s->kind = tag == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      LORA_RETURN_IF_ERROR(EndTag());
    } else if (tag == "generation") {
      // transformers' assistant-mask marker: renders its body unchanged.
      LORA_RETURN_IF_ERROR(EndTag());
      LORA_ASSIGN_OR_RETURN(Body inner, ParseBody({"endgeneration"}, "generation", line, &found));
      LORA_RETURN_IF_ERROR(EndTag());
      for (auto& stmt : inner) body->push_back(std::move(stmt));
      return absl::OkStatus();
    } else if (tag == "elif" || tag == "else" || absl::string_view(tag).substr(0, 3) == "end") {
      return Error(line, absl::StrCat("unexpected '", tag, "' (no open block it could close)"));
    } else {
      return Error(line, absl::StrCat("unsupported construct: '{% ", tag, " %}'"));
    }
    body->push_back(std::move(s));
    return absl::OkStatus();
  }

  ExprPtr Make(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // `a, b` without brackets is a tuple, as in Jinja's parse_tuple.
  absl::StatusOr<ExprPtr> ParseTupleOrExpression(bool with_condexpr = true) {
    const int line = Peek().line;
    LORA_ASSIGN_OR_RETURN(ExprPtr first, with_condexpr ? ParseExpression() : ParseOr());
    if (!IsOp(",")) return first;
    ExprPtr tuple = Make(Expr::Kind::kList, line);
    tuple->tuple = true;
    tuple->args.push_back(std::move(first));
    while (IsOp(",")) {
      Next();
      if (Peek().kind == TokenKind::kBlockEnd || Peek().kind == TokenKind::kPrintEnd ||
          IsName("if")) {
        break;
      }
      LORA_ASSIGN_OR_RETURN(ExprPtr item, with_condexpr ? ParseExpression() : ParseOr());
      tuple->args.push_back(std::move(item));
    }
    return tuple;
  }

  absl::StatusOr<ExprPtr> ParseExpression() {
    if (++depth_ > kMaxNesting) {
      return Error(Peek().line,
                   absl::StrCat("expressions nest deeper than ", kMaxNesting, " levels"));
    }
    const int line = Peek().line;
    LORA_ASSIGN_OR_RETURN(ExprPtr value, ParseOr());
    while (IsName("if")) {
      Next();
      ExprPtr cond_expr = Make(Expr::Kind::kCond, line);
      LORA_ASSIGN_OR_RETURN(ExprPtr cond, ParseOr());
      ExprPtr otherwise;
      if (IsName("else")) {
        Next();
        LORA_ASSIGN_OR_RETURN(otherwise, ParseExpression());
      }
      cond_expr->args.push_back(std::move(value));
      cond_expr->args.push_back(std::move(cond));
      cond_expr->args.push_back(std::move(otherwise));
      value = std::move(cond_expr);
    }
    --depth_;
    return value;
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    LORA_ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
    while (IsName("or")) {
      const int line = Next().line;
      LORA_ASSIGN_OR_RETURN(ExprPtr right, ParseAnd());
      ExprPtr e = Make(Expr::Kind::kOr, line);
      e->args.push_back(std::move(left));
      e->args.push_back(std::move(right));
      left = std::move(e);
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    LORA_ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
    while (IsName("and")) {
      const int line = Next().line;
      LORA_ASSIGN_OR_RETURN(ExprPtr right, ParseNot());
      ExprPtr e = Make(Expr::Kind::kAnd, line);
      e->args.push_back(std::move(left));
      e->args.push_back(std::move(right));
      left = std::move(e);
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName("not")) {
      const int line = Next().line;
      if (++depth_ > kMaxNesting) return Error(line, "'not' nests too deep");
      LORA_ASSIGN_OR_RETURN(ExprPtr operand, ParseNot());
      --depth_;
      ExprPtr e = Make(Expr::Kind::kNot, line);
      e->args.push_back(std::move(operand));
      return e;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    LORA_ASSIGN_OR_RETURN(ExprPtr left, ParseMath1());
    while (true) {
      std::string op;
      const int line = Peek().line;
      if (Peek().kind == TokenKind::kOperator &&
          (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" || Peek().text == ">" ||
           Peek().text == "<=" || Peek().text == ">=")) {
        op = Next().text;
      } else if (IsName("in")) {
        Next();
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        Next();
        Next();
        op = "not in";
      } else {
        break;
      }
      LORA_ASSIGN_OR_RETURN(ExprPtr right, ParseMath1());
      ExprPtr e = Make(Expr::Kind::kBinary, line);
      e->name = op;
      e->args.push_back(std::move(left));
      e->args.push_back(std::move(right));
      left = std::move(e);
    }
    return left;
  }

  absl::StatusOr<ExprPtr> Binary(ExprPtr left, std::string op, int line, ExprPtr right) {
    ExprPtr e = Make(Expr::Kind::kBinary, line);
    e->name = std::move(op);
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  absl::StatusOr<ExprPtr> ParseMath1() {
    LORA_ASSIGN_OR_RETURN(ExprPtr left, ParseConcat());
    while (IsOp("+") || IsOp("-")) {
      const Token& op = Next();
      LORA_ASSIGN_OR_RETURN(ExprPtr right, ParseConcat());
      LORA_ASSIGN_OR_RETURN(left, Binary(std::move(left), op.text, op.line, std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseConcat() {
    LORA_ASSIGN_OR_RETURN(ExprPtr left, ParseMath2());
    while (IsOp("~")) {
      const Token& op = Next();
      LORA_ASSIGN_OR_RETURN(ExprPtr right, ParseMath2());
      LORA_ASSIGN_OR_RETURN(left, Binary(std::move(left), "~", op.line, std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseMath2() {
    LORA_ASSIGN_OR_RETURN(ExprPtr left, ParsePow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token& op = Next();
      LORA_ASSIGN_OR_RETURN(ExprPtr right, ParsePow());
      LORA_ASSIGN_OR_RETURN(left, Binary(std::move(left), op.text, op.line, std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParsePow() {
    LORA_ASSIGN_OR_RETURN(ExprPtr left, ParseUnary(true));
    while (IsOp("**")) {
      const Token& op = Next();
      LORA_ASSIGN_OR_RETURN(ExprPtr right, ParseUnary(true));
      LORA_ASSIGN_OR_RETURN(left, Binary(std::move(left), "**", op.line, std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    if (++depth_ > kMaxNesting) {
      return Error(Peek().line,
                   absl::StrCat("expressions nest deeper than ", kMaxNesting, " levels"));
    }
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const Token& op = Next();
      LORA_ASSIGN_OR_RETURN(ExprPtr operand, ParseUnary(false));
      node = Make(op.text == "-" ? Expr::Kind::kNeg : Expr::Kind::kPos, op.line);
      node->args.push_back(std::move(operand));
    } else {
      LORA_ASSIGN_OR_RETURN(node, ParsePrimary());
    }
    LORA_ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
    if (with_filter) {
      LORA_ASSIGN_OR_RETURN(node, ParseFilterAndTest(std::move(node)));
    }
    --depth_;
    return node;
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& t = Peek();
    switch (t.kind) {
      case TokenKind::kName: {
        Next();
        if (t.text == "true" || t.text == "True") return Literal(Value::Bool(true), t.line);
        if (t.text == "false" || t.text == "False") return Literal(Value::Bool(false), t.line);
        if (t.text == "none" || t.text == "None") return Literal(Value::None(), t.line);
        ExprPtr e = Make(Expr::Kind::kName, t.line);
        e->name = t.text;
        return e;
      }
      case TokenKind::kString: {
        std::string s;
        const int line = t.line;
        while (Peek().kind == TokenKind::kString) s += Next().text;  // adjacent literals join
        return Literal(Value::String(std::move(s)), line);
      }
      case TokenKind::kInt:
        Next();
        return Literal(Value::Int(t.int_value), t.line);
      case TokenKind::kFloat:
        Next();
        return Literal(Value::Float(t.float_value), t.line);
      case TokenKind::kOperator:
        if (t.text == "(") {
          Next();
          if (IsOp(")")) {  // the empty tuple
            Next();
            ExprPtr empty = Make(Expr::Kind::kList, t.line);
            empty->tuple = true;
            return empty;
          }
          LORA_ASSIGN_OR_RETURN(ExprPtr inner, ParseTupleOrExpression());
          LORA_RETURN_IF_ERROR(ExpectOp(")"));
          return inner;
        }
        if (t.text == "[") {
          Next();
          ExprPtr list = Make(Expr::Kind::kList, t.line);
          while (!IsOp("]")) {
            LORA_ASSIGN_OR_RETURN(ExprPtr item, ParseExpression());
            list->args.push_back(std::move(item));
            if (!IsOp(",")) break;
            Next();
          }
          LORA_RETURN_IF_ERROR(ExpectOp("]"));
          return list;
        }
        if (t.text == "{") {
          Next();
          ExprPtr dict = Make(Expr::Kind::kDict, t.line);
          while (!IsOp("}")) {
            LORA_ASSIGN_OR_RETURN(ExprPtr key, ParseExpression());
            LORA_RETURN_IF_ERROR(ExpectOp(":"));
            LORA_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
            dict->args.push_back(std::move(key));
            dict->args.push_back(std::move(value));
            if (!IsOp(",")) break;
            Next();
          }
          LORA_RETURN_IF_ERROR(ExpectOp("}"));
          return dict;
        }
        break;
      default:
        break;
    }
    return Error(t.line, absl::StrCat("unexpected ", Describe(t), " in an expression"));
  }

  ExprPtr Literal(Value v, int line) {
    ExprPtr e = Make(Expr::Kind::kLiteral, line);
    e->literal = std::move(v);
    return e;
  }

  absl::Status ParseCallArgs(Expr* call) {
    LORA_RETURN_IF_ERROR(ExpectOp("("));
    while (!IsOp(")")) {
      if (Peek().kind == TokenKind::kName && IsOp("=", 1)) {
        std::string key = Next().text;
        Next();
        LORA_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
        call->kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        if (!call->kwargs.empty()) {
          return Error(Peek().line, "positional argument after a keyword argument");
        }
        if (IsOp("*") || IsOp("**")) {
          return Error(Peek().line, "unsupported construct: '*args' / '**kwargs' in a call");
        }
        LORA_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
        call->args.push_back(std::move(value));
      }
      if (!IsOp(",")) break;
      Next();
    }
    return ExpectOp(")");
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    while (true) {
      const int line = Peek().line;
      if (IsOp(".")) {
        Next();
        ExprPtr e;
        if (Peek().kind == TokenKind::kInt) {  // `x.0` is `x[0]`
          e = Make(Expr::Kind::kItem, line);
          e->args.push_back(std::move(node));
          e->args.push_back(Literal(Value::Int(Next().int_value), line));
        } else {
          e = Make(Expr::Kind::kAttr, line);
          LORA_ASSIGN_OR_RETURN(e->name, ExpectName());
          e->args.push_back(std::move(node));
        }
        node = std::move(e);
      } else if (IsOp("[")) {
        Next();
        ExprPtr bounds[3];
        bool is_slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!IsOp(":") && !IsOp("]")) {
            LORA_ASSIGN_OR_RETURN(bounds[k], ParseExpression());
          }
          if (k < 2 && IsOp(":")) {
            Next();
            is_slice = true;
          } else {
            break;
          }
        }
        LORA_RETURN_IF_ERROR(ExpectOp("]"));
        ExprPtr e;
        if (is_slice) {
          e = Make(Expr::Kind::kSlice, line);
          e->args.push_back(std::move(node));
          for (auto& b : bounds) e->args.push_back(std::move(b));
        } else {
          if (bounds[0] == nullptr) return Error(line, "empty subscript '[]'");
          e = Make(Expr::Kind::kItem, line);
          e->args.push_back(std::move(node));
          e->args.push_back(std::move(bounds[0]));
        }
        node = std::move(e);
      } else if (IsOp("(")) {
        ExprPtr e = Make(Expr::Kind::kCall, line);
        e->args.push_back(std::move(node));
        LORA_RETURN_IF_ERROR(ParseCallArgs(e.get()));
        node = std::move(e);
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseFilterAndTest(ExprPtr node) {
    while (true) {
      if (IsOp("|")) {
        const int line = Next().line;
        LORA_ASSIGN_OR_RETURN(std::string name, ExpectName());
        while (IsOp(".")) {  // dotted filter names exist in Jinja; none of ours have dots
          Next();
          LORA_ASSIGN_OR_RETURN(std::string more, ExpectName());
          name += "." + more;
        }
        if (!SupportedFilters().contains(name)) {
          return Error(line, absl::StrCat("unsupported filter '", name, "'"));
        }
        ExprPtr e = Make(Expr::Kind::kFilter, line);
        e->name = name;
        e->args.push_back(std::move(node));
        if (IsOp("(")) LORA_RETURN_IF_ERROR(ParseCallArgs(e.get()));
        node = std::move(e);
      } else if (IsName("is")) {
        const int line = Next().line;
        ExprPtr e = Make(Expr::Kind::kTest, line);
        if (IsName("not")) {
          Next();
          e->negated = true;
        }
        std::string name;
        if (Peek().kind == TokenKind::kName) {
          name = Next().text;
        } else if (Peek().kind == TokenKind::kOperator && SupportedTests().contains(Peek().text)) {
          name = Next().text;
        } else {
          return Error(line,
                       absl::StrCat("expected a test name after 'is', found ", Describe(Peek())));
        }
        if (name == "none" || name == "true" || name == "false") {
          // `is none` etc. name tests, not the literals
        }
        if (!SupportedTests().contains(name)) {
          return Error(line, absl::StrCat("unsupported test '", name, "'"));
        }
        e->name = name;
        e->args.push_back(std::move(node));
        if (IsOp("(")) {
          LORA_RETURN_IF_ERROR(ParseCallArgs(e.get()));
        } else {
          // One bare argument, as in `is equalto 'x'` or `is sameas false`.
          const Token& n = Peek();
          const bool starts_arg = n.kind == TokenKind::kString || n.kind == TokenKind::kInt ||
                                  n.kind == TokenKind::kFloat || IsOp("[") || IsOp("{") ||
                                  (n.kind == TokenKind::kName && n.text != "else" &&
                                   n.text != "or" && n.text != "and" && n.text != "if" &&
                                   n.text != "is" && n.text != "in" && n.text != "not");
          if (starts_arg) {
            LORA_ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
            LORA_ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
            e->args.push_back(std::move(arg));
          }
        }
        node = std::move(e);
      } else {
        return node;
      }
    }
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Program>> ParseTemplate(absl::string_view source) {
  LORA_ASSIGN_OR_RETURN(std::vector<Token> tokens, Lex(source));
  Parser parser(std::move(tokens));
  auto program = std::make_unique<Program>();
  LORA_ASSIGN_OR_RETURN(program->body, parser.ParseAll());
  return program;
}

}  // namespace lora::jinja
