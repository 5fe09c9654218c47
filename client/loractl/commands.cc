#include "client/loractl/commands.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/file_upload.h"
#include "client/loractl/watch_view.h"
#include "common/file_util.h"
#include "common/job_spec/job_spec.h"

namespace lora::loractl {

std::atomic<bool> g_interrupted{false};

namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<LoraClient>> Connect(const Globals& g) {
  return LoraClient::Create(g.client);
}

std::string NewRequestId() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd());
  return absl::StrFormat("%016x%016x", rng(), rng());
}

bool IsTty() { return ::isatty(STDOUT_FILENO) == 1; }

int TerminalWidth() {
  winsize w{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col > 0) return w.ws_col;
  return 100;
}

int OutcomeCode(const lora::v1::Job& job) {
  switch (job.state()) {
    case lora::v1::SUCCEEDED:
      return kOk;
    case lora::v1::CANCELLED:
      return kJobCancelled;
    default:
      return kJobFailed;
  }
}

void PrintJob(const lora::v1::Job& job, const Globals& g) {
  if (g.format != Format::kTable) return PrintMessages({&job}, g.format, false);
  const auto& p = job.progress();
  std::vector<std::vector<std::string>> rows = {
      {"name", job.name()},
      {"display name", job.display_name()},
      {"kind", JobKindName(job.kind())},
      {"state", StateName(job.state())},
      {"progress", absl::StrCat(Progress(job),
                                p.total_steps() > 0
                                    ? absl::StrCat(" (step ", p.step(), "/", p.total_steps(), ")")
                                    : "")},
      {"loss", FormatLoss(p.loss())},
      {"eval loss",
       absl::StrCat(FormatLoss(p.eval_loss()),
                    p.initial_eval_loss() > 0
                        ? absl::StrCat(" (from ", FormatLoss(p.initial_eval_loss()), ")")
                        : "")},
      {"tokens/s",
       p.tokens_per_second() > 0 ? absl::StrFormat("%.0f", p.tokens_per_second()) : "-"},
      // Planned restarts (drains) do not spend attempts; show them apart.
      {"attempt",
       absl::StrCat(
           job.attempt() - job.restarts(), " of ", job.max_attempts(),
           job.restarts() > 0 ? absl::StrCat(" (+", job.restarts(), " planned restarts)") : "")},
      {"workers", job.workers().empty() ? "-" : absl::StrJoin(job.workers(), ", ")},
      {"latest checkpoint", job.latest_checkpoint_step() > 0
                                ? absl::StrCat("step ", job.latest_checkpoint_step())
                                : "-"},
      {"age", Age(job.create_time())}};
  if (!job.queue_reason().empty()) rows.push_back({"queued because", job.queue_reason()});
  if (job.error().code() != 0 || !job.error().message().empty())
    rows.push_back({"error", job.error().message()});
  if (job.ranks_size() > 1) {
    for (const auto& r : job.ranks())
      rows.push_back({absl::StrCat("rank ", r.rank()), DescribeRank(r)});
  }
  for (const auto& f : job.outputs())
    rows.push_back({"output", absl::StrCat(f.path(), " (", f.size(), " bytes)")});
  PrintTable({"FIELD", "VALUE"}, rows);
}

absl::StatusOr<lora::v1::JobState> ParseState(const std::string& s) {
  lora::v1::JobState state;
  if (!lora::v1::JobState_Parse(absl::AsciiStrToUpper(s), &state) ||
      state == lora::v1::JOB_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("--state: '", s, "' is not a job state (queued, running, ...)"));
  }
  return state;
}

absl::StatusOr<lora::v1::JobKind> ParseKind(const std::string& s) {
  lora::v1::JobKind kind;
  if (!lora::v1::JobKind_Parse(absl::StrCat("JOB_KIND_", absl::AsciiStrToUpper(s)), &kind) ||
      kind == lora::v1::JOB_KIND_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kind: '", s, "' is not one of train, convert, merge"));
  }
  return kind;
}

int SubmitSpec(const Globals& g, lora::v1::JobSpec spec, const std::string& request_id, bool watch,
               const std::string& base_dir, bool upload) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  if (absl::Status s = PrepareSpecPaths(**client, &spec, base_dir, upload); !s.ok())
    return ReportError(s);
  auto job = (*client)->CreateJob(spec, request_id.empty() ? NewRequestId() : request_id);
  if (!job.ok()) return ReportError(job.status());
  if (g.format != Format::kTable && !watch) {
    PrintMessages({&*job}, g.format, false);
  } else {
    std::cout << job->name() << std::endl;
  }
  if (!watch) return kOk;
  return WatchToEnd(**client, job->name(), g);
}

