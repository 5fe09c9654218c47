#include "client/loractl/completion.h"

#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "lora/v1/job.pb.h"

namespace lora::loractl {
namespace {

// What a flag's value or a command's argument is, for completion.
enum class Value { kNone, kText, kFile, kDirectory, kSpec, kJob, kChoice };

struct Arg {
  Value value = Value::kNone;
  std::vector<std::string> choices;  // kChoice
};

struct Flag {
  std::string short_name;  // "-o" or ""
  std::string long_name;   // "--output" or ""
  std::string help;
  bool repeatable = false;
  Arg arg;  // kNone: a flag without a value
  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    if (!short_name.empty()) names.push_back(short_name);
    if (!long_name.empty()) names.push_back(long_name);
    return names;
  }
};

struct Command {
  std::string name, help;
  std::vector<Flag> flags;
  Arg arg;  // its positional argument (kNone: none)
  std::string arg_name;
};

struct Cli {
  std::vector<Flag> globals;
  std::vector<Command> commands;
};

// Lower-cased enum value names without the prefix and the UNSPECIFIED value: "running".
std::vector<std::string> EnumChoices(const google::protobuf::EnumDescriptor* e,
                                     const std::string& prefix) {
  std::vector<std::string> out;
  for (int i = 0; i < e->value_count(); ++i) {
    std::string name = e->value(i)->name();
    if (absl::EndsWith(name, "UNSPECIFIED")) continue;
    if (absl::StartsWith(name, prefix)) name = name.substr(prefix.size());
    out.push_back(absl::AsciiStrToLower(name));
  }
  return out;
}

// What the value of the flag `long_name` is (the ones that are not free text).
Arg FlagValue(const std::string& long_name) {
  static const std::map<std::string, Arg>* kValues = new std::map<std::string, Arg>{
      {"--output", {Value::kChoice, {"table", "json", "yaml"}}},
      {"--state", {Value::kChoice, EnumChoices(lora::v1::JobState_descriptor(), "")}},
      {"--kind", {Value::kChoice, EnumChoices(lora::v1::JobKind_descriptor(), "JOB_KIND_")}},
      {"--init", {Value::kChoice, {"kaiming", "gaussian"}}},
      {"--token-file", {Value::kFile, {}}},
      {"--tls-ca", {Value::kFile, {}}},
      {"--tls-cert", {Value::kFile, {}}},
      {"--tls-key", {Value::kFile, {}}},
      {"--out", {Value::kDirectory, {}}},
      {"--model", {Value::kDirectory, {}}},
      {"--adapter", {Value::kDirectory, {}}},
  };
  auto it = kValues->find(long_name);
  return it != kValues->end() ? it->second : Arg{Value::kText, {}};
}

// What a command's positional argument is, by its name.
Arg PositionalValue(const std::string& name) {
  if (name == "job") return {Value::kJob, {}};
  if (name == "file") return {Value::kSpec, {}};
  if (name == "shell") return {Value::kChoice, CompletionShells()};
  return {Value::kText, {}};
}

std::vector<Flag> Flags(const CLI::App& app) {
  std::vector<Flag> flags;
  for (const CLI::Option* opt : app.get_options()) {
    if (!opt->nonpositional() || opt->get_group().empty()) continue;
    Flag f;
    if (!opt->get_snames().empty()) f.short_name = "-" + opt->get_snames().front();
    if (!opt->get_lnames().empty()) f.long_name = "--" + opt->get_lnames().front();
    f.help = opt->get_description();
    if (opt->get_expected_min() > 0) {  // it takes a value (a flag expects none)
      f.arg = FlagValue(f.long_name);
      f.repeatable = opt->get_expected_max() > 1;
    }
    flags.push_back(std::move(f));
  }
  return flags;
}

Cli Describe(const CLI::App& app) {
  Cli cli;
  cli.globals = Flags(app);
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    Command c;
    c.name = sub->get_name();
    c.help = sub->get_description();
    for (Flag& f : Flags(*sub)) {
      if (f.long_name == "--help") continue;  // every command has it: a global
      c.flags.push_back(std::move(f));
    }
    for (const CLI::Option* opt : sub->get_options()) {
      if (opt->nonpositional()) continue;
      c.arg_name = opt->get_name(true);
      c.arg = PositionalValue(c.arg_name);
    }
    cli.commands.push_back(std::move(c));
  }
  return cli;
}

std::vector<std::string> CommandNames(const Cli& cli) {
  std::vector<std::string> names;
  for (const Command& c : cli.commands) names.push_back(c.name);
  return names;
}

