#include "worker/engine/data/hf_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/nesting.h"
#include "common/status_macros.h"
#include "worker/engine/data/unicode.h"

namespace lora::hf {
namespace {

using json = nlohmann::json;

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// Prefixes an error with the file it came from.
absl::Status InFile(absl::string_view source, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(source, ": ", s.message()));
}

// A component's "type", quoted in errors only when it is one of the names `tokenizers` knows
// (so that an error never echoes arbitrary file contents).
std::string TypeForError(const std::string& type) {
  static const char* const kKnown[] = {"BPE",
                                       "WordPiece",
                                       "WordLevel",
                                       "Unigram",
                                       "NFC",
                                       "NFD",
                                       "NFKC",
                                       "NFKD",
                                       "Lowercase",
                                       "Strip",
                                       "StripAccents",
                                       "BertNormalizer",
                                       "Precompiled",
                                       "Replace",
                                       "Prepend",
                                       "ByteLevel",
                                       "Sequence",
                                       "Whitespace",
                                       "WhitespaceSplit",
                                       "BertPreTokenizer",
                                       "Punctuation",
                                       "Digits",
                                       "Metaspace",
                                       "Split",
                                       "UnicodeScripts",
                                       "CharDelimiterSplit",
                                       "FixedLength",
                                       "TemplateProcessing",
                                       "BertProcessing",
                                       "RobertaProcessing"};
  for (const char* k : kKnown) {
    if (type == k) return type;
  }
  return "(unknown)";
}

absl::StatusOr<std::string> TypeOf(const json& j, absl::string_view field) {
  if (!j.is_object()) return Invalid(field, "must be an object or null");
  auto it = j.find("type");
  if (it == j.end() || !it->is_string()) return Invalid(field, "missing \"type\"");
  return it->get<std::string>();
}

absl::StatusOr<bool> BoolField(const json& j, const char* key, bool fallback,
                               absl::string_view field) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return Invalid(field, absl::StrCat(key, " must be a boolean"));
  return it->get<bool>();
}

absl::StatusOr<std::string> StringField(const json& j, const char* key, absl::string_view field) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    return Invalid(field, absl::StrCat(key, " must be a string"));
  return it->get<std::string>();
}

// A special token of tokenizer_config.json: a string, {"content": string, ...}, or null.
absl::StatusOr<std::optional<std::string>> ConfigToken(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string())
      return std::optional<std::string>(content->get<std::string>());
  }
  return Invalid(key, "must be a string, an object with a string \"content\", or null");
}

// Tokens commonly used to end a sequence, for files without tokenizer_config.json.
constexpr const char* kEosCandidates[] = {"</s>",  "<|end_of_text|>", "<|endoftext|>",
                                          "<eos>", "<|im_end|>",      "<|eot_id|>"};

}  // namespace

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(const json& j, absl::string_view source) {
  if (!j.is_object()) return Invalid(source, "must be a JSON object");
  TokenizerConfig config;
  auto bos = ConfigToken(j, "bos_token");
  if (!bos.ok()) return InFile(source, bos.status());
  config.bos_token = *bos;
  auto eos = ConfigToken(j, "eos_token");
  if (!eos.ok()) return InFile(source, eos.status());
  config.eos_token = *eos;
  auto tmpl = j.find("chat_template");
  if (tmpl != j.end() && !tmpl->is_null()) {
    if (tmpl->is_string()) {
      config.chat_template = tmpl->get<std::string>();
    } else if (tmpl->is_array()) {
      for (const json& named : *tmpl) {
        if (!named.is_object() || !named.contains("name") || !named.contains("template") ||
            !named["name"].is_string() || !named["template"].is_string()) {
          return Invalid(source, "chat_template entries must be {\"name\", \"template\"} strings");
        }
        if (named["name"] == "default") config.chat_template = named["template"].get<std::string>();
      }
    } else {
      return Invalid(source, "chat_template must be a string or a list of named templates");
    }
  }
  return config;
}

