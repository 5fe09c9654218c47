// Helpers shared by the test suites: scratch directories and paths to built binaries.
#ifndef LORA_TESTS_TEST_UTIL_H_
#define LORA_TESTS_TEST_UTIL_H_

#include <cstdlib>
#include <filesystem>
#include <string>

namespace lora::testing {

// A fresh directory under $TMPDIR, removed with its contents when the object dies.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "lora-test-XXXXXX").string();
    char* made = ::mkdtemp(tmpl.data());
    path_ = made ? made : "";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace lora::testing

#endif  // LORA_TESTS_TEST_UTIL_H_
