#include "common/user_pattern.h"

#include "absl/strings/str_cat.h"
#include "re2/re2.h"

namespace lora {
namespace {

// RE2's own bound on the compiled program; patterns beyond it fail to compile instead of
// growing memory.
constexpr int64_t kMaxProgramBytes = 8 << 20;

}  // namespace

absl::StatusOr<UserPattern> UserPattern::Compile(const std::string& pattern,
                                                 const std::string& field) {
  if (pattern.size() > kMaxUserPatternBytes) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": regular expression of ",
                                                   pattern.size(), " bytes; at most ",
                                                   kMaxUserPatternBytes));
  }
  RE2::Options options;
  options.set_log_errors(false);
  options.set_max_mem(kMaxProgramBytes);
  auto re = std::make_shared<const re2::RE2>(pattern, options);
  if (!re->ok()) {
    // RE2's message quotes the offending fragment; keep it short.
    std::string why = re->error();
    if (why.size() > 120) why = absl::StrCat(why.substr(0, 120), "...");
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": invalid regular expression (RE2 syntax): ", why));
  }
  return UserPattern(std::move(re));
}

bool UserPattern::FullMatch(absl::string_view text) const {
  // Debian 12's RE2 takes its own StringPiece, not absl::string_view.
  return RE2::FullMatch(re2::StringPiece(text.data(), text.size()), *re_);
}

}  // namespace lora
