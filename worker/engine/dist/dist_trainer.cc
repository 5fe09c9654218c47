#include "worker/engine/dist/dist_trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/process_stats.h"
#include "common/status_macros.h"
#include "worker/engine/data/examples.h"
#include "worker/engine/data/tokenizer.h"
#include "worker/engine/data/training_data.h"
#include "worker/engine/dist/comm.h"
#include "worker/engine/dist/parallel_llama.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/train/adamw.h"
#include "worker/engine/train/checkpointer.h"
#include "worker/engine/train/flops.h"
#include "worker/engine/train/lr_schedule.h"
#include "worker/engine/train/model_setup.h"

namespace lora::dist {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

MeshShape ShapeOf(const lora::v1::JobSpec& spec) {
  const auto& p = spec.parallelism();
  MeshShape m;
  m.pp = p.pipeline_parallel_degree();
  m.replicate = p.data_parallel_replicate_degree();
  m.cp = p.context_parallel_degree();
  m.tp = p.tensor_parallel_degree();
  const int others = m.pp * m.replicate * m.cp * m.tp;
  m.shard = p.data_parallel_shard_degree() == -1 ? spec.resources().world_size() / others
                                                 : p.data_parallel_shard_degree();
  return m;
}

// One training or evaluation pass over a batch of this rank's rows, pipelined over stages.
class StepRunner {
 public:
  StepRunner(ParallelLlama* model, Group* pp, int microbatches, bool one_f_one_b)
      : model_(model),
        pp_(pp),
        microbatches_(pp->size() > 1 ? microbatches : 1),
        one_f_one_b_(one_f_one_b) {}

  // Returns the loss sum of this rank's tokens (last stage; 0 elsewhere). With `denominator`
  // > 0, backpropagates loss / denominator.
  double Run(const Batch& rows, double denominator) {
    const bool train = denominator > 0;
    const int64_t n = rows.input_ids.size(0);
    const int M = static_cast<int>(std::min<int64_t>(microbatches_, std::max<int64_t>(n, 1)));
    micro_.clear();
    micro_.resize(static_cast<size_t>(M));
    for (int m = 0; m < M; ++m) {
      const int64_t begin = n * m / M, end = n * (m + 1) / M;
      micro_[static_cast<size_t>(m)].batch = model_->Localize(rows.Slice(begin, end - begin));
    }
    loss_sum_ = 0;
    denominator_ = denominator;
    const int stages = pp_->size(), stage = pp_->rank();
    if (!train) {
      torch::NoGradGuard no_grad;
      for (int m = 0; m < M; ++m) Forward(m, false);
    } else if (!one_f_one_b_ || stages == 1) {  // GPipe: all forwards, then all backwards
      for (int m = 0; m < M; ++m) Forward(m, true);
      for (int m = 0; m < M; ++m) Backward(m);
    } else {  // 1F1B: warm up, alternate one forward and one backward, drain
      const int warmup = std::min(M, stages - stage - 1);
      for (int m = 0; m < warmup; ++m) Forward(m, true);
      for (int m = warmup; m < M; ++m) {
        Forward(m, true);
        Backward(m - warmup);
      }
      for (int m = M - warmup; m < M; ++m) Backward(m);
    }
    pp_->Flush();
    micro_.clear();
    return loss_sum_;
  }

 private:
  struct Micro {
    LocalBatch batch;
    torch::Tensor input, output, loss;
  };

  void Forward(int m, bool train) {
    Micro& mb = micro_[static_cast<size_t>(m)];
    if (!model_->first_stage()) {
      mb.input = torch::empty({mb.batch.rows, mb.batch.input_ids.size(1), model_->hidden_size()},
                              torch::TensorOptions()
                                  .dtype(model_->activation_dtype())
                                  .device(mb.batch.input_ids.device()));
      pp_->Recv(mb.input, pp_->rank() - 1, 2 * m);
      if (train) mb.input.requires_grad_(true);
    }
    torch::Tensor out = model_->StageForward(mb.batch, mb.input);
    if (model_->last_stage()) {
      mb.loss =
          at::cross_entropy_loss(out.to(torch::kFloat32).view({-1, out.size(-1)}),
                                 mb.batch.targets.view({-1}), {}, at::Reduction::Sum, kIgnoreIndex);
      loss_sum_ += mb.loss.item<double>();
    } else {
      pp_->Send(out.detach(), pp_->rank() + 1, 2 * m);
      mb.output = out;
    }
  }

