#include "worker/engine/train/training_loop.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/process_stats.h"
#include "common/status_macros.h"
#include "worker/engine/data/training_data.h"
#include "worker/engine/train/checkpointer.h"
#include "worker/engine/train/flops.h"

namespace lora {
namespace {

using lora::engine::v1::EngineEvent;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

// Emits the `checkpoint` event for a written checkpoint and returns it (the summary's
// `last_checkpoint`).
lora::engine::v1::Checkpoint ReportCheckpoint(EventSink& events, const CheckpointInfo& info,
                                              bool drain) {
  EngineEvent event;
  lora::engine::v1::Checkpoint* c = event.mutable_checkpoint();
  c->set_step(info.step);
  c->set_path(info.path);
  c->set_bytes(static_cast<int64_t>(info.bytes));
  c->set_sha256(info.sha256);
  for (const CheckpointFile& f : info.files) {
    lora::engine::v1::FileDigest* d = c->add_files();
    d->set_path(f.path);
    d->set_size(static_cast<int64_t>(f.bytes));
    d->set_sha256(f.sha256);
  }
  c->set_drain(drain);
  lora::engine::v1::Checkpoint record = *c;
  events.Emit(std::move(event), absl::StrFormat("step %d  checkpoint %s (%d bytes)%s", info.step,
                                                info.path, info.bytes, drain ? ", stopping" : ""));
  return record;
}

}  // namespace

void SetTrainingThreads(const lora::v1::JobSpec& spec) {
  const int threads = spec.training().num_threads() > 0
                          ? spec.training().num_threads()
                          : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, threads));
}

BatcherOptions TrainBatcherOptions(const lora::v1::JobSpec& spec) {
  BatcherOptions o;
  o.seq_len = spec.training().seq_len();
  o.pack = spec.dataset().pack();
  o.seed = spec.training().seed();
  o.shuffle = true;
  return o;
}

BatcherOptions ValidationBatcherOptions(const lora::v1::JobSpec& spec) {
  BatcherOptions o = TrainBatcherOptions(spec);
  o.shuffle = false;
  return o;
}

AdamWOptions SpecAdamWOptions(const lora::v1::JobSpec& spec) {
  AdamWOptions adam;
  adam.beta1 = spec.optimizer().betas(0);
  adam.beta2 = spec.optimizer().betas(1);
  adam.eps = spec.optimizer().eps();
  adam.weight_decay = spec.optimizer().weight_decay();
  return adam;
}

LrSchedule SpecLrSchedule(const lora::v1::JobSpec& spec) {
  return LrSchedule{spec.optimizer().lr(), spec.lr_scheduler().warmup_steps(),
                    spec.training().steps(), spec.lr_scheduler().decay_type(),
                    spec.lr_scheduler().min_lr_factor()};
}