// Every flag of the CLI by name (globals and each command's), for what their values are.
std::map<std::string, Flag> AllFlags(const Cli& cli) {
  std::map<std::string, Flag> all;
  auto add = [&](const Flag& f) {
    for (const std::string& n : f.Names()) all.emplace(n, f);
  };
  for (const Flag& f : cli.globals) add(f);
  for (const Command& c : cli.commands) {
    for (const Flag& f : c.flags) add(f);
  }
  return all;
}

constexpr char kJobsPipeline[] =
    R"SH(loractl list -o json 2>/dev/null | sed -n 's/.*"name": "jobs\/\([^"]*\)".*/\1/p')SH";

// --- bash

std::string Bash(const Cli& cli) {
  const std::map<std::string, Flag> all = AllFlags(cli);
  std::vector<std::string> globals, valued;
  for (const Flag& f : cli.globals) {
    for (const std::string& n : f.Names()) globals.push_back(n);
  }
  for (const auto& [name, f] : all) {
    if (f.arg.value != Value::kNone) valued.push_back(name);
  }
  // Values of flags, grouped by what they are.
  std::map<std::string, std::vector<std::string>> cases;  // completion command -> flag names
  for (const auto& [name, f] : all) {
    switch (f.arg.value) {
      case Value::kChoice:
        cases[absl::StrCat("COMPREPLY=($(compgen -W \"", absl::StrJoin(f.arg.choices, " "),
                           "\" -- \"$cur\"))")]
            .push_back(name);
        break;
      case Value::kFile:
        cases["COMPREPLY=($(compgen -f -- \"$cur\"))"].push_back(name);
        break;
      case Value::kDirectory:
        cases["COMPREPLY=($(compgen -d -- \"$cur\"))"].push_back(name);
        break;
      case Value::kText:
        cases["COMPREPLY=()"].push_back(name);
        break;
      default:
        break;
    }
  }
  std::string s = absl::StrCat(
      "# bash completion for loractl. Install: loractl completion bash > "
      "/etc/bash_completion.d/loractl\n"
      "# (or, for this shell only: source <(loractl completion bash))\n"
      "_loractl_jobs() {\n  ",
      kJobsPipeline,
      "\n}\n\n"
      "_loractl() {\n"
      "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"\"\n"
      "  [[ $COMP_CWORD -gt 0 ]] && prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n"
      "  local commands=\"",
      absl::StrJoin(CommandNames(cli), " "),
      "\"\n"
      "  local globals=\"",
      absl::StrJoin(globals, " "),
      "\"\n"
      "  # Flags that take a value: the word after one is its value, not the command.\n"
      "  local valued=\" ",
      absl::StrJoin(valued, " "),
      " \"\n"
      "  local cmd=\"\" i w\n"
      "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      "    w=\"${COMP_WORDS[i]}\"\n"
      "    # bash splits --addr=HOST:PORT at '=' and ':'; skip the pieces.\n"
      "    if [[ \"$w\" == \"=\" || \"$w\" == \":\" ]]; then ((i++)); continue; fi\n"
      "    if [[ \"$valued\" == *\" $w \"* ]]; then\n"
      "      [[ \"${COMP_WORDS[i+1]}\" != \"=\" ]] && ((i++))\n"
      "      continue\n"
      "    fi\n"
      "    if [[ \"$w\" != -* ]]; then cmd=\"$w\"; break; fi\n"
      "  done\n"
      "  case \"$prev\" in\n");
  for (const auto& [action, names] : cases)
    absl::StrAppend(&s, "    ", absl::StrJoin(names, "|"), ") ", action, "; return;;\n");
  absl::StrAppend(&s,
                  "  esac\n"
                  "  if [[ -z \"$cmd\" ]]; then\n"
                  "    if [[ \"$cur\" == -* ]]; then COMPREPLY=($(compgen -W \"$globals\" -- "
                  "\"$cur\"))\n"
                  "    else COMPREPLY=($(compgen -W \"$commands\" -- \"$cur\")); fi\n"
                  "    return\n"
                  "  fi\n"
                  "  local flags=\"\"\n"
                  "  case \"$cmd\" in\n");
  for (const Command& c : cli.commands) {
    std::vector<std::string> names;
    for (const Flag& f : c.flags) {
      for (const std::string& n : f.Names()) names.push_back(n);
    }
    if (!names.empty())
      absl::StrAppend(&s, "    ", c.name, ") flags=\"", absl::StrJoin(names, " "), "\";;\n");
  }
  absl::StrAppend(&s,
                  "  esac\n"
                  "  if [[ \"$cur\" == -* ]]; then COMPREPLY=($(compgen -W \"$flags $globals\" -- "
                  "\"$cur\")); return; fi\n"
                  "  case \"$cmd\" in\n");
  for (const Command& c : cli.commands) {
    switch (c.arg.value) {
      case Value::kJob:
        absl::StrAppend(&s, "    ", c.name,
                        ") COMPREPLY=($(compgen -W \"$(_loractl_jobs)\" -- \"$cur\"));;\n");
        break;
      case Value::kSpec:
        absl::StrAppend(&s, "    ", c.name,
                        ") COMPREPLY=($(compgen -f -X '!*.toml' -- \"$cur\") $(compgen -d -- "
                        "\"$cur\"));;\n");
        break;
      case Value::kChoice:
        absl::StrAppend(&s, "    ", c.name, ") COMPREPLY=($(compgen -W \"",
                        absl::StrJoin(c.arg.choices, " "), "\" -- \"$cur\"));;\n");
        break;
      default:
        break;
    }
  }
  absl::StrAppend(&s,
                  "  esac\n"
                  "}\n"
                  "complete -F _loractl loractl\n");
  return s;
}

// --- zsh

// A zsh single-quoted word.
std::string ZshQuote(const std::string& s) {
  return "'" + absl::StrReplaceAll(s, {{"'", "'\\''"}}) + "'";
}

// A description inside an _arguments [explanation].
std::string Explanation(const std::string& help) {
  return absl::StrReplaceAll(help, {{"[", "("}, {"]", ")"}, {"\\", "/"}});
}

std::string ZshAction(const Arg& arg, const std::string& what) {
  switch (arg.value) {
    case Value::kChoice:
      return absl::StrCat(":", what, ":(", absl::StrJoin(arg.choices, " "), ")");
    case Value::kFile:
      return absl::StrCat(":", what, ":_files");
    case Value::kDirectory:
      return absl::StrCat(":", what, ":_files -/");
    case Value::kSpec:
      return absl::StrCat(":", what, ":_files -g \"*.toml\"");
    case Value::kJob:
      return absl::StrCat(":", what, ":_loractl_jobs");
    case Value::kText:
      return absl::StrCat(":", what, ": ");
    case Value::kNone:
      return "";
  }
  return "";
}

// _arguments specs of `flags`, one per line (quoted words), each line starting with `indent`.
std::string ZshFlagSpecs(const std::vector<Flag>& flags, const std::string& indent) {
  std::string s;
  for (const Flag& f : flags) {
    const std::vector<std::string> names = f.Names();
    const std::string exclusive =
        f.repeatable ? "*" : absl::StrCat("(", absl::StrJoin(names, " "), ")");
    const std::string what = f.long_name.empty() ? std::string("value") : f.long_name.substr(2);
    for (const std::string& n : names) {
      const bool takes_value = f.arg.value != Value::kNone;
      const std::string name = takes_value && absl::StartsWith(n, "--") ? n + "=" : n;
      absl::StrAppend(&s, " \\\n", indent,
                      ZshQuote(absl::StrCat(exclusive, name, "[", Explanation(f.help), "]",
                                            ZshAction(f.arg, what))));
    }
  }
  return s;
}

std::string Zsh(const Cli& cli) {
  std::string s = absl::StrCat(
      "#compdef loractl\n"
      "# zsh completion for loractl. Install: loractl completion zsh > \"${fpath[1]}/_loractl\"\n"
      "# (or, for this shell only, after compinit: source <(loractl completion zsh))\n\n"
      "_loractl_jobs() {\n"
      "  local -a jobs\n"
      "  jobs=(${(f)\"$(",
      kJobsPipeline,
      ")\"})\n"
      "  _describe -t jobs 'job' jobs\n"
      "}\n\n"
      "_loractl() {\n"
      "  local curcontext=\"$curcontext\" state line ret=1\n"
      "  typeset -A opt_args\n"
      "  local -a globals commands\n"
      "  globals=(",
      ZshFlagSpecs(cli.globals, "    "),
      "\n  )\n"
      "  commands=(");
  for (const Command& c : cli.commands)
    absl::StrAppend(&s, " \\\n    ", ZshQuote(absl::StrCat(c.name, ":", c.help)));
  absl::StrAppend(&s,
                  "\n  )\n"
                  "  _arguments -C $globals '1:command:->command' '*::argument:->argument' && "
                  "ret=0\n"
                  "  case $state in\n"
                  "    command)\n"
                  "      _describe -t commands 'loractl command' commands && ret=0\n"
                  "      ;;\n"
                  "    argument)\n"
                  "      case $words[1] in\n");
  for (const Command& c : cli.commands) {
    absl::StrAppend(&s, "        ", c.name, ")\n          _arguments $globals",
                    ZshFlagSpecs(c.flags, "            "));
    if (c.arg.value != Value::kNone) {
      absl::StrAppend(&s, " \\\n            ",
                      ZshQuote(absl::StrCat("1", ZshAction(c.arg, c.arg_name))));
    }
    absl::StrAppend(&s, " && ret=0\n          ;;\n");
  }
  absl::StrAppend(&s,
                  "      esac\n"
                  "      ;;\n"
                  "  esac\n"
                  "  return ret\n"
                  "}\n\n"
                  "if [[ \"${funcstack[1]}\" == \"_loractl\" ]]; then\n"
                  "  _loractl \"$@\"\n"
                  "else\n"
                  "  compdef _loractl loractl\n"
                  "fi\n");
  return s;
}

// --- fish

// A fish single-quoted word.
std::string FishQuote(const std::string& s) {
  return "'" + absl::StrReplaceAll(s, {{"\\", "\\\\"}, {"'", "\\'"}}) + "'";
}

std::string FishFlag(const Flag& f, const std::string& condition) {
  std::string s = "complete -c loractl";
  if (!condition.empty()) absl::StrAppend(&s, " -n ", condition);
  if (!f.short_name.empty()) absl::StrAppend(&s, " -s ", f.short_name.substr(1));
  if (!f.long_name.empty()) absl::StrAppend(&s, " -l ", f.long_name.substr(2));
  switch (f.arg.value) {
    case Value::kChoice:
      absl::StrAppend(&s, " -x -a ", FishQuote(absl::StrJoin(f.arg.choices, " ")));
      break;
    case Value::kFile:
      absl::StrAppend(&s, " -r -F");
      break;
    case Value::kDirectory:
      absl::StrAppend(&s, " -x -a '(__fish_complete_directories)'");
      break;
    case Value::kText:
      absl::StrAppend(&s, " -x");
      break;
    default:
      break;
  }
  if (!f.help.empty()) absl::StrAppend(&s, " -d ", FishQuote(f.help));
  return s + "\n";
}

std::string Fish(const Cli& cli) {
  const std::string commands = absl::StrJoin(CommandNames(cli), " ");
  std::string s = absl::StrCat(
      "# fish completion for loractl. Install: loractl completion fish > "
      "~/.config/fish/completions/loractl.fish\n\n"
      "function __loractl_jobs\n"
      "    command -q loractl; or return\n"
      "    loractl list -o json 2>/dev/null | string replace -rf '.*\"name\": \"jobs/([^\"]*)\".*' "
      "'$1'\n"
      "end\n\n"
      "complete -c loractl -f\n");
  for (const Command& c : cli.commands) {
    absl::StrAppend(&s, "complete -c loractl -n \"not __fish_seen_subcommand_from ", commands,
                    "\" -a ", c.name, " -d ", FishQuote(c.help), "\n");
  }
  for (const Flag& f : cli.globals) absl::StrAppend(&s, FishFlag(f, ""));
  for (const Command& c : cli.commands) {
    const std::string when = absl::StrCat("\"__fish_seen_subcommand_from ", c.name, "\"");
    for (const Flag& f : c.flags) absl::StrAppend(&s, FishFlag(f, when));
    switch (c.arg.value) {
      case Value::kJob:
        absl::StrAppend(&s, "complete -c loractl -n ", when, " -a '(__loractl_jobs)'\n");
        break;
      case Value::kSpec:
        absl::StrAppend(&s, "complete -c loractl -n ", when, " -F\n");
        break;
      case Value::kChoice:
        absl::StrAppend(&s, "complete -c loractl -n ", when, " -a ",
                        FishQuote(absl::StrJoin(c.arg.choices, " ")), "\n");
        break;
      default:
        break;
    }
  }
  return s;
}

}  // namespace

const std::vector<std::string>& CompletionShells() {
  static const std::vector<std::string>* kShells =
      new std::vector<std::string>{"bash", "zsh", "fish"};
  return *kShells;
}

absl::StatusOr<std::string> CompletionScript(const CLI::App& app, const std::string& shell) {
  const Cli cli = Describe(app);
  if (shell == "bash") return Bash(cli);
  if (shell == "zsh") return Zsh(cli);
  if (shell == "fish") return Fish(cli);
  return absl::InvalidArgumentError(absl::StrCat("no completion for shell '", shell, "'; one of ",
                                                 absl::StrJoin(CompletionShells(), ", ")));
}

}  // namespace lora::loractl