  void Backward(int m) {
    Micro& mb = micro_[static_cast<size_t>(m)];
    if (model_->last_stage()) {
      (mb.loss / denominator_).backward();
    } else {
      torch::Tensor grad = torch::empty_like(mb.output);
      pp_->Recv(grad, pp_->rank() + 1, 2 * m + 1);
      mb.output.backward(grad);
    }
    if (!model_->first_stage()) pp_->Send(mb.input.grad(), pp_->rank() - 1, 2 * m + 1);
    mb = Micro{LocalBatch{}, {}, {}, {}};
  }

  ParallelLlama* model_;
  Group* pp_;
  int microbatches_;
  bool one_f_one_b_;
  std::vector<Micro> micro_;
  double loss_sum_ = 0, denominator_ = 0;
};

absl::StatusOr<TrainResult> Train(const TrainerOptions& options, DistContext* dist) {
  // A copy: training.epochs becomes training.steps once the data is read.
  lora::v1::JobSpec spec = options.spec;
  const auto& tcfg = spec.training();
  const bool leader = dist->rank() == 0;
  EventSink& events = *options.events;
  const double t_start = Now();
  torch::manual_seed(tcfg.seed());

  LORA_ASSIGN_OR_RETURN(PreparedModel prepared, PrepareModel(spec));
  const LlamaConfig mc = prepared.model->config();
  // The fused kernels are CPU code: anything else (--portable-kernels) runs SDPA and LibTorch's
  // SwiGLU, as a GPU would.
  prepared.model->model->set_fused_kernels(options.fused_kernels && options.device.is_cpu());
  // On a GPU the whole model is placed before sharding, so shards, gathered layers and adapters
  // live there (the full model passes through each GPU once at start-up).
  if (!options.device.is_cpu()) prepared.model->to(options.device);
  LORA_ASSIGN_OR_RETURN(auto model, ParallelLlama::Create(prepared.model, spec, dist));
  const MeshCoord& c = dist->coord();
  const MeshShape& shape = dist->mesh().shape();
  const int dp = shape.replicate * shape.shard;
  const int dp_index = c[Dim::kReplicate] * shape.shard + c[Dim::kShard];
  Group& world = dist->world_group();
  Group& dp_cp = dist->group({Dim::kReplicate, Dim::kShard, Dim::kCp});
  Group& pp = dist->group({Dim::kPp});

  LORA_ASSIGN_OR_RETURN(TrainingData data, LoadTrainingData(spec, mc.vocab_size));
  Batcher train_data(std::move(data.train), TrainBatcherOptions(spec));
  Batcher val_data(std::move(data.validation), ValidationBatcherOptions(spec));
  if (train_data.windows_per_epoch() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset: the training split is shorter than one sequence of ", tcfg.seq_len(), " tokens"));
  }
  spec.mutable_training()->set_steps(
      TotalSteps(tcfg, train_data.windows_per_epoch(),
                 tcfg.local_batch_size() * dp * tcfg.gradient_accumulation_steps()));
  AdamW optimizer(model->trainable(), SpecAdamWOptions(spec));
  const LrSchedule schedule = SpecLrSchedule(spec);

  int64_t start_step = 0, tokens_seen = 0;
  double initial_eval_loss = std::nan(""), last_eval_loss = std::nan(""),
         last_train_loss = std::nan("");
  if (!options.resume_from.empty()) {
    LORA_ASSIGN_OR_RETURN(std::string ckpt, FindLatestCheckpoint(options.resume_from));
    LORA_ASSIGN_OR_RETURN(LoadedCheckpoint loaded, LoadTrainingCheckpoint(ckpt, options.device));
    LORA_RETURN_IF_ERROR(model->ScatterAdapters(loaded.adapters));
    start_step = loaded.trainer_state.value("step", int64_t{0});
    tokens_seen = loaded.trainer_state.value("tokens", int64_t{0});
    LORA_RETURN_IF_ERROR(
        optimizer.LoadState(model->ScatterOptimizerState(loaded.optimizer_state),
                            loaded.trainer_state.value("optimizer_step", start_step)));
    if (loaded.trainer_state.contains("initial_eval_loss") &&
        loaded.trainer_state["initial_eval_loss"].is_number()) {
      initial_eval_loss = loaded.trainer_state["initial_eval_loss"].get<double>();
    }
    events.Log("info", absl::StrCat("rank ", dist->rank(), " resumed from ", ckpt, " at step ",
                                    start_step));
  }

  const int64_t B = tcfg.local_batch_size(), accum = tcfg.gradient_accumulation_steps(),
                T = tcfg.seq_len();

  const int64_t global_rows = B * dp;  // one micro-step of the whole data-parallel group
  StepRunner runner(model.get(), &pp, spec.parallelism().pipeline_parallel_microbatches(),
                    spec.parallelism().pipeline_parallel_schedule() == "1F1B");
  const double flops_per_token = TrainingFlopsPerToken(mc, T, prepared.report.trainable_parameters);
  events.Emit(
      "started",
      {{"job", spec.job().name()},
       {"total_steps", tcfg.steps()},
       {"start_step", start_step},
       {"world_size", dist->world()},
       {"rank", dist->rank()},
       {"mesh", shape.ToString()},
       {"stage_layers", {model->first_layer(), model->last_layer()}},
       {"base_model", prepared.base_source},
       {"trainable_parameters", prepared.report.trainable_parameters},
       {"total_parameters", prepared.report.total_parameters},
       {"parameter_bytes", model->ParameterBytes()},
       {"flops_per_token", flops_per_token},
       {"threads", at::get_num_threads()}},
      absl::StrFormat("rank %d/%d (%s) layers [%d, %d): %d trainable / %d parameters", dist->rank(),
                      dist->world(), shape.ToString(), model->first_layer(), model->last_layer(),
                      prepared.report.trainable_parameters, prepared.report.total_parameters));

  // This rank's rows of a global batch starting at window `first` (clipped to `limit`).
  // Always exactly `rows_each` rows: past `limit` they are padding whose targets are ignored,
  // so every rank runs the same forwards (FSDP, TP and CP collectives happen inside them).
  auto my_rows = [&](Batcher& data, int64_t first, int64_t rows_each, int64_t limit) {
    const int64_t begin = first + dp_index * rows_each;
    const int64_t count = std::max<int64_t>(0, std::min(rows_each, limit - begin));
    Batch real = data.MakeBatch(begin, std::max<int64_t>(count, 1));
    if (count == rows_each) return real;
    Batch padded;
    padded.input_ids = torch::zeros({rows_each, T}, torch::kInt64);
    padded.targets = torch::full({rows_each, T}, kIgnoreIndex, torch::kInt64);
    padded.position_ids = torch::arange(T).unsqueeze(0).expand({rows_each, T}).contiguous();
    if (real.document_ids.defined())
      padded.document_ids = torch::zeros({rows_each, T}, torch::kInt64);
    if (count > 0) {
      padded.input_ids.narrow(0, 0, count).copy_(real.input_ids.narrow(0, 0, count));
      padded.targets.narrow(0, 0, count).copy_(real.targets.narrow(0, 0, count));
      padded.position_ids.narrow(0, 0, count).copy_(real.position_ids.narrow(0, 0, count));
      if (real.document_ids.defined())
        padded.document_ids.narrow(0, 0, count).copy_(real.document_ids.narrow(0, 0, count));
    }
    padded.num_targets = padded.targets.ne(kIgnoreIndex).sum().item<int64_t>();
    return padded;
  };
  // Sum over the ranks that hold distinct tokens (last stage, one TP rank) of `local`.
  auto token_sum = [&](double local) {
    const bool counts = model->last_stage() && c[Dim::kTp] == 0;
    torch::Tensor t = torch::tensor({counts ? local : 0.0}, torch::kFloat64);
    world.AllReduceSum(t);
    return t.item<double>();
  };
  auto evaluate = [&](int64_t step) {
    model->model()->eval();
    double loss = 0, tokens = 0;
    const int64_t windows = val_data.windows_per_epoch();
    const int64_t max_batches = spec.dataset().validation_max_batches();
    int64_t batches = 0;
    for (int64_t first = 0; first < windows; first += global_rows) {
      if (max_batches > 0 && batches++ >= max_batches) break;
      Batch rows = my_rows(val_data, first, B, windows);
      tokens += token_sum(static_cast<double>(model->Localize(rows).num_targets));
      loss += token_sum(runner.Run(rows, 0));
    }
    model->ReleaseRoot();
    model->model()->train();
    last_eval_loss = tokens > 0 ? loss / tokens : std::nan("");
    if (leader) {
      events.Emit(
          "eval",
          {{"step", step},
           {"eval_loss", last_eval_loss},
           {"eval_tokens", static_cast<int64_t>(tokens)}},
          absl::StrFormat("step %d  eval_loss %.4f (%.0f tokens)", step, last_eval_loss, tokens));
    }
    return last_eval_loss;
  };
  const bool has_validation = val_data.windows_per_epoch() > 0;
  if (has_validation && start_step == 0) initial_eval_loss = evaluate(0);

  nlohmann::json last_checkpoint;     // rank 0's record of it
  int64_t last_checkpoint_step = -1;  // known to every rank: checkpoints are collective
  auto save_checkpoint = [&](int64_t step) -> absl::Status {
    CheckpointContents cc;
    cc.device = options.device;
    cc.adapters = model->GatherAdapters();
    cc.optimizer_state = model->GatherOptimizerState(optimizer.State());
    cc.modules = model->Modules();
    cc.lora = &prepared.lora;
    cc.base_model = prepared.base_source;
    cc.optimizer_step = optimizer.step_count();
    cc.trainer_state = {{"step", step},
                        {"optimizer_step", optimizer.step_count()},
                        {"tokens", tokens_seen},
                        {"data_cursor_windows", step * global_rows * accum},
                        {"train_loss", last_train_loss},
                        {"eval_loss", last_eval_loss},
                        {"initial_eval_loss", initial_eval_loss},
                        {"world_size", dist->world()},
                        {"mesh", shape.ToString()},
                        {"format_version", 1}};
    absl::Status status = absl::OkStatus();
    if (leader) {
      auto info = SaveTrainingCheckpoint(options.output_dir, cc, spec.checkpoint().keep_latest());
      if (info.ok()) {
        last_checkpoint = ReportCheckpoint(events, step, *info);
      } else {
        status = info.status();
      }
    }
    // Nobody runs ahead of a checkpoint that failed.
    torch::Tensor ok = torch::tensor({status.ok() ? 0.0 : 1.0}, torch::kFloat64);
    world.AllReduceSum(ok);
    if (ok.item<double>() > 0)
      return status.ok() ? absl::InternalError("rank 0 failed to write a checkpoint") : status;
    last_checkpoint_step = step;
    return absl::OkStatus();
  };

  model->model()->train();
  const double t_loop = Now();
  int64_t step = start_step;
  bool interrupted = false;
  // Every rank's health, at most every two seconds, on the first step and at the end: the
  // controller shows it per rank.
  double last_status = 0, last_step_seconds = 0;
  auto emit_status = [&](int64_t at_step) {
    events.Emit("rank_status", {{"rank", dist->rank()},
                                {"step", at_step},
                                {"step_seconds", last_step_seconds},
                                {"peak_rss_bytes", PeakRssBytes()},
                                {"parameter_bytes", model->ParameterBytes()},
                                {"peak_parameter_bytes", model->PeakParameterBytes()},
                                {"bytes_sent", dist->TotalBytesSent()}});
  };
  while (step < tcfg.steps()) {
    // Every rank must agree on stopping at the same step (a cancel reaches ranks at different
    // times).
    torch::Tensor stop = torch::tensor(
        {options.stop_requested && options.stop_requested->load() ? 1.0 : 0.0}, torch::kFloat64);
    world.AllReduceSum(stop);
    if (stop.item<double>() > 0) {
      interrupted = true;
      break;
    }
    ++step;
    const double t0 = Now();
    const double lr = schedule.At(step);
    for (const auto& [name, p] : model->trainable()) p.mutable_grad() = torch::Tensor();
    std::vector<Batch> micro_steps;
    double local_targets = 0;
    for (int64_t m = 0; m < accum; ++m) {
      micro_steps.push_back(my_rows(train_data, ((step - 1) * accum + m) * global_rows, B,
                                    std::numeric_limits<int64_t>::max()));
      local_targets += static_cast<double>(model->Localize(micro_steps.back()).num_targets);
    }
    torch::Tensor denom_t = torch::tensor({local_targets}, torch::kFloat64);
    dp_cp.AllReduceSum(denom_t);
    const double denominator = std::max(1.0, denom_t.item<double>());
    double loss_sum = 0;
    for (const Batch& rows : micro_steps) loss_sum += runner.Run(rows, denominator);
    model->SyncGradients();
    const double grad_norm = model->ClipGradients(tcfg.max_norm());
    optimizer.Step(lr);
    const double loss = token_sum(loss_sum) / denominator;
    last_train_loss = loss;
    tokens_seen += global_rows * accum * T;
    const double now = Now(), step_s = now - t0, elapsed = now - t_start;
    const double per_step = (now - t_loop) / static_cast<double>(step - start_step);
    const double eta = per_step * static_cast<double>(tcfg.steps() - step);
    const double tps = static_cast<double>(global_rows * accum * T) / step_s;
    if (leader) {
      events.Emit("step",
                  {{"step", step},
                   {"total_steps", tcfg.steps()},
                   {"loss", loss},
                   {"grad_norm", grad_norm},
                   {"lr", lr},
                   {"tokens", tokens_seen},
                   {"tokens_per_second", tps},
                   {"step_seconds", step_s},
                   {"elapsed_seconds", elapsed},
                   {"eta_seconds", eta},
                   {"target_tokens", static_cast<int64_t>(denominator)},
                   {"bytes_sent", dist->TotalBytesSent()}},
                  absl::StrFormat("step %d/%d  loss %.4f  grad_norm %.3f  lr %.2e  %.0f tok/s",
                                  step, tcfg.steps(), loss, grad_norm, lr, tps));
    }
    last_step_seconds = step_s;
    if (step == start_step + 1 || now - last_status >= 2.0) {
      last_status = now;
      emit_status(step);
    }
    const int interval = spec.dataset().validation_interval();
    if (has_validation && ((interval > 0 && step % interval == 0) || step == tcfg.steps()))
      evaluate(step);
    torch::Tensor stop_now = torch::tensor(
        {options.stop_requested && options.stop_requested->load() ? 1.0 : 0.0}, torch::kFloat64);
    world.AllReduceSum(stop_now);
    const bool stopping = stop_now.item<double>() > 0;
    const int ckpt_interval = spec.checkpoint().interval();
    if ((ckpt_interval > 0 && step % ckpt_interval == 0) || step == tcfg.steps() || stopping) {
      LORA_RETURN_IF_ERROR(save_checkpoint(step));
    }
    if (stopping) {
      interrupted = step < tcfg.steps();
      break;
    }
  }

  emit_status(step);
  TrainResult result;
  result.step = step;
  result.interrupted = interrupted;
  if (interrupted) {
    if (last_checkpoint_step != step) LORA_RETURN_IF_ERROR(save_checkpoint(step));
    if (leader) events.Log("warning", absl::StrCat("stopped on request after step ", step));
    return result;
  }
  std::vector<AdapterRecord> adapters = model->GatherAdapters();
  nlohmann::json outputs = nlohmann::json::object();
  if (leader) {
    const std::string final_dir = JoinPath(options.output_dir, "final");
    LORA_RETURN_IF_ERROR(MakeDirectories(final_dir));
    LORA_ASSIGN_OR_RETURN(torch::Dtype export_dtype,
                          ParseFloatDtype(spec.checkpoint().export_dtype()));
    for (const std::string& what : spec.checkpoint().export_()) {
      if (what == "adapter") {
        PeftExportOptions peft;
        peft.dtype = export_dtype;
        peft.base_model_name_or_path = prepared.base_source;
        LORA_RETURN_IF_ERROR(ExportPeftAdapter(adapters, model->Modules(), prepared.lora,
                                               JoinPath(final_dir, "adapter"), peft));
        outputs["adapter"] = JoinPath(final_dir, "adapter");
      } else if (what == "merged") {
        // The merged model needs every base weight: rebuild the full model on rank 0.
        LORA_ASSIGN_OR_RETURN(PreparedModel full, PrepareModel(spec));
        LORA_RETURN_IF_ERROR(LoadAdapterRecords(*full.model, adapters));
        MergeAdapters(*full.model);
        const std::string dir = JoinPath(final_dir, "merged");
        SaveOptions save;
        save.dtype = export_dtype;
        save.base_dir = spec.model().path();
        LORA_RETURN_IF_ERROR(SaveHfModelAtomically(*full.model, dir, save));
        outputs["merged"] = dir;
      }
    }
  }
  const double wall = Now() - t_start;
  result.summary = {
      {"steps", step},
      {"tokens", tokens_seen},
      {"final_train_loss", last_train_loss},
      {"final_eval_loss", last_eval_loss},
      {"initial_eval_loss", initial_eval_loss},
      {"wall_seconds", wall},
      {"train_seconds", Now() - t_loop},
      {"tokens_per_second",
       static_cast<double>((step - start_step) * global_rows * accum * T) / (Now() - t_loop)},
      {"peak_rss_bytes", PeakRssBytes()},
      {"parameter_bytes", model->ParameterBytes()},
      {"peak_parameter_bytes", model->PeakParameterBytes()},
      {"bytes_sent", dist->TotalBytesSent()},
      {"world_size", dist->world()},
      {"mesh", shape.ToString()},
      {"trainable_parameters", prepared.report.trainable_parameters},
      {"total_parameters", prepared.report.total_parameters},
      {"outputs", outputs},
      {"last_checkpoint", last_checkpoint}};
  if (leader) {
    LORA_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(options.output_dir, "summary.json"),
                                             result.summary.dump(2) + "\n"));
    events.Emit(
        "finished", result.summary,
        absl::StrFormat("finished %d steps on %d ranks in %.1fs: train_loss %.4f eval_loss %.4f",
                        step, dist->world(), wall, last_train_loss, last_eval_loss));
  }
  return result;
}

}  // namespace

