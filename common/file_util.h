// Durable file output: nothing a reader can see is ever half written.
//
//   LORA_ASSIGN_OR_RETURN(auto out, AtomicFile::Create("/ckpt/adapter.safetensors"));
//   LORA_RETURN_IF_ERROR(out->Write(bytes, n));
//   LORA_RETURN_IF_ERROR(out->Commit());   // fsync, rename over the target, fsync the directory
//
// A writer destroyed before Commit() removes its temporary file.
#ifndef LORA_COMMON_FILE_UTIL_H_
#define LORA_COMMON_FILE_UTIL_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lora {

class AtomicFile {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFile>> Create(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  absl::Status Write(const void* data, size_t size);
  absl::Status Write(absl::string_view data) { return Write(data.data(), data.size()); }
  absl::Status Commit();
  size_t bytes_written() const { return bytes_written_; }

 private:
  AtomicFile(std::string path, std::string temp_path, int fd)
      : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}

  std::string path_;
  std::string temp_path_;
  int fd_;
  size_t bytes_written_ = 0;
  bool committed_ = false;
};

// Writes `contents` to `path` through an AtomicFile.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// A secret kept in a file (never on a command line, where ps shows it): the first line,
// surrounding whitespace removed. An empty one is an error; errors never quote the file.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path);

// fsyncs a directory so that renames and creations inside it survive a crash.
absl::Status SyncDirectory(const std::string& dir);

// Replaces `to` (a directory that may exist) with the fully written directory `from`:
// the old one is moved aside, `from` renamed into place, then the old one deleted.
absl::Status ReplaceDirectory(const std::string& from, const std::string& to);

// Builds a directory next to its final place and swaps it in whole on Commit(), so readers see
// the old directory or the new one, never a mix. Refuses to replace a non-empty directory that
// holds none of `marker_files` (it is probably not ours to overwrite).
//
//   LORA_ASSIGN_OR_RETURN(auto staged, StagedDirectory::Create(out, {"adapter_config.json"}));
//   ... write files under staged->path() ...
//   LORA_RETURN_IF_ERROR(staged->Commit());
class StagedDirectory {
 public:
  static absl::StatusOr<std::unique_ptr<StagedDirectory>> Create(
      const std::string& final_dir, const std::vector<std::string>& marker_files);
  ~StagedDirectory();
  const std::string& path() const { return staging_; }
  absl::Status Commit();

 private:
  StagedDirectory(std::string final_dir, std::string staging)
      : final_(std::move(final_dir)), staging_(std::move(staging)) {}
  std::string final_;
  std::string staging_;
  bool committed_ = false;
};

// Creates `dir` and its parents.
absl::Status MakeDirectories(const std::string& dir);

absl::Status RemoveAll(const std::string& path);

// Removes `dir` and then each parent in turn while it is empty, stopping below `stop` (never
// removed). For cleaning up a tree whose leaves are deleted one by one (artifact files, run
// directories). Best effort: a directory that is not empty, or gone, ends the walk.
void RemoveEmptyDirectories(const std::string& dir, const std::string& stop);

// Whether `file_name` is what an interrupted write of this file left behind: AtomicFile's
// "<name>.tmp-<pid>-XXXXXX", StagedDirectory's "<dir>.staging-<pid>-XXXXXX", or the
// "<dir>.old-<pid>" ReplaceDirectory sets aside.
bool IsAtomicWriteLeftover(const std::string& file_name);

std::string ParentDirectory(const std::string& path);
std::string JoinPath(absl::string_view a, absl::string_view b);

}  // namespace lora

#endif  // LORA_COMMON_FILE_UTIL_H_
