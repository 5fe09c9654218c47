// Helpers shared by the fuzz targets and their replay tests.
#ifndef LORA_TESTS_FUZZ_FUZZ_UTIL_H_
#define LORA_TESTS_FUZZ_FUZZ_UTIL_H_

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace lora::fuzz {

inline std::string AsString(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

// A per-process scratch directory: parsers that only take paths read the input from a file
// here. /dev/shm keeps the per-input write off the disk; parallel fuzzer jobs (-jobs=N) are
// separate processes and so never share it.
inline const std::string& ScratchDir() {
  static const std::string* dir = [] {
    const char* base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string tmpl = std::string(base) + "/lora-fuzz-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    // Leaked on purpose (no destructor-order issues); the directory itself goes at exit.
    auto* path = new std::string(tmpl);
    std::atexit([] { std::filesystem::remove_all(ScratchDir()); });
    return path;
  }();
  return *dir;
}

// Replaces `name` in ScratchDir() with the input; returns its path.
inline std::string WriteScratchFile(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = ScratchDir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

}  // namespace lora::fuzz

#endif  // LORA_TESTS_FUZZ_FUZZ_UTIL_H_