absl::StatusOr<TrainResult> RunDistributedTraining(const TrainerOptions& options) {
  const lora::v1::JobSpec& spec = options.spec;
  const int threads = spec.training().num_threads() > 0
                          ? spec.training().num_threads()
                          : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, threads));
  DistOptions dist_options;
  dist_options.timeout = std::chrono::seconds(spec.resources().collective_timeout_seconds());
  dist_options.device = options.device;  // NCCL groups on a GPU, Gloo on the CPU
  if (options.events != nullptr) {
    EventSink* events = options.events;
    dist_options.on_abort = [events](const absl::Status& status) {
      const std::string reason(status.message());
      events->Emit("failed",
                   {{"reason", reason}, {"code", absl::StatusCodeToString(status.code())}},
                   "failed: " + reason);
    };
  }
  auto dist = DistContext::Init(ShapeOf(spec), dist_options);
  if (!dist.ok()) return dist.status();
  absl::StatusOr<TrainResult> result;
  try {
    result = Train(options, dist->get());
  } catch (const CommError& e) {
    (*dist)->Abort(absl::UnavailableError(e.what()));
  } catch (const c10::Error& e) {
    // A communication failure inside autograd may come back wrapped by the engine.
    const std::string what = e.what_without_backtrace();
    (*dist)->Abort(absl::StrContains(what, kCommErrorMarker)
                       ? absl::UnavailableError(what)
                       : absl::InternalError(absl::StrCat("LibTorch: ", what)));
  } catch (const std::exception& e) {
    (*dist)->Abort(absl::InternalError(e.what()));
  }
  if (!result.ok()) (*dist)->Abort(result.status());
  (*dist)->Shutdown();
  return result;
}

}  // namespace lora::dist
