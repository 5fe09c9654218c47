// Parser for the Jinja2 subset of chat templates: the syntax tree and the function that builds
// it from jinja_lexer's tokens.
//
//   LORA_ASSIGN_OR_RETURN(std::unique_ptr<Program> program, ParseTemplate(source));
//
// Everything outside the subset (include, extends, import, block, call, filter blocks, raw,
// recursive loops, unknown filters and tests) is an INVALID_ARGUMENT naming the construct and
// its line, at parse time, so an unsupported template never renders partially. Nesting is
// bounded by kMaxNesting so that hostile templates cannot exhaust the stack.
#ifndef LORA_WORKER_ENGINE_DATA_JINJA_PARSER_H_
#define LORA_WORKER_ENGINE_DATA_JINJA_PARSER_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/data/jinja_value.h"

namespace lora::jinja {

inline constexpr int kMaxNesting = 100;

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,  // literal
    kName,     // name
    kAttr,     // args[0].name
    kItem,     // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]], each bound may be null
    kCall,     // args[0](args[1..], kwargs)
    kFilter,   // args[0] | name(args[1..], kwargs)
    kTest,     // args[0] is [not] name(args[1..])
    kNeg,
    kPos,
    kNot,
    kBinary,  // args[0] name args[1]; name is the operator ("not in" included)
    kAnd,
    kOr,
    kCond,  // args[0] if args[1] else args[2] (may be null)
    kList,  // also tuples
    kDict,  // args alternate key, value
  };
  Kind kind = Kind::kLiteral;
  int line = 0;
  Value literal;
  std::string name;
  bool negated = false;
  bool tuple = false;  // kList written as a tuple
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind { kText, kPrint, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue };
  Kind kind = Kind::kText;
  int line = 0;
  std::string text;                                // kText
  ExprPtr expr;                                    // kPrint, kFor (iterable), kSet (value)
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf: if and elif
  Body body;                                       // kFor, kSetBlock, kMacro
  Body else_body;                                  // kIf, kFor
  std::vector<std::string> targets;  // kFor loop variables, kSet/kSetBlock names, kMacro params
  std::string attr;                  // kSet of `ns.attr`: targets[0] is the namespace
  ExprPtr filter;                    // kFor `if` condition
  std::vector<ExprPtr> defaults;     // kMacro parameter defaults (null: required)
};

struct Program {
  Body body;
};

absl::StatusOr<std::unique_ptr<Program>> ParseTemplate(absl::string_view source);

}  // namespace lora::jinja

#endif  // LORA_WORKER_ENGINE_DATA_JINJA_PARSER_H_
