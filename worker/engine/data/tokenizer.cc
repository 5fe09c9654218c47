#include "worker/engine/data/tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "worker/engine/data/sentencepiece_backend.h"

namespace lora {

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

namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<spm::Model> model) : model_(std::move(model)) {}
  std::vector<int64_t> Encode(absl::string_view text) const override {
    std::vector<int> ids = model_->Encode(std::string(text));
    return std::vector<int64_t>(ids.begin(), ids.end());
  }
  std::string Decode(const std::vector<int64_t>& ids) const override {
    return model_->Decode(std::vector<int>(ids.begin(), ids.end()));
  }
  int64_t vocab_size() const override { return model_->size(); }
  int64_t bos_id() const override { return model_->bos_id(); }
  int64_t eos_id() const override { return model_->eos_id(); }

 private:
  std::unique_ptr<spm::Model> model_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& spec) {
  if (spec == "byte") return std::unique_ptr<Tokenizer>(new ByteTokenizer());
  if (!std::filesystem::exists(spec)) {
    return absl::NotFoundError(absl::StrCat("model.tokenizer: ", spec, ": no such file"));
  }
  std::string error;
  std::unique_ptr<spm::Model> model = spm::Load(spec, &error);
  if (model == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.tokenizer: cannot load SentencePiece model ", spec, ": ", error));
  }
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(std::move(model)));
}

}  // namespace lora
