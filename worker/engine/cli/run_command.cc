// lora-train run: executes a job spec (train, convert or merge) and streams events.
#include <signal.h>

#include <c10/util/Exception.h>

#include <atomic>
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/data_roots.h"
#include "common/file_util.h"
#include "common/job_spec/job_spec.h"
#include "worker/engine/cli/cli_common.h"
#include "worker/engine/cli/job_file.h"
#include "worker/engine/dist/dist_trainer.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/tensor_io.h"
#include "worker/engine/train/device.h"
#include "worker/engine/train/events.h"
#include "worker/engine/train/model_setup.h"
#include "worker/engine/train/trainer.h"

namespace lora {
namespace {

std::atomic<bool> g_stop{false};

void OnStopSignal(int signo) {
  if (g_stop.exchange(true)) {
    // Second signal: the user insists; leave now (no checkpoint).
    ::_exit(128 + signo);
  }
}

struct RunOptions {
  std::string job;
  std::string out;
  std::string resume;
  int events_fd = -1;
  std::string events_file;
  std::vector<std::string> overrides;
  bool quiet = false;
  bool portable_kernels = false;
  std::vector<std::string> data_roots;
  std::string copied_checkpoints_file;
};

absl::Status RunConvertJob(const lora::v1::JobSpec& spec, const std::string& out,
                           EventSink& events) {
  auto prepared = PrepareModel(spec);
  if (!prepared.ok()) return prepared.status();
  auto dtype = ParseFloatDtype(spec.checkpoint().export_dtype());
  if (!dtype.ok()) return dtype.status();
  const std::string dir = JoinPath(out, "final/adapter");
  PeftExportOptions peft;
  peft.dtype = *dtype;
  peft.base_model_name_or_path = prepared->base_source;
  absl::Status s = MakeDirectories(JoinPath(out, "final"));
  if (s.ok()) s = ExportPeftAdapter(*prepared->model, prepared->lora, dir, peft);
  if (!s.ok()) return s;
  const ConversionReport& report = prepared->report;
  lora::engine::v1::Summary summary;
  for (const WrappedModule& m : report.modules) {
    lora::engine::v1::WrappedModule* w = summary.add_wrapped_modules();
    w->set_name(m.name);
    w->set_in_features(m.in_features);
    w->set_out_features(m.out_features);
    w->set_rank(static_cast<int32_t>(m.rank));
    w->set_alpha(m.alpha);
    w->set_scale(m.scale);
  }
  summary.set_num_wrapped_modules(static_cast<int64_t>(report.modules.size()));
  summary.set_trainable_parameters(report.trainable_parameters);
  summary.set_total_parameters(report.total_parameters);
  summary.set_adapter_parameters(report.adapter_parameters);
  summary.set_trainable_percent(report.total_parameters > 0
                                    ? 100.0 * static_cast<double>(report.trainable_parameters) /
                                          static_cast<double>(report.total_parameters)
                                    : 0.0);
  summary.set_adapter_bytes(static_cast<int64_t>(report.AdapterBytes(*dtype)));
  (*summary.mutable_outputs())["adapter"] = dir;
  return ReportFinished(events, out, summary, report.ToText(*dtype) + "adapter written to " + dir);
}

absl::Status RunMergeJob(const lora::v1::JobSpec& spec, const std::string& out, EventSink& events) {
  // lora.adapter is merged into the base (PrepareModel imports it).
  auto prepared = PrepareModel(spec);
  if (!prepared.ok()) return prepared.status();
  auto dtype = ParseFloatDtype(spec.checkpoint().export_dtype());
  if (!dtype.ok()) return dtype.status();
  MergeAdapters(*prepared->model);
  const std::string dir = JoinPath(out, "final/merged");
  absl::Status s = MakeDirectories(JoinPath(out, "final"));
  if (!s.ok()) return s;
  SaveOptions save;
  save.dtype = *dtype;
  s = SaveHfModelAtomically(*prepared->model, dir, save);
  if (!s.ok()) return s;
  lora::engine::v1::Summary summary;
  summary.set_merged_modules(static_cast<int64_t>(prepared->report.modules.size()));
  (*summary.mutable_outputs())["merged"] = dir;
  return ReportFinished(events, out, summary, "merged checkpoint written to " + dir);
}

int RunJob(const RunOptions& o) {
  EventSinkOptions sink_options;
  sink_options.fd = o.events_fd;
  sink_options.human_log = !o.quiet;
  std::string out = o.out;
  auto spec = LoadJobFile(o.job, o.overrides);
  if (!spec.ok()) return ReportError("run", spec.status());
  if (out.empty()) out = JoinPath("runs", spec->job().name().empty() ? "run" : spec->job().name());
  const char* rank_env = std::getenv("RANK");
  const int my_rank = rank_env ? std::atoi(rank_env) : 0;
  std::string rank_dir = out;
  if (spec->resources().world_size() > 1 && my_rank > 0 && o.events_file.empty()) {
    // Rank 0 owns the output directory (checkpoints, exports); other ranks log beside it.
    rank_dir = JoinPath(out, absl::StrCat("rank-", my_rank));
  }
  if (absl::Status s = MakeDirectories(rank_dir); !s.ok()) return ReportError("run", s);
  sink_options.path = o.events_file.empty() ? JoinPath(rank_dir, "events.jsonl") : o.events_file;
  sink_options.human_log = !o.quiet && my_rank == 0;
  sink_options.rank = spec->resources().world_size() > 1 ? my_rank : 0;
  EventSink events(sink_options);
  auto fail = [&](const absl::Status& s) {
    events.Failed(s);
    return ReportError("run", s);
  };
  // Every file a job names is opened below (models, tokenizers, adapters, datasets): check them
  // all first. The worker checked too; this holds for lora-train run on its own as well.
  auto roots = DataRoots::Create(o.data_roots);
  if (!roots.ok()) {
    return fail(
        absl::InvalidArgumentError(absl::StrCat("--data-root: ", roots.status().message())));
  }
  if (absl::Status s = roots->CheckSpec(*spec); !s.ok()) return fail(s);
  const int world = spec->resources().world_size();
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);