absl::StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& path) {
  LORA_ASSIGN_OR_RETURN(json j, ReadJsonDocument(path, kMaxTokenizerConfigBytes, kMaxJsonDepth));
  return ParseTokenizerConfig(j, path);
}

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::FromFile(const std::string& path,
                                                                   const TokenizerConfig* config) {
  LORA_ASSIGN_OR_RETURN(json j, ReadJsonDocument(path, kMaxTokenizerJsonBytes, kMaxJsonDepth));
  return FromJson(j, path, config);
}

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::FromJson(const json& j,
                                                                   absl::string_view source,
                                                                   const TokenizerConfig* config) {
  if (!j.is_object()) return Invalid(source, "must be a JSON object");
  std::unique_ptr<HfTokenizer> tok(new HfTokenizer());
  auto field = [&](const char* key) -> const json& {
    static const json kNull;
    auto it = j.find(key);
    return it == j.end() ? kNull : *it;
  };
  // The pre-tokenizer decides whether the model sees byte-level strings.
  LORA_RETURN_IF_ERROR(InFile(source, tok->LoadPreTokenizer(field("pre_tokenizer"))));
  const json& model = field("model");
  auto type = TypeOf(model, "model");
  if (!type.ok()) return InFile(source, type.status());
  if (*type != "BPE") {
    return Invalid(
        source, absl::StrCat("model: type ", TypeForError(*type), " is not supported (only BPE)"));
  }
  auto bpe = BpeModel::FromJson(model, tok->pre_.kind == PreTokenizer::kByteLevel);
  if (!bpe.ok()) return InFile(source, bpe.status());
  tok->model_ = std::move(*bpe);
  LORA_RETURN_IF_ERROR(InFile(source, tok->LoadNormalizer(field("normalizer"), 0)));
  LORA_RETURN_IF_ERROR(InFile(source, tok->LoadAddedTokens(field("added_tokens"))));
  LORA_RETURN_IF_ERROR(InFile(source, tok->LoadPostProcessor(field("post_processor"), 0)));
  auto decoder = Decoder::FromJson(field("decoder"));
  if (!decoder.ok()) return InFile(source, decoder.status());
  tok->decoder_ = std::move(*decoder);

  tok->vocab_size_ = tok->model_->max_id() + 1;
  for (const AddedToken& t : tok->added_)
    tok->vocab_size_ = std::max<int64_t>(tok->vocab_size_, t.id + 1);
  if (config != nullptr) {
    for (const auto* token : {&config->bos_token, &config->eos_token}) {
      if (token->has_value() && tok->TokenId(**token) < 0) {
        return Invalid(source, absl::StrCat("tokenizer_config.json: ",
                                            token == &config->bos_token ? "bos_token" : "eos_token",
                                            " is not a token of this tokenizer"));
      }
    }
  }
  tok->ApplyConfig(config);
  return tok;
}

void HfTokenizer::ApplyConfig(const TokenizerConfig* config) {
  if (config != nullptr && config->eos_token.has_value()) {
    eos_id_ = TokenId(*config->eos_token);
  } else {
    for (const char* candidate : kEosCandidates) {
      auto it = added_by_content_.find(candidate);
      if (it != added_by_content_.end() && special_contents_.contains(candidate)) {
        eos_id_ = it->second;
        break;
      }
    }
    if (eos_id_ < 0 && !suffix_.empty()) eos_id_ = suffix_.back();
  }
  if (config != nullptr) {
    chat_template_ = config->chat_template;
    if (config->bos_token.has_value()) bos_token_ = *config->bos_token;
    if (config->eos_token.has_value()) eos_token_ = *config->eos_token;
  }
  if (bos_token_.empty() && bos_id() >= 0) bos_token_ = IdToToken(bos_id());
  if (eos_token_.empty() && eos_id_ >= 0) eos_token_ = IdToToken(eos_id_);
}

