// loractl subcommands. Each takes the parsed global options and its own, returns an exit code.
#ifndef LORA_CLIENT_LORACTL_COMMANDS_H_
#define LORA_CLIENT_LORACTL_COMMANDS_H_

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "client/lora_client.h"
#include "client/loractl/output.h"

namespace lora::loractl {

struct Globals {
  ClientOptions client;
  Format format = Format::kTable;
  // How long a follow (`watch`, `logs -f`, `submit --watch`, ...) keeps reconnecting after its
  // stream was lost; zero: not at all.
  std::chrono::milliseconds reconnect_timeout{std::chrono::seconds(120)};
};

extern std::atomic<bool> g_interrupted;  // Ctrl-C while watching: stop watching, not the job

struct SubmitOptions {
  std::string file;
  std::vector<std::string> overrides;
  std::string request_id;
  bool watch = false;
  bool no_upload = false;  // send paths as they are (workers that share this disk)
};
int Submit(const Globals& g, const SubmitOptions& o);

int Get(const Globals& g, const std::string& job);

struct ListOptions {
  std::vector<std::string> states;
  std::vector<std::string> kinds;
  int limit = 50;
  std::string filter;    // AIP-160 subset (docs/API.md)
  std::string order_by;  // "create_time [asc|desc]"
};
int List(const Globals& g, const ListOptions& o);

int Cancel(const Globals& g, const std::string& job);
int Pause(const Globals& g, const std::string& job);
int Resume(const Globals& g, const std::string& job);
int Delete(const Globals& g, const std::string& job);

// `loractl files ...` (files_commands.cc).
int FilesUpload(const Globals& g, const std::string& path);
int FilesList(const Globals& g, int limit);
int FilesGet(const Globals& g, const std::string& name);
int FilesDelete(const Globals& g, const std::string& name);
// The local paths `spec` names (relative to `base_dir`) uploaded and replaced by "files/{id}",
// with a progress line on a terminal and one notice per file; "worker:" paths lose the
// prefix. With `upload` false, paths are made absolute instead (workers sharing this disk).
absl::Status PrepareSpecPaths(LoraClient& client, lora::v1::JobSpec* spec,
                              const std::string& base_dir, bool upload);
int Logs(const Globals& g, const std::string& job, bool follow);
int Checkpoints(const Globals& g, const std::string& job);
int Watch(const Globals& g, const std::string& job);

struct DownloadOptions {
  std::string job;
  std::string out;
  int64_t step = -1;  // -1: not given
  bool latest = false;
  bool final = false;
};
int Download(const Globals& g, const DownloadOptions& o);

struct ConvertOptions {
  std::string model;
  int rank = 8;
  double alpha = 16;
  double dropout = 0;
  std::vector<std::string> target_modules;
  bool rslora = false;
  std::string init = "kaiming";
  std::string export_dtype = "float32";
  std::string name;
  bool watch = false;
  bool no_upload = false;
};
int Convert(const Globals& g, const ConvertOptions& o);

struct MergeOptions {
  std::string model;
  std::string adapter;
  std::string dtype = "float32";
  std::string name;
  bool watch = false;
  bool no_upload = false;
};
int Merge(const Globals& g, const MergeOptions& o);

// Watches a job to its end; the exit code reflects its outcome.
int WatchToEnd(LoraClient& client, const std::string& name, const Globals& g);

}  // namespace lora::loractl

#endif  // LORA_CLIENT_LORACTL_COMMANDS_H_