// Reconnects within --reconnect-timeout, telling the user on stderr: when the stream is lost,
// when the reason for not getting it back changes, and when it resumed.
ReconnectPolicy Reconnecting(const Globals& g, const std::string& name) {
  ReconnectPolicy policy;
  policy.give_up_after = g.reconnect_timeout;
  const std::string address = g.client.address;
  auto last_cause = std::make_shared<std::string>();
  policy.on_retry = [name, address, last_cause](const absl::Status& cause, int attempt,
                                                std::chrono::milliseconds delay, int64_t last) {
    const std::string why =
        absl::StrCat(absl::StatusCodeToString(cause.code()), ": ", cause.message());
    if (attempt > 1 && why == *last_cause) return;
    *last_cause = why;
    Notice(absl::StrFormat(
        "%s %s from lorad at %s (%s); reconnecting in %.1fs (attempt %d), resuming after "
        "event %d",
        attempt == 1 ? "lost the event stream of" : "still no event stream of", name, address, why,
        static_cast<double>(delay.count()) / 1000, attempt, last));
  };
  policy.on_reconnected = [address, last_cause](int64_t last) {
    last_cause->clear();
    Notice(absl::StrCat("reconnected to lorad at ", address, "; resumed after event ", last));
  };
  return policy;
}

}  // namespace

int WatchToEnd(LoraClient& client, const std::string& name, const Globals& g) {
  auto job = client.GetJob(name);
  if (!job.ok()) return ReportError(job.status());
  const bool structured = g.format != Format::kTable;
  WatchView view(stdout, IsTty() && !structured, TerminalWidth());
  if (!structured) view.Start(*job);
  absl::Status s = client.Watch(
      name, 0,
      [&](const lora::v1::JobEvent& e) {
        if (structured) {
          PrintMessages({&e}, g.format == Format::kYaml ? Format::kYaml : Format::kJson, false);
        } else {
          view.OnEvent(e);
        }
        return true;
      },
      &g_interrupted, Reconnecting(g, name));
  if (g_interrupted) {
    EndLiveLine();
    std::cerr << "loractl: stopped watching; " << name << " keeps running (loractl watch " << name
              << " to follow it again)" << std::endl;
    return kOk;
  }
  if (!s.ok()) return ReportError(s);
  job = client.GetJob(name);
  if (!job.ok()) return ReportError(job.status());
  if (!structured) view.Finish(*job);
  return OutcomeCode(*job);
}

int Submit(const Globals& g, const SubmitOptions& o) {
  auto parsed = ReadJobSpecFile(o.file);
  if (!parsed.ok()) return ReportError(parsed.status());
  for (const std::string& assignment : o.overrides) {
    absl::Status s = ApplyOverride(assignment, &parsed->spec);
    if (!s.ok()) return ReportError(s);
  }
  ApplyJobSpecDefaults(&parsed->spec);
  // The same validation lorad runs, with file and line in the messages.
  absl::Status valid = ValidateJobSpec(parsed->spec, &*parsed, o.file);
  if (!valid.ok()) return ReportError(valid);
  // Relative paths in a spec file are relative to the file, wherever loractl runs.
  std::error_code ec;
  const std::string base = fs::absolute(o.file, ec).parent_path().string();
  return SubmitSpec(g, parsed->spec, o.request_id, o.watch, base, !o.no_upload);
}

int Get(const Globals& g, const std::string& job) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  auto j = (*client)->GetJob(JobName(job));
  if (!j.ok()) return ReportError(j.status());
  PrintJob(*j, g);
  return kOk;
}

