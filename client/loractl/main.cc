// loractl: the command line for lorad. `loractl --help`, docs/LORACTL.md.
#include <signal.h>

#include <cstdlib>
#include <iostream>

#include "CLI/CLI.hpp"
#include "client/loractl/address.h"
#include "client/loractl/commands.h"
#include "client/loractl/completion.h"
#include "client/loractl/suggest.h"
#include "common/file_util.h"

namespace {

const char* kVersion = "loractl 0.1.0 (lora.v1 API)";

void OnInterrupt(int) { lora::loractl::g_interrupted = true; }

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace lora::loractl;
  Globals g;
  g.client.address = Env("LORACTL_ADDR", "127.0.0.1:50051");
  g.client.token = Env("LORACTL_TOKEN", "");
  double timeout_s = 30, connect_timeout_s = 10, reconnect_timeout_s = 120;
  std::string format = "table";

  CLI::App app{"loractl: submit, follow and fetch LoRA jobs on a lorad controller"};
  app.set_version_flag("--version", kVersion);
  app.require_subcommand(1);
  app.fallthrough();  // global flags may follow the subcommand: `loractl list -o json`
  app.add_option("--addr", g.client.address,
                 "lorad address: HOST:PORT, [IPV6]:PORT or unix:PATH; replicas: several, "
                 "comma-separated (env LORACTL_ADDR)")
      ->capture_default_str();
  // A token on the command line is visible to every user (ps): file or environment only.
  std::string token_file;
  app.add_option("--token-file", token_file,
                 "File whose first line is the bearer token (or env LORACTL_TOKEN)");
  app.add_option("--tls-ca", g.client.tls_ca, "CA certificate (PEM): use TLS");
  app.add_option("--tls-cert", g.client.tls_cert, "Client certificate (PEM) for mutual TLS");
  app.add_option("--tls-key", g.client.tls_key, "Client key (PEM) for mutual TLS");
  app.add_option("--timeout", timeout_s, "Seconds per request")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--connect-timeout", connect_timeout_s,
                 "Seconds to wait for lorad to answer a connection (a refused one fails at once)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--reconnect-timeout", reconnect_timeout_s,
                 "Seconds a follow (watch, logs -f, --watch) keeps reconnecting after losing "
                 "lorad; 0: exit at once")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("-o,--output", format, "Output: table | json | yaml")
      ->check(CLI::IsMember({"table", "json", "yaml"}))
      ->capture_default_str();

  SubmitOptions submit;
  auto* c_submit = app.add_subcommand("submit", "Validate a job spec (TOML) and submit it");
  c_submit->add_option("file", submit.file, "Job spec, e.g. configs/llama3_debugmodel_lora.toml")
      ->required();
  c_submit->add_option("--set", submit.overrides, "Override a key: section.key=value (repeatable)");
  c_submit->add_option("--request-id", submit.request_id, "Idempotency key (default: random)");
  c_submit->add_flag("-w,--watch", submit.watch, "Follow the job; exit with its outcome");
  c_submit->add_flag("--no-upload", submit.no_upload,
                     "Send the spec's paths as they are (made absolute) instead of uploading the "
                     "local files they name: for workers that share this disk");

  std::string job;
  auto* c_get = app.add_subcommand("get", "Show a job");
  c_get->add_option("job", job, "jobs/ID or ID")->required();

  ListOptions list;
  auto* c_list = app.add_subcommand("list", "List jobs, newest first");
  c_list->add_option("--state", list.states, "Only these states (repeatable)");
  c_list->add_option("--kind", list.kinds, "Only these kinds: train, convert, merge (repeatable)");
  c_list->add_option("--limit", list.limit, "At most this many")->capture_default_str();
  c_list->add_option("--filter", list.filter,
                     "labels.KEY=VALUE, labels.KEY:*, state=STATE, kind=KIND joined by AND");
  c_list->add_option("--order-by", list.order_by, "create_time desc (default) or create_time asc");

  auto* c_cancel = app.add_subcommand("cancel", "Cancel a job");
  c_cancel->add_option("job", job, "jobs/ID or ID")->required();

  auto* c_pause = app.add_subcommand(
      "pause", "Pause a job: it checkpoints and releases its workers until resumed");
  c_pause->add_option("job", job, "jobs/ID or ID")->required();
  auto* c_resume = app.add_subcommand("resume", "Resume a paused job from its latest checkpoint");
  c_resume->add_option("job", job, "jobs/ID or ID")->required();
  auto* c_delete =
      app.add_subcommand("delete", "Delete a job that has ended, with its checkpoints and outputs");
  c_delete->add_option("job", job, "jobs/ID or ID")->required();

  auto* c_files = app.add_subcommand("files", "Uploaded files: upload, list, get, delete");
  c_files->require_subcommand(1);
  std::string file_arg;
  int files_limit = 50;
  auto* c_files_upload =
      c_files->add_subcommand("upload", "Upload a file or a directory (a model); prints files/ID");
  c_files_upload->add_option("path", file_arg, "Local file or directory")->required();
  auto* c_files_list = c_files->add_subcommand("list", "List uploaded files, newest first");
  c_files_list->add_option("--limit", files_limit, "At most this many")->capture_default_str();
  auto* c_files_get = c_files->add_subcommand("get", "Show an uploaded file and its entries");
  c_files_get->add_option("name", file_arg, "files/ID or ID")->required();
  auto* c_files_delete = c_files->add_subcommand("delete", "Delete an uploaded file");
  c_files_delete->add_option("name", file_arg, "files/ID or ID")->required();

  bool follow = false;
  auto* c_logs =
      app.add_subcommand("logs", "Print a job's log lines, state changes, evals and checkpoints");
  c_logs->add_option("job", job, "jobs/ID or ID")->required();
  c_logs->add_flag("-f,--follow", follow, "Keep following until the job ends");

  auto* c_watch = app.add_subcommand(
      "watch", "Follow a job live (progress bar on a terminal); Ctrl-C stops watching");
  c_watch->add_option("job", job, "jobs/ID or ID")->required();

  auto* c_ckpt = app.add_subcommand("checkpoints", "List a job's checkpoints");
  c_ckpt->add_option("job", job, "jobs/ID or ID")->required();

  DownloadOptions dl;
  auto* c_dl = app.add_subcommand(
      "download", "Download outputs or a checkpoint as a PEFT directory (resumable, verified)");
  c_dl->add_option("job", dl.job, "jobs/ID or ID")->required();
  c_dl->add_option("--out", dl.out, "Directory to write")->required();
  c_dl->add_option("--step", dl.step, "Checkpoint at this step");
  c_dl->add_flag("--latest", dl.latest, "Latest checkpoint");
  c_dl->add_flag("--final", dl.final, "Final outputs (default)");

  ConvertOptions conv;
  auto* c_conv =
      app.add_subcommand("convert", "Submit a CONVERT job: base model -> initial PEFT adapter");
  c_conv->add_option("--model", conv.model, "HF checkpoint directory (on the workers) or flavor")
      ->required();
  c_conv->add_option("--rank", conv.rank, "LoRA rank")->capture_default_str();
  c_conv->add_option("--alpha", conv.alpha, "LoRA alpha")->capture_default_str();
  c_conv->add_option("--dropout", conv.dropout, "LoRA dropout")->capture_default_str();
  c_conv->add_option("--target-modules", conv.target_modules, "Comma separated")->delimiter(',');
  c_conv->add_flag("--rslora", conv.rslora, "rsLoRA scaling (alpha / sqrt(rank))");
  c_conv->add_option("--init", conv.init, "Initialization of the adapter weights")
      ->capture_default_str();
  c_conv->add_option("--export-dtype", conv.export_dtype, "dtype of the exported adapter")
      ->capture_default_str();
  c_conv->add_option("--name", conv.name, "Display name");
  c_conv->add_flag("-w,--watch", conv.watch, "Follow the job; exit with its outcome");
  c_conv->add_flag("--no-upload", conv.no_upload,
                   "Send --model as a path on the workers instead of uploading it");

  MergeOptions merge;
  auto* c_merge = app.add_subcommand(
      "merge", "Submit a MERGE job: base model + adapter -> merged HF checkpoint");
  c_merge->add_option("--model", merge.model, "HF checkpoint directory (on the workers) or flavor")
      ->required();
  c_merge->add_option("--adapter", merge.adapter, "PEFT adapter directory (on the workers)")
      ->required();
  c_merge->add_option("--dtype", merge.dtype, "Output dtype")->capture_default_str();
  c_merge->add_option("--name", merge.name, "Display name");
  c_merge->add_flag("-w,--watch", merge.watch, "Follow the job; exit with its outcome");
  c_merge->add_flag("--no-upload", merge.no_upload,
                    "Send --model and --adapter as paths on the workers instead of uploading them");

  app.add_subcommand("version", "Print the version");
  std::string shell;
  auto* c_completion = app.add_subcommand("completion", "Print a shell completion script");
  c_completion->add_option("shell", shell, "bash, zsh or fish")
      ->required()
      ->check(CLI::IsMember(CompletionShells()));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0) {
      // `loractl wathc`: name the command it was probably meant to be.
      if (auto unknown = UnknownCommand(app, std::vector<std::string>(argv + 1, argv + argc))) {
        std::cerr << "loractl: error: " << *unknown << std::endl;
        return kUsage;
      }
    }
    const int code = app.exit(e);
    return code == 0 ? kOk : kUsage;
  }
  if (c_completion->parsed()) {
    auto script = CompletionScript(app, shell);
    if (!script.ok()) return ReportError(script.status());
    std::cout << *script;
    return kOk;
  }
  if (app.got_subcommand("version")) {
    std::cout << kVersion << std::endl;
    return kOk;
  }
  // Every other command talks to lorad: its address first.
  const char* source = app.count("--addr") > 0            ? "--addr"
                       : !Env("LORACTL_ADDR", "").empty() ? "LORACTL_ADDR"
                                                          : "address";
  if (absl::Status s = ValidateAddress(g.client.address, source); !s.ok()) return ReportError(s);
  if (!token_file.empty()) {
    auto token = lora::ReadSecretFile(token_file);
    if (!token.ok()) {
      std::cerr << "loractl: --token-file: " << token.status().message() << std::endl;
      return kUsage;
    }
    g.client.token = *token;
  }
  g.format = format == "json" ? Format::kJson : format == "yaml" ? Format::kYaml : Format::kTable;
  g.client.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  g.client.connect_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(connect_timeout_s * 1000));
  g.reconnect_timeout = std::chrono::milliseconds(static_cast<int64_t>(reconnect_timeout_s * 1000));
  struct sigaction sa = {};
  sa.sa_handler = OnInterrupt;
  ::sigaction(SIGINT, &sa, nullptr);

  if (c_submit->parsed()) return Submit(g, submit);
  if (c_get->parsed()) return Get(g, job);
  if (c_list->parsed()) return List(g, list);
  if (c_cancel->parsed()) return Cancel(g, job);
  if (c_pause->parsed()) return Pause(g, job);
  if (c_resume->parsed()) return Resume(g, job);
  if (c_delete->parsed()) return Delete(g, job);
  if (c_files_upload->parsed()) return FilesUpload(g, file_arg);
  if (c_files_list->parsed()) return FilesList(g, files_limit);
  if (c_files_get->parsed()) return FilesGet(g, file_arg);
  if (c_files_delete->parsed()) return FilesDelete(g, file_arg);
  if (c_logs->parsed()) return Logs(g, job, follow);
  if (c_watch->parsed()) return Watch(g, job);
  if (c_ckpt->parsed()) return Checkpoints(g, job);
  if (c_dl->parsed()) return Download(g, dl);
  if (c_conv->parsed()) return Convert(g, conv);
  if (c_merge->parsed()) return Merge(g, merge);
  return kUsage;  // unreachable: a command is required
}
