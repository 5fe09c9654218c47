// Finds and opens the SentencePiece plugin (see sentencepiece_backend.h for why it is one).
#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "worker/engine/data/sentencepiece_backend.h"

namespace lora::spm {
namespace {

using LoadFn = Model* (*)(const char*, std::string*);

LoadFn FindPlugin(std::string* error) {
  static LoadFn fn = nullptr;
  static std::string load_error;
  static bool tried = false;
  if (tried) {
    *error = load_error;
    return fn;
  }
  tried = true;
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("LORA_SENTENCEPIECE_PLUGIN")) candidates.push_back(env);
  std::error_code ec;
  auto exe_dir = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
  for (const char* rel : {"liblora_sentencepiece.so", "lib/liblora_sentencepiece.so",
                          "../lib/liblora_sentencepiece.so"}) {
    candidates.push_back((exe_dir / rel).string());
  }
  for (const std::string& path : candidates) {
    if (!std::filesystem::exists(path, ec)) continue;
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      load_error = ::dlerror();
      continue;
    }
    fn = reinterpret_cast<LoadFn>(::dlsym(handle, "lora_spm_load"));
    if (fn != nullptr) return fn;
  }
  if (load_error.empty())
    load_error = "liblora_sentencepiece.so not found next to the binary or in ../lib";
  *error = load_error;
  return nullptr;
}

}  // namespace

std::unique_ptr<Model> Load(const std::string& path, std::string* error) {
  LoadFn fn = FindPlugin(error);
  if (fn == nullptr) return nullptr;
  return std::unique_ptr<Model>(fn(path.c_str(), error));
}

}  // namespace lora::spm