int List(const Globals& g, const ListOptions& o) {
  lora::v1::ListJobsRequest req;
  for (const auto& s : o.states) {
    auto state = ParseState(s);
    if (!state.ok()) return ReportError(state.status());
    req.add_states(*state);
  }
  for (const auto& k : o.kinds) {
    auto kind = ParseKind(k);
    if (!kind.ok()) return ReportError(kind.status());
    req.add_kinds(*kind);
  }
  if (o.limit <= 0) return ReportError(absl::InvalidArgumentError("--limit: must be > 0"));
  req.set_filter(o.filter);
  req.set_order_by(o.order_by);
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  std::vector<lora::v1::Job> jobs;
  while (static_cast<int>(jobs.size()) < o.limit) {
    req.set_page_size(std::min(o.limit - static_cast<int>(jobs.size()), 1000));
    auto page = (*client)->ListJobs(req);
    if (!page.ok()) return ReportError(page.status());
    for (const auto& j : page->jobs()) jobs.push_back(j);
    if (page->next_page_token().empty()) break;
    req.set_page_token(page->next_page_token());
  }
  if (g.format != Format::kTable) {
    std::vector<const google::protobuf::Message*> ms;
    for (const auto& j : jobs) ms.push_back(&j);
    PrintMessages(ms, g.format, true);
    return kOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& j : jobs) {
    rows.push_back({j.name(), j.display_name().empty() ? "-" : j.display_name(),
                    JobKindName(j.kind()), StateName(j.state()), Progress(j),
                    FormatLoss(j.progress().loss()), FormatLoss(j.progress().eval_loss()),
                    Age(j.create_time())});
  }
  PrintTable({"NAME", "DISPLAY NAME", "KIND", "STATE", "PROGRESS", "LOSS", "EVAL LOSS", "AGE"},
             rows);
  return kOk;
}

namespace {

// A job-changing call's answer: the job as JSON/YAML, or its name and state.
int PrintJobAnswer(const Globals& g, const absl::StatusOr<lora::v1::Job>& j) {
  if (!j.ok()) return ReportError(j.status());
  if (g.format != Format::kTable) {
    PrintMessages({&*j}, g.format, false);
  } else {
    std::cout << j->name() << " " << StateName(j->state()) << std::endl;
  }
  return kOk;
}

}  // namespace

int Cancel(const Globals& g, const std::string& job) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  return PrintJobAnswer(g, (*client)->CancelJob(JobName(job)));
}

int Pause(const Globals& g, const std::string& job) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  return PrintJobAnswer(g, (*client)->PauseJob(JobName(job)));
}

int Resume(const Globals& g, const std::string& job) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  return PrintJobAnswer(g, (*client)->ResumeJob(JobName(job)));
}

int Delete(const Globals& g, const std::string& job) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  if (absl::Status s = (*client)->DeleteJob(JobName(job)); !s.ok()) return ReportError(s);
  std::cout << JobName(job) << " deleted" << std::endl;
  return kOk;
}

int Logs(const Globals& g, const std::string& job, bool follow) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  const std::string name = JobName(job);
  auto current = (*client)->GetJob(name);
  if (!current.ok()) return ReportError(current.status());
  const int64_t until = current->last_sequence();
  absl::Status s = (*client)->Watch(
      name, 0,
      [&](const lora::v1::JobEvent& e) {
        if (e.has_log() || e.has_state_change() || e.has_eval() || e.has_checkpoint()) {
          std::cout << DescribeEvent(e) << "\n";
          std::cout.flush();
        }
        return follow || e.sequence() < until;
      },
      &g_interrupted, Reconnecting(g, name));
  if (!s.ok() && !absl::IsCancelled(s)) return ReportError(s);
  return kOk;
}

int Checkpoints(const Globals& g, const std::string& job) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  auto list = (*client)->ListCheckpoints(JobName(job));
  if (!list.ok()) return ReportError(list.status());
  if (g.format != Format::kTable) {
    std::vector<const google::protobuf::Message*> ms;
    for (const auto& c : *list) ms.push_back(&c);
    PrintMessages(ms, g.format, true);
    return kOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : *list) {
    rows.push_back({absl::StrCat(c.step()), c.path(), absl::StrCat(c.files_size()),
                    absl::StrCat(c.bytes()), absl::StrCat(c.attempt()), Age(c.create_time())});
  }
  PrintTable({"STEP", "PATH", "FILES", "BYTES", "ATTEMPT", "AGE"}, rows);
  return kOk;
}

int Watch(const Globals& g, const std::string& job) {
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  return WatchToEnd(**client, JobName(job), g);
}

