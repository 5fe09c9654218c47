#include "worker/engine/data/tokenizer.h"

#include <filesystem>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/data/hf_tokenizer.h"
#include "worker/engine/data/sentencepiece_backend.h"
#include "worker/engine/data/sentencepiece_pieces.h"

namespace lora {

std::vector<int64_t> Tokenizer::EncodeWithSpecialTokens(absl::string_view text) const {
  std::vector<int64_t> ids;
  if (bos_id() >= 0) ids.push_back(bos_id());
  std::vector<int64_t> body = Encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::vector<int64_t> ByteTokenizer::Encode(absl::string_view text) const {
  std::vector<int64_t> out;
  out.reserve(text.size());
  for (unsigned char c : text) out.push_back(c);
  return out;
}

std::string ByteTokenizer::Decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) {
    if (id >= 0 && id < 256) out += static_cast<char>(id);
  }
  return out;
}

int64_t ByteTokenizer::TokenId(absl::string_view token) const {
  return token.size() == 1 ? static_cast<unsigned char>(token[0]) : -1;
}

std::string ByteTokenizer::IdToToken(int64_t id) const {
  return id >= 0 && id < 256 ? std::string(1, static_cast<char>(id)) : std::string();
}

namespace {

namespace fs = std::filesystem;

constexpr char kField[] = "model.tokenizer";

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(std::unique_ptr<spm::Model> model, std::vector<std::string> pieces,
                         const hf::TokenizerConfig* config)
      : model_(std::move(model)), pieces_(std::move(pieces)) {
    for (size_t id = 0; id < pieces_.size(); ++id)
      by_piece_.emplace(pieces_[id], static_cast<int64_t>(id));
    eos_id_ = model_->eos_id();
    if (config != nullptr) {
      chat_template_ = config->chat_template;
      bos_token_ = config->bos_token.value_or("");
      eos_token_ = config->eos_token.value_or("");
      if (config->eos_token.has_value() && TokenId(*config->eos_token) >= 0)
        eos_id_ = TokenId(*config->eos_token);
    }
    if (bos_token_.empty()) bos_token_ = IdToToken(bos_id());
    if (eos_token_.empty()) eos_token_ = IdToToken(eos_id_);
  }
  std::vector<int64_t> Encode(absl::string_view text) const override {
    std::vector<int> ids = model_->Encode(std::string(text));
    return std::vector<int64_t>(ids.begin(), ids.end());
  }
  std::string Decode(const std::vector<int64_t>& ids) const override {
    return model_->Decode(std::vector<int>(ids.begin(), ids.end()));
  }
  int64_t vocab_size() const override { return model_->size(); }
  int64_t bos_id() const override { return model_->bos_id(); }
  int64_t eos_id() const override { return eos_id_; }
  int64_t TokenId(absl::string_view token) const override {
    auto it = by_piece_.find(token);
    return it == by_piece_.end() ? -1 : it->second;
  }
  std::string IdToToken(int64_t id) const override {
    return id >= 0 && id < static_cast<int64_t>(pieces_.size()) ? pieces_[id] : std::string();
  }

 private:
  std::unique_ptr<spm::Model> model_;
  std::vector<std::string> pieces_;
  absl::flat_hash_map<std::string, int64_t> by_piece_;
  int64_t eos_id_ = -1;
};

// tokenizer_config.json beside `file`, if there is one.
absl::StatusOr<std::optional<hf::TokenizerConfig>> ConfigBeside(const fs::path& file) {
  const fs::path path = file.parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::optional<hf::TokenizerConfig>();
  auto config = hf::LoadTokenizerConfig(path.string());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(kField, ": ", config.status().message()));
  }
  return std::optional<hf::TokenizerConfig>(std::move(*config));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFile(const fs::path& file) {
  auto config = ConfigBeside(file);
  if (!config.ok()) return config.status();
  const hf::TokenizerConfig* c = config->has_value() ? &**config : nullptr;
  if (absl::EndsWith(file.string(), ".json")) {
    auto tok = hf::HfTokenizer::FromFile(file.string(), c);
    if (!tok.ok())
      return absl::Status(tok.status().code(), absl::StrCat(kField, ": ", tok.status().message()));
    return std::unique_ptr<Tokenizer>(std::move(*tok));
  }
  std::string error;
  std::unique_ptr<spm::Model> model = spm::Load(file.string(), &error);
  if (model == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kField, ": cannot load SentencePiece model ", file.string(), ": ", error));
  }
  // The plugin has read the file: a piece list that does not parse is a corrupt file.
  auto pieces = ReadSentencePiecePieces(file.string());
  if (!pieces.ok() || static_cast<int>(pieces->size()) != model->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kField, ": cannot read the pieces of SentencePiece model ", file.string()));
  }
  return std::unique_ptr<Tokenizer>(
      new SentencePieceTokenizer(std::move(model), std::move(*pieces), c));
}

// tokenizer.json first: it is the complete description (normalizer, added tokens,
// post-processor), where tokenizer.model may be a leftover of an older conversion.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadDirectory(const fs::path& dir) {
  std::error_code ec;
  for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
    if (fs::is_regular_file(dir / name, ec)) return LoadFile(dir / name);
  }
  return absl::NotFoundError(absl::StrCat(
      kField, ": ", dir.string(),
      " has neither tokenizer.json nor tokenizer.model; set model.tokenizer to a tokenizer file"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& spec) {
  if (spec == "byte") return std::unique_ptr<Tokenizer>(new ByteTokenizer());
  std::error_code ec;
  if (!fs::exists(spec, ec))
    return absl::NotFoundError(absl::StrCat(kField, ": ", spec, ": no such file"));
  if (fs::is_directory(spec, ec)) return LoadDirectory(spec);
  return LoadFile(spec);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizerForModel(
    const std::string& model_tokenizer_field, const std::string& model_path) {
  if (!model_tokenizer_field.empty()) return MakeTokenizer(model_tokenizer_field);
  if (model_path.empty()) return std::unique_ptr<Tokenizer>(new ByteTokenizer());
  std::error_code ec;
  if (!fs::is_directory(model_path, ec)) {
    return absl::NotFoundError(
        absl::StrCat(kField, ": not set, and the model path ", model_path,
                     " is not a directory to look for tokenizer.json or tokenizer.model in"));
  }
  return LoadDirectory(model_path);
}

}  // namespace lora
