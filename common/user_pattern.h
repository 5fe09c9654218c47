// Regular expressions that users supply (lora.target_modules / exclude_modules as a regex,
// rank_pattern / alpha_pattern keys, PEFT adapter configs). They run through RE2: linear time,
// bounded memory, no recursion, so no pattern can crash or stall lorad, lora-worker, loractl or
// lora-train (std::regex recursed once per group and crashed on 20,000 nested parentheses).
//
//   LORA_ASSIGN_OR_RETURN(UserPattern p, UserPattern::Compile(text, "lora.target_modules"));
//   if (p.FullMatch("model.layers.0.self_attn.q_proj")) ...
//
// Invariants: at most kMaxUserPatternBytes of pattern; RE2 syntax (Python's `re` features RE2
// lacks, lookarounds and backreferences, are errors naming the field); errors never quote more
// than a short prefix of the pattern. Copies share the compiled program; matching is
// thread-safe.
#ifndef LORA_COMMON_USER_PATTERN_H_
#define LORA_COMMON_USER_PATTERN_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace re2 {
class RE2;
}  // namespace re2

namespace lora {

inline constexpr size_t kMaxUserPatternBytes = 4096;

class UserPattern {
 public:
  static absl::StatusOr<UserPattern> Compile(const std::string& pattern, const std::string& field);
  // The whole of `text` matches (Python's re.fullmatch).
  bool FullMatch(absl::string_view text) const;

 private:
  explicit UserPattern(std::shared_ptr<const re2::RE2> re) : re_(std::move(re)) {}
  std::shared_ptr<const re2::RE2> re_;
};

}  // namespace lora

#endif  // LORA_COMMON_USER_PATTERN_H_
