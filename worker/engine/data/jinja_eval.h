// Renders a parsed Jinja2 template (jinja_parser.h) the way transformers' chat-template
// environment does: an ImmutableSandboxedEnvironment with loop controls, the default Undefined,
// transformers' `tojson`, and the globals `raise_exception`, `strftime_now`, `namespace`,
// `range` and `dict`.
//
//   std::vector<std::pair<std::string, Value>> context = {{"messages", messages}, ...};
//   LORA_ASSIGN_OR_RETURN(std::string text, RenderProgram(*program, context, RenderLimits()));
//
// Everything a template or its data controls is bounded by RenderLimits; exceeding a bound, an
// unsupported operation, or a type error is an INVALID_ARGUMENT naming the template line.
// `raise_exception(msg)` is an INVALID_ARGUMENT whose message ends with the template's `msg`.
#ifndef LORA_WORKER_ENGINE_DATA_JINJA_EVAL_H_
#define LORA_WORKER_ENGINE_DATA_JINJA_EVAL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/jinja_parser.h"
#include "worker/engine/data/jinja_value.h"

namespace lora::jinja {

struct RenderLimits {
  size_t max_output_bytes = 16u << 20;
  // Loop iterations and range() sizes, summed over the whole render.
  int64_t max_loop_iterations = 1'000'000;
  // Nested macro calls (each also nests statement and expression evaluation).
  int max_call_depth = 16;
  // Bytes of strings built by operators, filters and methods, summed over the whole render:
  // bounds the quadratic cost of growing a string in a loop.
  size_t max_string_work = 256u << 20;
};

absl::StatusOr<std::string> RenderProgram(const Program& program,
                                          const std::vector<std::pair<std::string, Value>>& context,
                                          const RenderLimits& limits);

}  // namespace lora::jinja

#endif  // LORA_WORKER_ENGINE_DATA_JINJA_EVAL_H_
