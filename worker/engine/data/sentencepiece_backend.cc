#include "worker/engine/data/sentencepiece_backend.h"

#include <sentencepiece_processor.h>

namespace lora::spm {
namespace {

class ProcessorModel : public Model {
 public:
  sentencepiece::SentencePieceProcessor processor;
  std::vector<int> Encode(const std::string& text) const override {
    std::vector<int> ids;
    processor.Encode(text, &ids).IgnoreError();
    return ids;
  }
  std::string Decode(const std::vector<int>& ids) const override {
    std::string out;
    processor.Decode(ids, &out).IgnoreError();
    return out;
  }
  int size() const override { return processor.GetPieceSize(); }
  int bos_id() const override { return processor.bos_id(); }
  int eos_id() const override { return processor.eos_id(); }
};

}  // namespace

}  // namespace lora::spm

extern "C" lora::spm::Model* lora_spm_load(const char* path, std::string* error) {
  auto model = std::make_unique<lora::spm::ProcessorModel>();
  auto status = model->processor.Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return model.release();
}
