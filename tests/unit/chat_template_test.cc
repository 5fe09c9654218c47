// Chat templates judged by transformers: tests/python/chat_templates.py renders every template
// (the real ones in tests/data/chat_templates and feature snippets) over varied conversations
// with apply_chat_template; every rendering here must match byte for byte, and the trained
// spans must be the ones the same definition gives with transformers' renderings.
#include "worker/engine/data/chat_template.h"

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/data/jinja_eval.h"

namespace lora {
namespace {

using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs the reference once per process. A missing Python or library fails the tests: transformers
// is the only judge of these renderings.
const nlohmann::json& Reference() {
  static const nlohmann::json* const kReference = [] {
    char dir_template[] = "/tmp/chat_template_test.XXXXXX";
    const char* dir = mkdtemp(dir_template);
    auto* j = new nlohmann::json();
    if (dir == nullptr) return j;
    const std::string out = std::string(dir) + "/expected.json";
    const std::string cmd =
        std::string("HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false ") + LORA_PYTHON + " " +
        LORA_SOURCE_DIR + "/tests/python/chat_templates.py --templates " + LORA_SOURCE_DIR +
        "/tests/data/chat_templates --out " + out + " > " + dir + "/make.log 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      ADD_FAILURE() << "chat_templates.py failed (LORA_PYTHON=" << LORA_PYTHON
                    << " needs transformers and tokenizers from requirements.txt):\n"
                    << ReadFile(std::string(dir) + "/make.log");
      return j;
    }
    *j = nlohmann::json::parse(ReadFile(out));
    return j;
  }();
  return *kReference;
}

std::vector<ChatMessage> Messages(const nlohmann::json& conv) {
  std::vector<ChatMessage> out;
  for (const auto& m : conv) {
    ChatMessage msg{m.at("role").get<std::string>(), m.at("content").get<std::string>()};
    msg.trained = m.value("weight", 1) != 0;
    out.push_back(std::move(msg));
  }
  return out;
}

const ChatTemplate& Template(const std::string& name) {
  static auto* const cache = new std::map<std::string, ChatTemplate>();
  auto it = cache->find(name);
  if (it == cache->end()) {
    const std::string source = Reference().at("templates").at(name).get<std::string>();
    absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(source);
    EXPECT_TRUE(t.ok()) << name << ": " << t.status();
    if (!t.ok()) t = ChatTemplate::Parse("");
    it = cache->emplace(name, *std::move(t)).first;
  }
  return it->second;
}

TEST(ChatTemplateReference, EveryRenderingMatchesTransformers) {
  const nlohmann::json& ref = Reference();
  ASSERT_TRUE(ref.contains("cases"));
  const std::string bos = ref.at("bos_token"), eos = ref.at("eos_token");
  int texts = 0, errors = 0;
  for (const auto& c : ref.at("cases")) {
    const std::string tname = c.at("template");
    const std::string cname = c.at("conversation");
    const bool gen = c.at("add_generation_prompt");
    const std::string where = absl::StrCat(tname, " x ", cname, " gen=", gen);
    absl::StatusOr<std::string> got =
        Template(tname).Render(Messages(ref.at("conversations").at(cname)), gen, bos, eos);
    if (c.contains("error")) {
      ++errors;
      ASSERT_FALSE(got.ok()) << where << ": transformers failed with '" << c.at("error")
                             << "' but we rendered:\n"
                             << *got;
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << where;
      if (c.at("error_type") == "TemplateError") {  // raise_exception: its message carries over
        EXPECT_THAT(got.status().message(), HasSubstr(c.at("error").get<std::string>())) << where;
      }
    } else {
      ++texts;
      ASSERT_TRUE(got.ok()) << where << ": " << got.status();
      EXPECT_EQ(*got, c.at("text").get<std::string>()) << where;
    }
  }
  std::cout << "[ chat templates ] " << ref.at("templates").size() << " templates x "
            << ref.at("conversations").size() << " conversations x 2: " << texts << " texts equal, "
            << errors << " errors as in transformers\n";
  EXPECT_GT(texts, 600);
}

TEST(ChatTemplateReference, TrainedSpansAreTheAssistantTurns) {
  const nlohmann::json& ref = Reference();
  ASSERT_TRUE(ref.contains("training"));
  const std::string bos = ref.at("bos_token"), eos = ref.at("eos_token");
  int spans = 0, refusals = 0;
  for (const auto& c : ref.at("training")) {
    const std::string tname = c.at("template");
    const std::string cname = c.at("conversation");
    const std::string where = absl::StrCat(tname, " x ", cname);
    const std::vector<ChatMessage> messages = Messages(ref.at("conversations").at(cname));
    absl::StatusOr<RenderedChat> got = RenderForTraining(Template(tname), messages, bos, eos);
    if (c.contains("error")) {
      ASSERT_FALSE(got.ok()) << where;
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << where;
      if (c.at("error") == "not prefix-stable") {
        ++refusals;
        EXPECT_THAT(got.status().message(),
                    HasSubstr(absl::StrCat("message ", c.at("index").get<int>())))
            << where;
      }
      continue;
    }
    ASSERT_TRUE(got.ok()) << where << ": " << got.status();
    EXPECT_EQ(got->text, c.at("text").get<std::string>()) << where;
    const auto& expected = c.at("spans");
    ASSERT_EQ(got->trained.size(), expected.size()) << where;
    const std::string eot = c.at("end_of_turn");
    for (size_t i = 0; i < expected.size(); ++i) {
      ++spans;
      const auto [b, e] = got->trained[i];
      EXPECT_EQ(b, expected[i].at("begin").get<size_t>()) << where << " span " << i;
      EXPECT_EQ(e, expected[i].at("end").get<size_t>()) << where << " span " << i;
      ASSERT_LE(e, got->text.size());
      const std::string span = got->text.substr(b, e - b);
      EXPECT_EQ(span, expected[i].at("text").get<std::string>()) << where;
      // The span is the reply and its end-of-turn marker, nothing of the prompt.
      EXPECT_THAT(span, HasSubstr(eot)) << where;
      const std::string content = expected[i].at("content");
      const std::string trimmed = jinja::PyStrip(content, nullptr, true, true);
      EXPECT_THAT(span, HasSubstr(trimmed)) << where;
      EXPECT_EQ(span.find("<|start_header_id|>user"), std::string::npos) << where;
      EXPECT_EQ(span.find("[INST]"), std::string::npos) << where;
    }
    // Untrained (weight 0) assistant turns are outside every span.
    for (const ChatMessage& m : messages) {
      if (m.role != "assistant" || m.trained) continue;
      const size_t at = got->text.find(m.content);
      ASSERT_NE(at, std::string::npos) << where;
      for (const auto& [b, e] : got->trained) {
        EXPECT_TRUE(at + m.content.size() <= b || at >= e) << where;
      }
    }
  }
  std::cout << "[ chat templates ] " << ref.at("training").size() << " conversations: " << spans
            << " trained spans equal, " << refusals << " refused as not prefix-stable\n";
  EXPECT_GT(spans, 40);
}

// ---- errors: everything a template controls is bounded and reported with its line

absl::Status RenderError(const std::string& source, const jinja::RenderLimits& limits = {}) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(source, limits);
  if (!t.ok()) return t.status();
  absl::StatusOr<std::string> r = t->Render({{"user", "hi"}, {"assistant", "yo"}}, false, "", "");
  if (r.ok()) return absl::OkStatus();
  return r.status();
}

TEST(ChatTemplateErrors, UnsupportedConstructsNameTheConstructAndLine) {
  struct Case {
    const char* source;
    const char* expected;
  } cases[] = {
      {"ok\n{% include 'x.jinja' %}", "line 2: unsupported construct: '{% include %}'"},
      {"{% extends 'base' %}", "unsupported construct: '{% extends %}'"},
      {"{% raw %}x{% endraw %}", "unsupported construct: '{% raw %}'"},
      {"\n\n{{ x | wordwrap }}", "line 3: unsupported filter 'wordwrap'"},
      {"{{ x is escaped }}", "unsupported test 'escaped'"},
      {"{% for x in y recursive %}{% endfor %}", "recursive for loops"},
      {"{{ 'a %s' % 'b' }}", "'%' string formatting"},
      {"{{ 'x'.format(1) }}", "unsupported method 'format'"},
      {"{{ [1].append(2) }}", "unsupported method 'append'"},
      {"{{ 'é'|upper }}", "non-ASCII"},
      {"{{ messages|selectattr('role')|length }}", "generator"},
  };
  for (const Case& c : cases) {
    const absl::Status s = RenderError(c.source);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.source;
    EXPECT_THAT(s.message(), HasSubstr(c.expected)) << c.source;
  }
}

TEST(ChatTemplateErrors, RaiseExceptionCarriesTheTemplatesMessage) {
  const absl::Status s = RenderError(
      "{% if messages[0].role == 'user' %}\n{{ raise_exception('Roles must alternate!') }}{% endif "
      "%}");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("line 2"));
  EXPECT_THAT(s.message(), HasSubstr("Roles must alternate!"));
}

