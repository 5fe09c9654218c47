// A std-only wall around libsentencepiece. Debian's libsentencepiece exports a bundled copy of
// protobuf-lite that clobbers libprotobuf's symbols when both are linked into one process
// (crash at startup), and its header defines its own `absl::string_view`. So the backend is a
// plugin, liblora_sentencepiece.so, opened with RTLD_LOCAL | RTLD_DEEPBIND: it binds to its own
// protobuf copy and leaks nothing into the process.
#ifndef LORA_WORKER_ENGINE_DATA_SENTENCEPIECE_BACKEND_H_
#define LORA_WORKER_ENGINE_DATA_SENTENCEPIECE_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lora::spm {

class Model {
 public:
  virtual ~Model() = default;
  virtual std::vector<int> Encode(const std::string& text) const = 0;
  virtual std::string Decode(const std::vector<int>& ids) const = 0;
  virtual int size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
};

// nullptr and `*error` set on failure (including a missing plugin).
std::unique_ptr<Model> Load(const std::string& path, std::string* error);

}  // namespace lora::spm

// The plugin's one entry point (extern "C" so dlsym finds it).
extern "C" lora::spm::Model* lora_spm_load(const char* path, std::string* error);

namespace lora::spm {}  // namespace lora::spm

#endif  // LORA_WORKER_ENGINE_DATA_SENTENCEPIECE_BACKEND_H_