int Download(const Globals& g, const DownloadOptions& o) {
  const int chosen = (o.step >= 0) + o.latest + o.final;
  if (chosen > 1)
    return ReportError(absl::InvalidArgumentError("give one of --step, --latest, --final"));
  auto client = Connect(g);
  if (!client.ok()) return ReportError(client.status());
  const std::string name = JobName(o.job);
  // (artifact path, local path) pairs.
  std::vector<std::pair<lora::v1::ArtifactFile, std::string>> files;
  std::string what;
  if (o.step >= 0 || o.latest) {
    auto list = (*client)->ListCheckpoints(name);
    if (!list.ok()) return ReportError(list.status());
    const lora::v1::Checkpoint* pick = nullptr;
    for (const auto& c : *list) {
      if (o.latest || c.step() == o.step) pick = &c;
    }
    if (pick == nullptr) {
      return ReportError(absl::NotFoundError(
          o.latest ? absl::StrCat(name, " has no checkpoint yet")
                   : absl::StrCat(name, " has no checkpoint at step ", o.step)));
    }
    what = absl::StrCat("checkpoint step ", pick->step());
    for (const auto& f : pick->files()) {
      std::string rel = f.path().substr(std::min(f.path().size(), pick->path().size() + 1));
      // The PEFT files land in --out itself; the resume state beside them.
      rel = absl::StartsWith(rel, "adapter/") ? rel.substr(8) : "resume_state/" + rel;
      files.emplace_back(f, JoinPath(o.out, rel));
    }
  } else {
    auto j = (*client)->GetJob(name);
    if (!j.ok()) return ReportError(j.status());
    if (j->outputs().empty()) {
      return ReportError(absl::NotFoundError(
          absl::StrCat(name, " has no final outputs (state ", StateName(j->state()), ")")));
    }
    what = "final outputs";
    for (const auto& f : j->outputs()) {
      std::string rel = f.path();
      if (absl::StartsWith(rel, "final/adapter/"))
        rel = rel.substr(14);
      else if (absl::StartsWith(rel, "final/"))
        rel = rel.substr(6);
      files.emplace_back(f, JoinPath(o.out, rel));
    }
  }
  int64_t total = 0, transferred = 0;
  for (const auto& [f, local] : files) {
    auto d = (*client)->Download(name, f.path(), local);
    if (!d.ok()) return ReportError(d.status());
    total += d->bytes;
    transferred += d->transferred;
  }
  std::cout << absl::StrFormat(
      "downloaded %s of %s: %d files, %d bytes (%d transferred, sha256 verified) into %s\n", what,
      name, files.size(), total, transferred, o.out);
  std::error_code ec;
  if (fs::exists(JoinPath(o.out, "adapter_config.json"), ec))
    std::cout << "PEFT adapter: " << o.out << "\n";
  return kOk;
}

namespace {

// A `kind` job named `name` on `model`: a checkpoint directory, else a flavor.
lora::v1::JobSpec ModelJobSpec(lora::v1::JobKind kind, const std::string& name,
                               const std::string& model) {
  lora::v1::JobSpec spec;
  spec.mutable_job()->set_kind(kind);
  spec.mutable_job()->set_name(name);
  std::error_code ec;
  if (fs::is_directory(model, ec) || absl::StartsWith(model, kWorkerPathPrefix) ||
      absl::StartsWith(model, "files/"))
    spec.mutable_model()->set_path(model);
  else
    spec.mutable_model()->set_flavor(model);
  return spec;
}

// Defaults, local validation (errors name the field), then submission.
int ValidateAndSubmit(const Globals& g, lora::v1::JobSpec spec, bool watch, bool upload) {
  ApplyJobSpecDefaults(&spec);
  if (absl::Status s = ValidateJobSpec(spec); !s.ok()) return ReportError(s);
  std::error_code ec;
  return SubmitSpec(g, spec, "", watch, fs::current_path(ec).string(), upload);
}

}  // namespace

int Convert(const Globals& g, const ConvertOptions& o) {
  lora::v1::JobSpec spec = ModelJobSpec(lora::v1::JOB_KIND_CONVERT, o.name, o.model);
  spec.mutable_lora()->set_rank(o.rank);
  spec.mutable_lora()->set_alpha(o.alpha);
  spec.mutable_lora()->set_dropout(o.dropout);
  spec.mutable_lora()->set_use_rslora(o.rslora);
  spec.mutable_lora()->set_init(o.init);
  for (const auto& t : o.target_modules) spec.mutable_lora()->add_target_modules(t);
  spec.mutable_checkpoint()->set_export_dtype(o.export_dtype);
  return ValidateAndSubmit(g, std::move(spec), o.watch, !o.no_upload);
}

int Merge(const Globals& g, const MergeOptions& o) {
  lora::v1::JobSpec spec = ModelJobSpec(lora::v1::JOB_KIND_MERGE, o.name, o.model);
  spec.mutable_lora()->set_adapter(o.adapter);
  spec.mutable_checkpoint()->set_export_dtype(o.dtype);
  return ValidateAndSubmit(g, std::move(spec), o.watch, !o.no_upload);
}

}  // namespace lora::loractl