TEST(ChatTemplateErrors, UnbalancedBlocks) {
  EXPECT_THAT(RenderError("{% if true %}x").message(), HasSubstr("'if' is never closed"));
  EXPECT_THAT(RenderError("x\n{% endfor %}").message(), HasSubstr("line 2: unexpected 'endfor'"));
  EXPECT_THAT(RenderError("{% for x in y %}{% endif %}").message(),
              HasSubstr("unexpected 'endif'"));
  EXPECT_THAT(RenderError("{{ x ").message(), HasSubstr("unterminated '{{'"));
  EXPECT_THAT(RenderError("{# x").message(), HasSubstr("unterminated comment"));
  EXPECT_THAT(RenderError("{{ 'abc }}").message(), HasSubstr("unterminated string"));
  EXPECT_THAT(RenderError("{{ (1 + 2 }}").message(), HasSubstr("unterminated"));
  EXPECT_THAT(RenderError("{% break %}").message(), HasSubstr("outside a loop"));
}

TEST(ChatTemplateErrors, DeepNestingIsAnErrorNotACrash) {
  EXPECT_THAT(RenderError("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}")
                  .message(),
              HasSubstr("nest deeper"));
  std::string ifs;
  for (int i = 0; i < 5000; ++i) ifs += "{% if true %}";
  EXPECT_THAT(RenderError(ifs).message(), HasSubstr("nest deeper"));
  EXPECT_THAT(RenderError("{{ " + std::string(50000, '-') + "1 }}").message(),
              HasSubstr("nest deeper"));
  EXPECT_THAT(
      RenderError("{{ " + std::string(50000, '[') + std::string(50000, ']') + " }}").message(),
      HasSubstr("nest deeper"));
  // Values built up in a loop are bounded too.
  EXPECT_THAT(RenderError("{% set ns = namespace(x=1) %}{% for i in range(1000) %}"
                          "{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}")
                  .message(),
              HasSubstr("nest deeper than"));
  EXPECT_THAT(RenderError("{% set ns = namespace() %}{% set ns.me = ns %}").message(),
              HasSubstr("namespace cannot be stored"));
  EXPECT_THAT(RenderError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").message(),
              HasSubstr("macro calls nest deeper"));
}