  const std::string spec_path = JoinPath(out, "job.toml");
  if (absl::Status s = WriteFileAtomically(spec_path, JobSpecToToml(*spec)); !s.ok())
    return fail(s);
  switch (spec->job().kind()) {
    case lora::v1::JOB_KIND_CONVERT:
      if (absl::Status s = RunConvertJob(*spec, out, events); !s.ok()) return fail(s);
      return kExitOk;
    case lora::v1::JOB_KIND_MERGE:
      if (absl::Status s = RunMergeJob(*spec, out, events); !s.ok()) return fail(s);
      return kExitOk;
    default:
      break;
  }
  TrainerOptions t;
  auto device = ResolveTrainingDevice(spec->resources().device());
  if (!device.ok()) return fail(device.status());
  if (o.portable_kernels && spec->parallelism().context_parallel_degree() > 1) {
    // Context parallelism expresses its masks as the fused kernel's per-query key ranges.
    return fail(absl::InvalidArgumentError(
        "--portable-kernels: parallelism.context_parallel_degree > 1 needs the fused kernels"));
  }
  t.device = *device;
  t.fused_kernels = !o.portable_kernels;
  t.spec = *spec;
  t.output_dir = out;
  t.resume_from = o.resume;
  t.copied_checkpoints_file = o.copied_checkpoints_file;
  t.events = &events;
  t.stop_requested = &g_stop;
  absl::StatusOr<TrainResult> result;
  try {
    result = world > 1 ? dist::RunDistributedTraining(t) : RunTraining(t);
  } catch (const std::exception& e) {
    // CUDA out-of-memory becomes RESOURCE_EXHAUSTED with the memory figures and the knobs.
    result = StatusFromTorchError(e, t.device);
  }
  if (!result.ok()) return fail(result.status());
  return result->interrupted ? kExitInterrupted : kExitOk;
}

}  // namespace

void AddRunCommand(CLI::App& app, CommandRunner* runner) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd =
      app.add_subcommand("run", "Run a job spec: LoRA training (or a convert / merge job)");
  cmd->add_option("--job", o->job, "Job spec: TOML (.toml) or proto JSON (.json)")->required();
  cmd->add_option("--out", o->out, "Output directory (default runs/<job.name>)");
  cmd->add_option("--resume", o->resume,
                  "Continue from a checkpoint: run, checkpoints/ or step directory");
  cmd->add_option("--events-fd", o->events_fd,
                  "Also write JSON-line events to this file descriptor");
  cmd->add_option("--events-file", o->events_file,
                  "JSON-line events file (default <out>/events.jsonl)");
  cmd->add_option("--set", o->overrides, "Override a spec key: section.key=value (repeatable)");
  cmd->add_flag("--quiet", o->quiet, "No readable log on stderr");
  cmd->add_option("--data-root", o->data_roots,
                  "Directory the job's model, tokenizer, adapter and dataset paths must lie under "
                  "(repeatable; symbolic links and .. count where they lead; default: anywhere)");
  cmd->add_option("--copied-checkpoints-file", o->copied_checkpoints_file,
                  "File in which the launcher keeps the newest checkpoint step it has copied off "
                  "this machine; checkpoint.keep_latest never deletes a later one");
  cmd->add_flag("--portable-kernels", o->portable_kernels,
                "Attention and SwiGLU as plain LibTorch ops (what CUDA runs) instead of the "
                "fused CPU kernels; single-process training");
  cmd->callback([o, runner] { *runner = [o] { return RunJob(*o); }; });
}

}  // namespace lora