absl::Status HfTokenizer::LoadNormalizer(const json& j, int depth) {
  if (j.is_null()) return absl::OkStatus();
  if (depth > 8) return Invalid("normalizer", "Sequence nested too deeply");
  LORA_ASSIGN_OR_RETURN(std::string type, TypeOf(j, "normalizer"));
  if (type == "Sequence") {
    auto list = j.find("normalizers");
    if (list == j.end() || !list->is_array())
      return Invalid("normalizer", "Sequence needs a normalizers array");
    for (const json& child : *list) LORA_RETURN_IF_ERROR(LoadNormalizer(child, depth + 1));
  } else if (type == "NFC") {
    normalizer_.push_back({NormalizerStep::kNfc, "", ""});
  } else if (type == "Prepend") {
    LORA_ASSIGN_OR_RETURN(std::string prepend, StringField(j, "prepend", "normalizer.Prepend"));
    normalizer_.push_back({NormalizerStep::kPrepend, std::move(prepend), ""});
  } else if (type == "Replace") {
    auto pattern = j.find("pattern");
    if (pattern == j.end() || !pattern->is_object() || !pattern->contains("String") ||
        !(*pattern)["String"].is_string() ||
        (*pattern)["String"].get_ref<const std::string&>().empty()) {
      return Invalid("normalizer", "Replace supports only non-empty {\"String\": ...} patterns");
    }
    LORA_ASSIGN_OR_RETURN(std::string content, StringField(j, "content", "normalizer.Replace"));
    normalizer_.push_back(
        {NormalizerStep::kReplace, (*pattern)["String"].get<std::string>(), std::move(content)});
  } else {
    return Invalid("normalizer", absl::StrCat("type ", TypeForError(type),
                                              " is not supported (supported: NFC, Prepend, "
                                              "Replace, Sequence)"));
  }
  return absl::OkStatus();
}

absl::Status HfTokenizer::LoadPreTokenizer(const json& j) {
  if (j.is_null()) return absl::OkStatus();
  constexpr absl::string_view kField = "pre_tokenizer";
  LORA_ASSIGN_OR_RETURN(std::string type, TypeOf(j, kField));
  std::vector<const json*> parts;
  if (type == "Sequence") {
    auto list = j.find("pretokenizers");
    if (list == j.end() || !list->is_array())
      return Invalid(kField, "Sequence needs a pretokenizers array");
    for (const json& p : *list) parts.push_back(&p);
  } else {
    parts.push_back(&j);
  }
  const json* split = nullptr;
  const json* main = nullptr;
  if (parts.size() == 2) {
    split = parts[0];
    main = parts[1];
  } else if (parts.size() == 1) {
    main = parts[0];
  } else {
    return Invalid(kField,
                   "only Split followed by ByteLevel, ByteLevel, or Metaspace is supported");
  }
  LORA_ASSIGN_OR_RETURN(std::string main_type, TypeOf(*main, kField));
  if (split != nullptr) {
    LORA_ASSIGN_OR_RETURN(std::string split_type, TypeOf(*split, kField));
    if (split_type != "Split" || main_type != "ByteLevel")
      return Invalid(kField, "a Sequence must be exactly [Split, ByteLevel]");
    auto pattern = split->find("pattern");
    if (pattern == split->end() || !pattern->is_object() || !pattern->contains("Regex") ||
        !(*pattern)["Regex"].is_string()) {
      return Invalid(kField, "Split needs a {\"Regex\": ...} pattern");
    }
    LORA_ASSIGN_OR_RETURN(pre_.split,
                          SplitPatternFromRegex((*pattern)["Regex"].get_ref<const std::string&>()));
    auto behavior = split->find("behavior");
    if (behavior == split->end() || *behavior != "Isolated")
      return Invalid(kField, "Split behavior must be Isolated");
    LORA_ASSIGN_OR_RETURN(bool invert, BoolField(*split, "invert", false, kField));
    if (invert) return Invalid(kField, "Split with invert true is not supported");
  }
  if (main_type == "ByteLevel") {
    pre_.kind = PreTokenizer::kByteLevel;
    LORA_ASSIGN_OR_RETURN(bool use_regex, BoolField(*main, "use_regex", true, kField));
    LORA_ASSIGN_OR_RETURN(pre_.add_prefix_space,
                          BoolField(*main, "add_prefix_space", true, kField));
    if (split != nullptr) {
      // After a Split, ByteLevel's own regex and prefix space would apply to every piece.
      if (use_regex || pre_.add_prefix_space) {
        return Invalid(kField,
                       "ByteLevel after Split must have use_regex and add_prefix_space false");
      }
    } else if (use_regex) {
      pre_.split = SplitPattern::kGpt2;
    }
  } else if (main_type == "Metaspace") {
    pre_.kind = PreTokenizer::kMetaspace;
    LORA_ASSIGN_OR_RETURN(pre_.replacement, StringField(*main, "replacement", kField));
    size_t len;
    if (pre_.replacement.empty() ||
        unicode::DecodeUtf8(pre_.replacement.data(), pre_.replacement.size(), &len) ==
            unicode::kInvalidCodePoint ||
        len != pre_.replacement.size()) {
      return Invalid(kField, "Metaspace replacement must be one character");
    }
    if (auto scheme = main->find("prepend_scheme"); scheme != main->end() && !scheme->is_null()) {
      if (*scheme == "always") {
        pre_.prepend = PreTokenizer::kAlways;
      } else if (*scheme == "first") {
        pre_.prepend = PreTokenizer::kFirst;
      } else if (*scheme == "never") {
        pre_.prepend = PreTokenizer::kNever;
      } else {
        return Invalid(kField, "Metaspace prepend_scheme must be always, first or never");
      }
    } else {
      // Files from before prepend_scheme: add_prefix_space.
      LORA_ASSIGN_OR_RETURN(bool add, BoolField(*main, "add_prefix_space", true, kField));
      pre_.prepend = add ? PreTokenizer::kAlways : PreTokenizer::kNever;
    }
    LORA_ASSIGN_OR_RETURN(pre_.metaspace_split, BoolField(*main, "split", true, kField));
  } else {
    return Invalid(kField, absl::StrCat("type ", TypeForError(main_type),
                                        " is not supported (supported: ByteLevel, "
                                        "Sequence[Split, ByteLevel], Metaspace)"));
  }
  return absl::OkStatus();
}