TEST(ChatTemplateErrors, LoopsAndOutputAreBounded) {
  EXPECT_THAT(RenderError("{% for i in range(1000000000) %}{% endfor %}").message(),
              HasSubstr("loop iterations"));
  EXPECT_THAT(RenderError("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                          "{% endfor %}")
                  .message(),
              HasSubstr("loop iterations"));
  jinja::RenderLimits small;
  small.max_output_bytes = 1000;
  EXPECT_THAT(RenderError("{% for i in range(1000) %}0123456789{% endfor %}", small).message(),
              HasSubstr("exceeds 1000 bytes"));
  EXPECT_THAT(RenderError("{{ 'x' * 1000000000000 }}").message(), HasSubstr("repetition"));
  EXPECT_THAT(RenderError("{% set ns = namespace(s='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') %}"
                          "{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}")
                  .message(),
              HasSubstr("bytes of strings"));
  EXPECT_THAT(RenderError("{{ 9223372036854775807 + 1 }}").message(), HasSubstr("overflow"));
  EXPECT_THAT(RenderError("{{ 1 // 0 }}").message(), HasSubstr("division by zero"));
}

TEST(ChatTemplateErrors, UndefinedBehavesLikeJinjasDefault) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(
      "[{{ nope }}|{{ nope is defined }}|{{ nope|length }}|{% if nope %}t{% else %}f{% endif %}|"
      "{% for x in nope %}x{% endfor %}|{{ messages[5] is defined }}|{{ messages[0].nope }}]");
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<std::string> r = t->Render({{"user", "hi"}}, false, "", "");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "[|False|0|f||False|]");
  EXPECT_THAT(RenderError("{{ nope.attr }}").message(), HasSubstr("'nope' is undefined"));
  EXPECT_THAT(RenderError("{{ nope() }}").message(), HasSubstr("'nope' is undefined"));
  EXPECT_THAT(RenderError("{{ nope + 1 }}").message(), HasSubstr("unsupported operand"));
}

TEST(ChatTemplate, PrefixInstabilityNamesTheMessage) {
  // The final assistant turn gets a marker that an earlier one does not.
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(
      "{% for m in messages %}{{ m.role }}:{% if loop.last and m.role == 'assistant' %}LAST "
      "{% endif %}{{ m.content }};{% endfor %}");
  ASSERT_TRUE(t.ok());
  absl::StatusOr<RenderedChat> r = RenderForTraining(
      *t, {{"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"assistant", "d"}}, "", "");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("not prefix-stable at message 1"));
  // A conversation whose only trained turn is the last one is fine.
  r = RenderForTraining(
      *t, {{"user", "a"}, {"assistant", "b", false}, {"user", "c"}, {"assistant", "d"}}, "", "");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->trained.size(), 1u);
  EXPECT_EQ(r->text.substr(r->trained[0].first, r->trained[0].second - r->trained[0].first),
            "assistant:LAST d;");
}

}  // namespace
}  // namespace lora