absl::StatusOr<TrainResult> RunTrainingLoop(const TrainerOptions& options,
                                            const BackendFactory& make_backend) {
  // A copy: training.epochs becomes training.steps once the data is read.
  lora::v1::JobSpec spec = options.spec;
  EventSink& events = *options.events;
  const double t_start = Now();
  const auto& tcfg = spec.training();
  torch::manual_seed(tcfg.seed());  // dropout draws from the default generator

  LORA_RETURN_IF_ERROR(MakeDirectories(options.output_dir));
  LORA_ASSIGN_OR_RETURN(PreparedModel prepared, PrepareModel(spec));
  const LlamaConfig mc = prepared.model->config();
  LORA_ASSIGN_OR_RETURN(std::unique_ptr<TrainingBackend> backend, make_backend(spec, prepared));
  const bool leader = backend->leader();
  const int world = backend->world_size();

  LORA_ASSIGN_OR_RETURN(TrainingData data, LoadTrainingData(spec, mc.vocab_size));
  const int64_t n_train_examples = static_cast<int64_t>(data.train.size());
  Batcher train_data(std::move(data.train), TrainBatcherOptions(spec));
  Batcher val_data(std::move(data.validation), ValidationBatcherOptions(spec));
  if (train_data.windows_per_epoch() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset: the training split is shorter than one sequence of ", tcfg.seq_len(), " tokens"));
  }
  const int64_t T = tcfg.seq_len();
  // Training windows per optimizer step, every data-parallel replica's together.
  const int64_t rows_per_step =
      tcfg.local_batch_size() * backend->data_parallel_size() * tcfg.gradient_accumulation_steps();
  spec.mutable_training()->set_steps(
      TotalSteps(tcfg, train_data.windows_per_epoch(), rows_per_step));
  const int64_t total_steps = tcfg.steps();
  const bool has_validation = val_data.windows_per_epoch() > 0;

  AdamW optimizer(backend->trainable(), SpecAdamWOptions(spec));
  const LrSchedule schedule = SpecLrSchedule(spec);

  TrainerState state;  // kept current: each checkpoint writes it
  state.world_size = world;
  state.mesh = backend->mesh();
  if (!options.resume_from.empty()) {
    LORA_ASSIGN_OR_RETURN(
        LoadedCheckpoint loaded,
        LoadLatestCheckpoint(options.resume_from, options.device,
                             [&](const std::string& dir, const absl::Status& why) {
                               events.Log("warning", absl::StrCat("checkpoint ", dir,
                                                                  " skipped: ", why.message(),
                                                                  "; trying an older one"));
                             }));
    LORA_RETURN_IF_ERROR(backend->RestoreAdapters(loaded.adapters));
    LORA_RETURN_IF_ERROR(optimizer.LoadState(backend->ScatterOptimizerState(loaded.optimizer_state),
                                             loaded.state.optimizer_step));
    state.step = loaded.state.step;
    state.tokens = loaded.state.tokens;
    state.train_loss = loaded.state.train_loss;
    state.eval_loss = loaded.state.eval_loss;
    state.initial_eval_loss = loaded.state.initial_eval_loss;
    events.Log("info", absl::StrCat(world > 1 ? absl::StrCat("rank ", backend->rank(), " ") : "",
                                    "resumed from ", loaded.dir, " at step ", state.step));
  }
  const int64_t start_step = state.step;
  if (world > 1) {
    // Each rank chose its own newest intact checkpoint; copies that differ must not train on.
    const std::vector<int64_t> starts = backend->AllRanks(start_step);
    if (std::count(starts.begin(), starts.end(), start_step) != world) {
      return absl::FailedPreconditionError(
          absl::StrCat("ranks resumed at different steps (", absl::StrJoin(starts, ", "),
                       " in rank order): their checkpoint copies differ"));
    }
  }

  const double flops_per_token = TrainingFlopsPerToken(mc, T, prepared.report.trainable_parameters);
  const auto [first_layer, last_layer] = backend->stage_layers();
  {
    EngineEvent event;
    lora::engine::v1::Started* s = event.mutable_started();
    s->set_job(spec.job().name());
    s->set_total_steps(total_steps);
    s->set_start_step(start_step);
    s->set_world_size(world);
    s->set_mesh(backend->mesh());
    s->add_stage_layers(first_layer);
    s->add_stage_layers(last_layer);
    s->set_base_model(prepared.base_source);
    s->set_trainable_parameters(prepared.report.trainable_parameters);
    s->set_total_parameters(prepared.report.total_parameters);
    s->set_parameter_bytes(backend->ParameterBytes());
    s->set_flops_per_token(flops_per_token);
    s->set_threads(at::get_num_threads());
    s->set_wrapped_modules(static_cast<int64_t>(prepared.report.modules.size()));
    s->set_train_examples(n_train_examples);
    s->set_windows_per_epoch(train_data.windows_per_epoch());
    events.Emit(
        std::move(event),
        world > 1
            ? absl::StrFormat("rank %d/%d (%s) layers [%d, %d): %d trainable / %d parameters",
                              backend->rank(), world, backend->mesh(), first_layer, last_layer,
                              prepared.report.trainable_parameters,
                              prepared.report.total_parameters)
            : absl::StrFormat(
                  "training %s: %d steps from step %d, %d trainable / %d parameters, %d threads",
                  prepared.base_source, total_steps, start_step,
                  prepared.report.trainable_parameters, prepared.report.total_parameters,
                  at::get_num_threads()));
  }

  auto evaluate = [&](int64_t step) {
    const EvalResult r = backend->Evaluate(val_data);
    state.eval_loss = r.loss;
    if (leader) {
      EngineEvent event;
      event.mutable_eval()->set_step(step);
      event.mutable_eval()->set_eval_loss(r.loss);
      event.mutable_eval()->set_eval_tokens(r.tokens);
      events.Emit(std::move(event),
                  absl::StrFormat("step %d  eval_loss %.4f (%d tokens)", step, r.loss, r.tokens));
    }
    return r.loss;
  };
  if (has_validation && start_step == 0) state.initial_eval_loss = evaluate(0);

  std::optional<lora::engine::v1::Checkpoint> last_checkpoint;  // rank 0's record of it
  int64_t last_checkpoint_step = -1;  // known to every rank: checkpoints are collective
  auto save_checkpoint = [&](int64_t step, bool drain) -> absl::Status {
    CheckpointContents c;
    c.device = options.device;
    c.adapters = backend->GatherAdapters();
    c.optimizer_state = backend->GatherOptimizerState(optimizer.State());
    c.modules = backend->Modules();
    c.lora = &prepared.lora;
    c.base_model = prepared.base_source;
    c.optimizer_step = optimizer.step_count();
    c.state = state;
    c.state.step = step;
    c.state.optimizer_step = optimizer.step_count();
    c.state.data_cursor_windows = step * rows_per_step;
    absl::Status status = absl::OkStatus();
    if (leader) {
      CheckpointRetention retention;
      retention.keep_latest = spec.checkpoint().keep_latest();
      if (!options.copied_checkpoints_file.empty())
        retention.copied_through_step = ReadCopiedThroughStep(options.copied_checkpoints_file);
      auto info = SaveTrainingCheckpoint(options.output_dir, c, retention);
      if (info.ok()) {
        last_checkpoint = ReportCheckpoint(events, *info, drain);
      } else {
        status = info.status();
      }
    }
    // Nobody runs ahead of a checkpoint that failed.
    if (backend->AnyRank(!status.ok()))
      return status.ok() ? absl::InternalError("rank 0 failed to write a checkpoint") : status;
    last_checkpoint_step = step;
    return absl::OkStatus();
  };

  // Every rank's health, multi-rank only: at most every two seconds, on the first step and at
  // the end (the controller shows it per rank; rank 0's step events carry the job's metrics).
  double last_status = 0, last_step_seconds = 0;
  auto emit_status = [&](int64_t at_step) {
    if (world == 1) return;
    EngineEvent event;
    lora::engine::v1::RankStatus* s = event.mutable_rank_status();
    s->set_step(at_step);
    s->set_step_seconds(last_step_seconds);
    s->set_peak_rss_bytes(PeakRssBytes());
    s->set_parameter_bytes(backend->ParameterBytes());
    s->set_peak_parameter_bytes(backend->PeakParameterBytes());
    s->set_bytes_sent(backend->BytesSent());
    events.Emit(std::move(event));
  };
  // Ranks see a stop request (SIGTERM, a cancel) at different times; they agree on one step.
  auto stop_agreed = [&] {
    return backend->AnyRank(options.stop_requested != nullptr && options.stop_requested->load());
  };

  const double t_loop = Now();
  int64_t step = start_step;
  // Checked here once, then after each step, so that every stop ends in a drain checkpoint.
  bool interrupted = step < total_steps && stop_agreed();
  while (!interrupted && step < total_steps) {
    ++step;
    const double t0 = Now();
    const double lr = schedule.At(step);
    for (const auto& [name, p] : backend->trainable()) p.mutable_grad() = torch::Tensor();
    const StepGradients g = backend->ComputeGradients(train_data, (step - 1) * rows_per_step);
    optimizer.Step(lr);
    // The step's one host synchronisation: the logged loss and gradient norm in one read.
    const torch::Tensor logged =
        at::stack({g.loss_sum.reshape({}), g.grad_norm.reshape({}).to(g.loss_sum.device())})
            .to(torch::kCPU);
    const double loss = logged[0].item<double>() / g.denominator;
    const double grad_norm = logged[1].item<double>();
    state.train_loss = loss;
    state.tokens += rows_per_step * T;
    const double now = Now();
    const double step_s = now - t0;
    const double elapsed = now - t_start;
    const double per_step = (now - t_loop) / static_cast<double>(step - start_step);
    const double eta = per_step * static_cast<double>(total_steps - step);
    const double tps = static_cast<double>(rows_per_step * T) / step_s;
    if (leader) {
      EngineEvent event;
      lora::engine::v1::Step* s = event.mutable_step();
      s->set_step(step);
      s->set_total_steps(total_steps);
      s->set_loss(loss);
      s->set_grad_norm(grad_norm);
      s->set_lr(lr);
      s->set_tokens(state.tokens);
      s->set_tokens_per_second(tps);
      s->set_step_seconds(step_s);
      s->set_elapsed_seconds(elapsed);
      s->set_eta_seconds(eta);
      s->set_target_tokens(g.target_tokens);
      s->set_bytes_sent(backend->BytesSent());
      events.Emit(
          std::move(event),
          absl::StrFormat("step %d/%d  loss %.4f  grad_norm %.3f  lr %.2e  %.0f tok/s  elapsed %s  "
                          "eta %s",
                          step, total_steps, loss, grad_norm, lr, tps, Duration(elapsed),
                          Duration(eta)));
    }
    last_step_seconds = step_s;
    if (step == start_step + 1 || now - last_status >= 2.0) {
      last_status = now;
      emit_status(step);
    }
    const int interval = spec.dataset().validation_interval();
    if (has_validation && ((interval > 0 && step % interval == 0) || step == total_steps))
      evaluate(step);
    const bool stop = stop_agreed();
    interrupted = stop && step < total_steps;
    const int ckpt_interval = spec.checkpoint().interval();
    if ((ckpt_interval > 0 && step % ckpt_interval == 0) || step == total_steps || stop)
      LORA_RETURN_IF_ERROR(save_checkpoint(step, /*drain=*/interrupted));
    if (stop) break;
  }

  emit_status(step);
  TrainResult result;
  result.step = step;
  result.interrupted = interrupted;
  if (interrupted) {
    // Stopped before a first step: the state it resumed from is checkpointed again, as a drain.
    if (last_checkpoint_step != step) LORA_RETURN_IF_ERROR(save_checkpoint(step, true));
    if (leader) {
      events.Log("warning", absl::StrCat("stopped on request after step ", step,
                                         "; resume with --resume ", options.output_dir));
    }
    return result;
  }

  // Final exports: rank 0 writes them from the gathered adapters.
  const std::vector<AdapterRecord> adapters = backend->GatherAdapters();
  lora::engine::v1::Summary& summary = result.summary;
  if (leader) {
    const std::string final_dir = JoinPath(options.output_dir, "final");
    LORA_RETURN_IF_ERROR(MakeDirectories(final_dir));
    LORA_ASSIGN_OR_RETURN(torch::Dtype export_dtype,
                          ParseFloatDtype(spec.checkpoint().export_dtype()));
    for (const std::string& what : spec.checkpoint().export_()) {
      const std::string dir = JoinPath(final_dir, what);
      if (what == "adapter") {
        PeftExportOptions peft;
        peft.dtype = export_dtype;
        peft.base_model_name_or_path = prepared.base_source;
        LORA_RETURN_IF_ERROR(
            ExportPeftAdapter(adapters, backend->Modules(), prepared.lora, dir, peft));
      } else if (what == "merged") {
        SaveOptions save;
        save.dtype = export_dtype;
        save.base_dir = spec.model().path();
        LORA_RETURN_IF_ERROR(backend->ExportMerged(adapters, dir, save));
      } else {
        continue;
      }
      (*summary.mutable_outputs())[what] = dir;
    }
  }
  const double wall = Now() - t_start;
  summary.set_steps(step);
  summary.set_tokens(state.tokens);
  summary.set_final_train_loss(state.train_loss);
  summary.set_final_eval_loss(state.eval_loss);
  summary.set_initial_eval_loss(state.initial_eval_loss);
  summary.set_wall_seconds(wall);
  summary.set_train_seconds(Now() - t_loop);
  summary.set_tokens_per_second(static_cast<double>((step - start_step) * rows_per_step * T) /
                                (Now() - t_loop));
  summary.set_peak_rss_bytes(PeakRssBytes());
  summary.set_parameter_bytes(backend->ParameterBytes());
  summary.set_peak_parameter_bytes(backend->PeakParameterBytes());
  summary.set_bytes_sent(backend->BytesSent());
  summary.set_world_size(world);
  summary.set_mesh(backend->mesh());
  summary.set_trainable_parameters(prepared.report.trainable_parameters);
  summary.set_total_parameters(prepared.report.total_parameters);
  if (last_checkpoint) *summary.mutable_last_checkpoint() = *last_checkpoint;
  if (leader) {
    LORA_RETURN_IF_ERROR(ReportFinished(
        events, options.output_dir, summary,
        absl::StrFormat("finished %d steps%s in %s: train_loss %.4f eval_loss %.4f (from %.4f)",
                        step, world > 1 ? absl::StrCat(" on ", world, " ranks") : "",
                        Duration(wall), state.train_loss, state.eval_loss,
                        state.initial_eval_loss)));
  }
  return result;
}

}  // namespace lora
