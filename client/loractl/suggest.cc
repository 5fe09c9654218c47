#include "client/loractl/suggest.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lora::loractl {

int EditDistance(std::string_view a, std::string_view b) {
  // Optimal string alignment: Levenshtein plus transpositions of adjacent characters.
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1, 0));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

std::vector<std::string> ClosestCommands(const std::string& word,
                                         const std::vector<std::string>& commands) {
  if (word.empty()) return {};
  // A prefix ("check" for "checkpoints") names its commands outright.
  std::vector<std::string> prefixed;
  for (const std::string& c : commands) {
    if (word.size() >= 3 && absl::StartsWith(c, word)) prefixed.push_back(c);
  }
  if (!prefixed.empty()) return prefixed;
  // Otherwise the nearest within a budget that grows with the length: 1 edit for short words,
  // 2 from 5 characters, 3 from 9.
  const int budget = word.size() >= 9 ? 3 : word.size() >= 5 ? 2 : 1;
  int best = budget + 1;
  std::vector<std::string> out;
  for (const std::string& c : commands) {
    const int d = EditDistance(word, c);
    if (d < best) {
      best = d;
      out.clear();
    }
    if (d == best) out.push_back(c);
  }
  return out;
}

std::optional<std::string> UnknownCommand(const CLI::App& app,
                                          const std::vector<std::string>& args) {
  std::string word;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      if (i + 1 < args.size()) word = args[i + 1];
      break;
    }
    if (a.size() > 1 && a[0] == '-') {
      // A global flag; skip its value when it takes one and it is not in this word.
      const size_t eq = a.find('=');
      const std::string name = a.substr(0, eq);
      const bool attached = eq != std::string::npos || (a[1] != '-' && a.size() > 2);
      const CLI::Option* opt =
          app.get_option_no_throw(attached && a[1] != '-' ? a.substr(0, 2) : name);
      if (opt == nullptr) return std::nullopt;  // an unknown flag: CLI11 says so
      if (opt->get_expected_min() > 0 && !attached) ++i;
      continue;
    }
    word = a;
    break;
  }
  if (word.empty()) return std::nullopt;
  std::vector<std::string> commands;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    if (sub->check_name(word)) return std::nullopt;
    commands.push_back(sub->get_name());
  }
  const std::vector<std::string> close = ClosestCommands(word, commands);
  if (close.empty()) {
    return absl::StrCat("unknown command '", word, "'; the commands are ",
                        absl::StrJoin(commands, ", "), " (loractl --help)");
  }
  std::vector<std::string> quoted;
  for (const std::string& c : close) quoted.push_back("'" + c + "'");
  return absl::StrCat("unknown command '", word, "'; did you mean ", absl::StrJoin(quoted, " or "),
                      "?");
}

}  // namespace lora::loractl