absl::Status HfTokenizer::LoadAddedTokens(const json& j) {
  if (j.is_null()) return absl::OkStatus();
  constexpr absl::string_view kField = "added_tokens";
  if (!j.is_array()) return Invalid(kField, "must be an array");
  if (j.size() > (size_t{1} << 20)) return Invalid(kField, "too many entries");
  // `tokenizers` does not take the ids written here: it gives each token the id it already has
  // (an earlier added token, or the model vocabulary), else the next free one after the model's
  // vocabulary (counted in entries) and the added tokens so far. In released files the two
  // agree; where they do not, its ids are the ones every Hugging Face tool uses.
  const int64_t model_entries = model_->num_entries();
  int64_t max_added = -1;
  for (size_t i = 0; i < j.size(); ++i) {
    const json& t = j[i];
    const std::string where = absl::StrCat(kField, "[", i, "]");
    if (!t.is_object()) return Invalid(where, "must be an object");
    auto id = t.find("id");
    if (id == t.end() || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > kMaxTokenId) {
      return Invalid(where, absl::StrCat("id must be an integer in [0, ", kMaxTokenId, "]"));
    }
    LORA_ASSIGN_OR_RETURN(std::string content, StringField(t, "content", where));
    if (content.empty() || content.size() > kMaxTokenBytes)
      return Invalid(where, "content must be 1 to 65536 bytes");
    LORA_ASSIGN_OR_RETURN(bool special, BoolField(t, "special", false, where));
    // `tokenizers` defaults `normalized` to the opposite of `special`.
    LORA_ASSIGN_OR_RETURN(bool normalized, BoolField(t, "normalized", !special, where));
    int64_t assigned;
    if (auto known = added_by_content_.find(content); known != added_by_content_.end()) {
      assigned = known->second;
    } else if (int32_t in_model = model_->TokenId(content); in_model >= 0) {
      assigned = in_model;
    } else if (max_added >= 0 && (max_added >= model_entries || model_entries == 0)) {
      assigned = max_added + 1;
    } else {
      assigned = model_entries;
    }
    if (assigned > kMaxTokenId) return Invalid(where, "id out of range");
    max_added = std::max(max_added, assigned);
    AddedTokenPattern pattern;
    pattern.id = static_cast<int32_t>(assigned);
    LORA_ASSIGN_OR_RETURN(pattern.single_word, BoolField(t, "single_word", false, where));
    LORA_ASSIGN_OR_RETURN(pattern.lstrip, BoolField(t, "lstrip", false, where));
    LORA_ASSIGN_OR_RETURN(pattern.rstrip, BoolField(t, "rstrip", false, where));
    added_by_content_[content] = pattern.id;
    added_by_id_[pattern.id] = static_cast<int32_t>(added_.size());
    if (special) special_contents_.insert(content);
    added_.push_back({content, pattern.id, special});
    if (normalized) {
      // Matched in normalized text, so the pattern is the normalized content.
      pattern.content = Normalize(content);
      normalized_matcher_.Add(std::move(pattern));
    } else {
      pattern.content = std::move(content);
      raw_matcher_.Add(std::move(pattern));
    }
  }
  return absl::OkStatus();
}

