// loractl files upload | list | get | delete, and the uploads `submit` makes for a spec.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/file_upload.h"
#include "client/loractl/commands.h"
#include "common/data_roots.h"

namespace lora::loractl {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<LoraClient>> Connect(const Globals& g) {
  return LoraClient::Create(g.client);
}

// The upload progress: a line redrawn in place on a terminal (stderr, so stdout stays the
// command's answer), nothing otherwise; at most ten redraws a second.
class UploadProgressLine {
 public:
  UploadProgressLine() : tty_(::isatty(STDERR_FILENO) == 1) {}
  ~UploadProgressLine() { Done(); }

  UploadProgressFn Callback() {
    return [this](const UploadProgress& p) { Update(p); };
  }
  void Done() {
    if (drawn_) EndLiveLine();
    drawn_ = false;
  }

 private:
  void Update(const UploadProgress& p) {
    const auto now = std::chrono::steady_clock::now();
    if (p.file != file_) {
      file_ = p.file;
      start_ = now;
      start_bytes_ = p.sent;  // bytes lorad had already (a resumed or deduplicated upload)
    }
    last_ = p;
    if (!tty_) return;
    if (p.sent < p.total && now - drawn_at_ < std::chrono::milliseconds(100)) return;
    drawn_at_ = now;
    Draw();
    drawn_ = true;
    LiveLineDrawn(stderr, [this] { Draw(); });
  }

  void Draw() {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = seconds > 0 ? static_cast<double>(last_.sent - start_bytes_) / seconds : 0;
    const int percent = last_.total > 0 ? static_cast<int>(100 * last_.sent / last_.total) : 100;
    const int width = 20, filled = percent * width / 100;
    std::fprintf(stderr, "\r\033[Kuploading %s [%s%s] %3d%% %s/%s %s/s",
                 fs::path(last_.file).filename().c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), percent, FormatBytes(last_.sent).c_str(),
                 FormatBytes(last_.total).c_str(), FormatBytes(static_cast<int64_t>(rate)).c_str());
    std::fflush(stderr);
  }

  const bool tty_;
  bool drawn_ = false;
  std::string file_;
  UploadProgress last_;
  int64_t start_bytes_ = 0;
  std::chrono::steady_clock::time_point start_, drawn_at_;
};

void PrintFile(const Globals& g, const lora::v1::File& f) {
  if (g.format != Format::kTable) {
    PrintMessages({&f}, g.format, false);
    return;
  }
  std::cout << f.name() << "  " << f.display_name() << (f.directory() ? "/" : "") << "  "
            << FormatBytes(f.size_bytes()) << "  " << f.entries_size()
            << (f.entries_size() == 1 ? " file" : " files") << std::endl;
}

}  // namespace

absl::Status PrepareSpecPaths(LoraClient& client, lora::v1::JobSpec* spec,
                              const std::string& base_dir, bool upload) {
  if (!upload) {
    for (const SpecPath& p : SpecPaths(*spec)) {
      if (IsFileRef(p.path)) continue;
      std::string path = p.path;
      if (path.rfind(kWorkerPathPrefix, 0) == 0) {
        path = path.substr(sizeof(kWorkerPathPrefix) - 1);
      } else if (!fs::path(path).is_absolute()) {
        path = (fs::path(base_dir) / path).lexically_normal().string();
      }
      SetSpecPath(spec, p.field, path);
    }
    return absl::OkStatus();
  }
  FileUploader uploader(&client);
  UploadProgressLine line;
  std::vector<SpecRewrite> rewrites;
  absl::Status s = UploadSpecFiles(spec, base_dir, &uploader, line.Callback(), &rewrites);
  line.Done();
  if (!s.ok()) return s;
  for (const SpecRewrite& r : rewrites) {
    if (r.now != r.local && IsFileRef(r.now))
      Notice(absl::StrCat(r.field, ": uploaded ", r.local, " as ", r.now));
  }
  return absl::OkStatus();
}

int FilesUpload(const Globals& g, const std::string& path) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  FileUploader uploader(client->get());
  UploadProgressLine line;
  auto file = uploader.Upload(path, line.Callback());
  line.Done();
  if (!file.ok()) return ReportError(file.status());
  PrintFile(g, *file);
  return kOk;
}

int FilesList(const Globals& g, int limit) {
  if (limit <= 0) return ReportError(absl::InvalidArgumentError("--limit: must be > 0"));
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  FileUploader uploader(client->get());
  lora::v1::ListFilesRequest req;
  std::vector<lora::v1::File> files;
  while (static_cast<int>(files.size()) < limit) {
    req.set_page_size(std::min(limit - static_cast<int>(files.size()), 1000));
    auto page = uploader.ListFiles(req);
    if (!page.ok()) return ReportError(page.status());
    for (const auto& f : page->files()) files.push_back(f);
    if (page->next_page_token().empty()) break;
    req.set_page_token(page->next_page_token());
  }
  if (g.format != Format::kTable) {
    std::vector<const google::protobuf::Message*> ms;
    for (const auto& f : files) ms.push_back(&f);
    PrintMessages(ms, g.format, true);
    return kOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& f : files) {
    rows.push_back({f.name(), f.display_name() + (f.directory() ? "/" : ""),
                    FormatBytes(f.size_bytes()), std::to_string(f.entries_size()),
                    Age(f.create_time())});
  }
  PrintTable({"NAME", "UPLOADED FROM", "SIZE", "FILES", "AGE"}, rows);
  return kOk;
}

int FilesGet(const Globals& g, const std::string& name) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  FileUploader uploader(client->get());
  auto file = uploader.GetFile(absl::StartsWith(name, "files/") ? name : "files/" + name);
  if (!file.ok()) return ReportError(file.status());
  if (g.format != Format::kTable) {
    const lora::v1::File& f = *file;
    PrintMessages({&f}, g.format, false);
    return kOk;
  }
  PrintFile(g, *file);
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : file->entries())
    rows.push_back(std::vector<std::string>{e.path(), FormatBytes(e.size()), e.sha256()});
  PrintTable({"PATH", "SIZE", "SHA256"}, rows);
  return kOk;
}

int FilesDelete(const Globals& g, const std::string& name) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  FileUploader uploader(client->get());
  const std::string full = absl::StartsWith(name, "files/") ? name : "files/" + name;
  if (absl::Status s = uploader.DeleteFile(full); !s.ok()) return ReportError(s);
  std::cout << full << " deleted" << std::endl;
  return kOk;
}

}  // namespace lora::loractl
