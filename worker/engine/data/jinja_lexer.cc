#include "worker/engine/data/jinja_lexer.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/data/jinja_value.h"
#include "worker/engine/data/unicode.h"

namespace lora::jinja {
namespace {

bool IsNameStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsNameChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Python's "unicode-escape" decoding, which Jinja applies to string literals.
absl::Status Unescape(absl::string_view body, int line, std::string* out) {
  auto error = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat template line ", line, ": string literal: ", why));
  };
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c != '\\') {
      out->push_back(c);
      continue;
    }
    if (i + 1 >= body.size()) return error("ends with a backslash");
    const char e = body[++i];
    auto hex = [&](size_t digits) -> absl::Status {
      uint32_t cp = 0;
      for (size_t k = 1; k <= digits; ++k) {
        if (i + k >= body.size() || !std::isxdigit(static_cast<unsigned char>(body[i + k]))) {
          return error("truncated \\x, \\u or \\U escape");
        }
        cp = cp * 16 + std::stoul(std::string(1, body[i + k]), nullptr, 16);
      }
      if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return error("escape is not a valid code point");
      }
      i += digits;
      unicode::AppendUtf8(cp, out);
      return absl::OkStatus();
    };
    switch (e) {
      case '\n':
        break;  // line continuation
      case '\\':
        out->push_back('\\');
        break;
      case '\'':
        out->push_back('\'');
        break;
      case '"':
        out->push_back('"');
        break;
      case 'a':
        out->push_back('\a');
        break;
      case 'b':
        out->push_back('\b');
        break;
      case 'f':
        out->push_back('\f');
        break;
      case 'n':
        out->push_back('\n');
        break;
      case 'r':
        out->push_back('\r');
        break;
      case 't':
        out->push_back('\t');
        break;
      case 'v':
        out->push_back('\v');
        break;
      case 'x': {
        absl::Status s = hex(2);
        if (!s.ok()) return s;
        break;
      }
      case 'u': {
        absl::Status s = hex(4);
        if (!s.ok()) return s;
        break;
      }
      case 'U': {
        absl::Status s = hex(8);
        if (!s.ok()) return s;
        break;
      }
      case 'N':
        return error("\\N{...} escapes are not supported");
      default:
        if (e >= '0' && e <= '7') {
          uint32_t cp = e - '0';
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7';
               ++k) {
            cp = cp * 8 + (body[++i] - '0');
          }
          unicode::AppendUtf8(cp, out);
        } else {
          out->push_back('\\');  // Python keeps unknown escapes as written
          out->push_back(e);
        }
    }
  }
  return absl::OkStatus();
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {}

  absl::StatusOr<std::vector<Token>> Run() {
    size_t pos = 0;
    bool line_starting = true;  // the text at `pos` starts a line (Jinja's lstrip_blocks rule)
    bool strip_next = false;    // the previous tag ended with '-'
    while (pos <= src_.size()) {
      size_t open = src_.find('{', pos);
      while (open != std::string::npos && open + 1 < src_.size() && src_[open + 1] != '{' &&
             src_[open + 1] != '%' && src_[open + 1] != '#') {
        open = src_.find('{', open + 1);
      }
      if (open != std::string::npos && open + 1 >= src_.size()) open = std::string::npos;
      std::string text = src_.substr(pos, (open == std::string::npos ? src_.size() : open) - pos);
      if (strip_next) text = PyStrip(text, nullptr, true, false);
      if (open == std::string::npos) {
        EmitText(text, pos);
        break;
      }
      const char kind = src_[open + 1];
      const char sign = open + 2 < src_.size() ? src_[open + 2] : '\0';
      const bool has_sign = sign == '-' || (sign == '+' && kind != '{');
      if (sign == '-') {
        text = PyStrip(text, nullptr, false, true);
      } else if (kind != '{' && sign != '+') {
        // lstrip_blocks: drop the indentation of a block or comment tag alone on its line.
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size()) {
          bool all_space = true;
          for (size_t i = l_pos; i < text.size(); ++i) {
            if (text[i] != ' ' && text[i] != '\t' && text[i] != '\f' && text[i] != '\v' &&
                text[i] != '\r') {
              all_space = false;
              break;
            }
          }
          if (all_space) text.resize(l_pos);
        }
      }
      EmitText(text, pos);
      size_t p = open + 2 + (has_sign ? 1 : 0);
      const int tag_line = LineAt(open);
      if (kind == '#') {
        size_t close = src_.find("#}", p);
        if (close == std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat("chat template line ", tag_line, ": unterminated comment '{#'"));
        }
        const bool minus = close > p && src_[close - 1] == '-';
        const bool plus = close > p && src_[close - 1] == '+';
        pos = close + 2;
        FinishTag(minus, plus, &pos, &strip_next, &line_starting);
        continue;
      }
      tokens_.push_back(
          Token{kind == '{' ? TokenKind::kPrintBegin : TokenKind::kBlockBegin, "", 0, 0, tag_line});
      bool minus = false, plus = false;
      absl::Status s = LexTag(kind == '{', &p, &minus, &plus);
      if (!s.ok()) return s;
      pos = p;
      if (kind == '{') {
        // trim_blocks applies to block tags only, never to `}}`.
        strip_next = minus;
        line_starting = false;
      } else {
        FinishTag(minus, plus, &pos, &strip_next, &line_starting);
      }
    }
    tokens_.push_back(Token{TokenKind::kEnd, "", 0, 0, LineAt(src_.size())});
    return std::move(tokens_);
  }

 private:
  int LineAt(size_t offset) {
    while (line_cursor_ < offset && line_cursor_ < src_.size()) {
      if (src_[line_cursor_] == '\n') ++line_;
      ++line_cursor_;
    }
    return line_;
  }

  void EmitText(const std::string& text, size_t pos) {
    if (text.empty()) return;
    tokens_.push_back(Token{TokenKind::kText, text, 0, 0, LineAt(pos)});
  }

  // After `%}` or `#}`: `-` strips the following whitespace, plain drops one newline.
  void FinishTag(bool minus, bool plus, size_t* pos, bool* strip_next, bool* line_starting) {
    *strip_next = minus;
    *line_starting = false;
    if (!minus && !plus && *pos < src_.size() && src_[*pos] == '\n') {
      ++*pos;
      *line_starting = true;
    }
  }

  absl::Status LexTag(bool print, size_t* pos, bool* minus, bool* plus) {
    const int start_line = LineAt(*pos);
    int depth = 0;  // open brackets: `}}` inside a dict literal does not end the tag
    size_t p = *pos;
    auto error = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("chat template line ", LineAt(p), ": ", why));
    };
    while (true) {
      while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
      if (p >= src_.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "chat template line ", start_line, ": unterminated '", print ? "{{" : "{%", "'"));
      }
      const absl::string_view rest = absl::string_view(src_).substr(p);
      const std::string close = print ? "}}" : "%}";
      if (depth == 0) {
        if (rest.substr(0, 3) == "-" + close) {
          *minus = true;
          p += 3;
          break;
        }
        if (!print && rest.substr(0, 3) == "+%}") {
          *plus = true;
          p += 3;
          break;
        }
        if (rest.substr(0, 2) == close) {
          p += 2;
          break;
        }
      }
      const int line = LineAt(p);
      const char c = src_[p];
      if (IsNameStart(c)) {
        size_t e = p;
        while (e < src_.size() && IsNameChar(src_[e])) ++e;
        tokens_.push_back(Token{TokenKind::kName, src_.substr(p, e - p), 0, 0, line});
        p = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t e = p;
        std::string digits;
        auto take_digits = [&]() {
          while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) ||
                                     (src_[e] == '_' && e + 1 < src_.size() &&
                                      std::isdigit(static_cast<unsigned char>(src_[e + 1]))))) {
            if (src_[e] != '_') digits.push_back(src_[e]);
            ++e;
          }
        };
        take_digits();
        bool is_float = false;
        if (e + 1 < src_.size() && src_[e] == '.' &&
            std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
          is_float = true;
          digits.push_back('.');
          ++e;
          take_digits();
        }
        if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
          size_t f = e + 1;
          if (f < src_.size() && (src_[f] == '+' || src_[f] == '-')) ++f;
          if (f < src_.size() && std::isdigit(static_cast<unsigned char>(src_[f]))) {
            is_float = true;
            digits += src_.substr(e, f - e);
            e = f;
            take_digits();
          }
        }
        Token t{is_float ? TokenKind::kFloat : TokenKind::kInt, digits, 0, 0, line};
        if (is_float) {
          t.float_value = std::strtod(digits.c_str(), nullptr);
        } else {
          errno = 0;
          char* end = nullptr;
          t.int_value = std::strtoll(digits.c_str(), &end, 10);
          if (errno == ERANGE) return error("integer literal out of range");
        }
        tokens_.push_back(std::move(t));
        p = e;
      } else if (c == '\'' || c == '"') {
        size_t e = p + 1;
        while (e < src_.size() && src_[e] != c) {
          if (src_[e] == '\\') ++e;
          ++e;
        }
        if (e >= src_.size()) return error("unterminated string literal");
        Token t{TokenKind::kString, "", 0, 0, line};
        absl::Status s = Unescape(absl::string_view(src_).substr(p + 1, e - p - 1), line, &t.text);
        if (!s.ok()) return s;
        tokens_.push_back(std::move(t));
        p = e + 1;
      } else {
        static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                           "/",  "%",  "~",  "<",  ">",  "(",  ")", "[", "]",
                                           "{",  "}",  ",",  ".",  ":",  "|",  "="};
        std::string op;
        for (const char* candidate : kOps) {
          if (rest.substr(0, std::char_traits<char>::length(candidate)) == candidate) {
            op = candidate;
            break;
          }
        }
        if (op.empty())
          return error(absl::StrCat("unexpected character '", std::string(1, c), "'"));
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        tokens_.push_back(Token{TokenKind::kOperator, op, 0, 0, line});
        p += op.size();
      }
    }
    tokens_.push_back(
        Token{print ? TokenKind::kPrintEnd : TokenKind::kBlockEnd, "", 0, 0, LineAt(p)});
    *pos = p;
    return absl::OkStatus();
  }

  std::string src_;
  std::vector<Token> tokens_;
  size_t line_cursor_ = 0;
  int line_ = 1;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Lex(absl::string_view source) {
  if (source.size() > kMaxTemplateBytes) {
    return absl::InvalidArgumentError(absl::StrCat("chat template is ", source.size(),
                                                   " bytes; the limit is ", kMaxTemplateBytes));
  }
  // Jinja normalizes newlines and drops a single trailing one (keep_trailing_newline=False).
  std::string normalized;
  normalized.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      normalized.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      normalized.push_back(source[i]);
    }
  }
  if (!normalized.empty() && normalized.back() == '\n') normalized.pop_back();
  return Lexer(std::move(normalized)).Run();
}

}  // namespace lora::jinja