absl::Status HfTokenizer::LoadPostProcessor(const json& j, int depth) {
  if (j.is_null()) return absl::OkStatus();
  constexpr absl::string_view kField = "post_processor";
  if (depth > 8) return Invalid(kField, "Sequence nested too deeply");
  LORA_ASSIGN_OR_RETURN(std::string type, TypeOf(j, kField));
  std::vector<int64_t> prefix, suffix;
  if (type == "Sequence") {
    auto list = j.find("processors");
    if (list == j.end() || !list->is_array())
      return Invalid(kField, "Sequence needs a processors array");
    for (const json& child : *list) LORA_RETURN_IF_ERROR(LoadPostProcessor(child, depth + 1));
    return absl::OkStatus();
  } else if (type == "ByteLevel") {
    return absl::OkStatus();  // offsets only
  } else if (type == "TemplateProcessing") {
    auto single = j.find("single");
    auto specials = j.find("special_tokens");
    if (single == j.end() || !single->is_array() || specials == j.end() || !specials->is_object())
      return Invalid(kField, "TemplateProcessing needs single and special_tokens");
    int sequences = 0;
    for (const json& piece : *single) {
      if (piece.is_object() && piece.contains("Sequence")) {
        const json& seq = piece["Sequence"];
        if (!seq.is_object() || !seq.contains("id") || seq["id"] != "A")
          return Invalid(kField, "the single template may only hold sequence $A");
        ++sequences;
        continue;
      }
      if (!piece.is_object() || !piece.contains("SpecialToken") ||
          !piece["SpecialToken"].is_object() || !piece["SpecialToken"].contains("id") ||
          !piece["SpecialToken"]["id"].is_string()) {
        return Invalid(kField, "template pieces must be Sequence or SpecialToken");
      }
      auto special = specials->find(piece["SpecialToken"]["id"].get_ref<const std::string&>());
      if (special == specials->end() || !special->is_object() || !special->contains("ids") ||
          !(*special)["ids"].is_array()) {
        return Invalid(kField, "a template names a special token missing from special_tokens");
      }
      for (const json& id : (*special)["ids"]) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
          return Invalid(kField, "special token ids must be integers in range");
        (sequences == 0 ? prefix : suffix).push_back(id.get<int64_t>());
      }
    }
    if (sequences != 1) return Invalid(kField, "the single template must hold $A exactly once");
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    for (auto [key, out] : {std::pair<const char*, std::vector<int64_t>*>{"cls", &prefix},
                            std::pair<const char*, std::vector<int64_t>*>{"sep", &suffix}}) {
      auto it = j.find(key);
      if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer())
        return Invalid(kField, absl::StrCat(type, " needs ", key, " as [token, id]"));
      out->push_back((*it)[1].get<int64_t>());
    }
  } else {
    return Invalid(kField, absl::StrCat("type ", TypeForError(type),
                                        " is not supported (supported: TemplateProcessing, "
                                        "ByteLevel, BertProcessing, RobertaProcessing, "
                                        "Sequence)"));
  }
  // A later processor wraps what the earlier ones produced.
  prefix_.insert(prefix_.begin(), prefix.begin(), prefix.end());
  suffix_.insert(suffix_.end(), suffix.begin(), suffix.end());
  return absl::OkStatus();
}

std::string HfTokenizer::Normalize(absl::string_view text) const {
  std::string s(text);
  for (const NormalizerStep& step : normalizer_) {
    switch (step.kind) {
      case NormalizerStep::kNfc:
        if (!unicode::IsNfcQuick(s)) s = unicode::Nfc(s);
        break;
      case NormalizerStep::kPrepend:
        if (!s.empty()) s.insert(0, step.a);
        break;
      case NormalizerStep::kReplace:
        s = absl::StrReplaceAll(s, {{step.a, step.b}});
        break;
    }
  }
  return s;
}

void HfTokenizer::PreTokenizeAndModel(absl::string_view text, bool at_origin,
                                      std::vector<int32_t>* ids) const {
  switch (pre_.kind) {
    case PreTokenizer::kNone:
      model_->Tokenize(text, ids);
      return;
    case PreTokenizer::kByteLevel: {
      std::string with_space;
      if (pre_.add_prefix_space && text[0] != ' ') {
        with_space = absl::StrCat(" ", text);
        text = with_space;
      }
      if (!pre_.split.has_value()) {
        model_->Tokenize(text, ids);
        return;
      }
      const SplitPattern pattern = *pre_.split;
      for (size_t i = 0; i < text.size();) {
        const size_t n = SplitMatchLength(pattern, text.data() + i, text.size() - i);
        model_->Tokenize(text.substr(i, n), ids);
        i += n;
      }
      return;
    }
    case PreTokenizer::kMetaspace: {
      std::string s = absl::StrReplaceAll(text, {{" ", pre_.replacement}});
      const bool prepend = pre_.prepend == PreTokenizer::kAlways ||
                           (pre_.prepend == PreTokenizer::kFirst && at_origin);
      if (prepend && !absl::StartsWith(s, pre_.replacement)) s.insert(0, pre_.replacement);
      if (!pre_.metaspace_split) {
        model_->Tokenize(s, ids);
        return;
      }
      // Each replacement character starts a new word (MergedWithNext).
      size_t begin = 0;
      for (size_t at = s.find(pre_.replacement, 1); at != std::string::npos;
           at = s.find(pre_.replacement, at + pre_.replacement.size())) {
        model_->Tokenize(absl::string_view(s).substr(begin, at - begin), ids);
        begin = at;
      }
      model_->Tokenize(absl::string_view(s).substr(begin), ids);
      return;
    }
  }
}

void HfTokenizer::EncodeNormalized(absl::string_view text, bool at_origin,
                                   std::vector<int32_t>* ids) const {
  normalized_matcher_.Split(
      text,
      [&](absl::string_view piece, size_t offset) {
        PreTokenizeAndModel(piece, at_origin && offset == 0, ids);
      },
      [&](int32_t id) { ids->push_back(id); });
}

void HfTokenizer::EncodeInto(absl::string_view text, std::vector<int32_t>* ids) const {
  raw_matcher_.Split(
      text,
      [&](absl::string_view piece, size_t offset) {
        if (normalizer_.empty()) {
          EncodeNormalized(piece, offset == 0, ids);
        } else {
          EncodeNormalized(Normalize(piece), offset == 0, ids);
        }
      },
      [&](int32_t id) { ids->push_back(id); });
}

std::vector<int64_t> HfTokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  EncodeInto(text, &ids);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::vector<int64_t> HfTokenizer::EncodeWithSpecialTokens(absl::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  EncodeInto(text, &ids);
  std::vector<int64_t> out(prefix_);
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), suffix_.begin(), suffix_.end());
  return out;
}

const std::string* HfTokenizer::TokenString(int64_t id) const {
  if (id < 0 || id > kMaxTokenId) return nullptr;
  auto it = added_by_id_.find(static_cast<int32_t>(id));
  if (it != added_by_id_.end()) return &added_[it->second].content;
  return model_->IdToToken(id);
}

std::string HfTokenizer::Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    const std::string* t = TokenString(id);
    if (t == nullptr) continue;
    if (skip_special_tokens && special_contents_.contains(*t)) continue;
    tokens.push_back(*t);
  }
  return decoder_.Decode(std::move(tokens));
}

int64_t HfTokenizer::TokenId(absl::string_view token) const {
  auto it = added_by_content_.find(token);
  if (it != added_by_content_.end()) return it->second;
  return model_->TokenId(token);
}

std::string HfTokenizer::IdToToken(int64_t id) const {
  const std::string* t = TokenString(id);
  return t == nullptr ? std::string() : *t;
}

}  // namespace lora::hf
