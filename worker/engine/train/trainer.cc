#include "worker/engine/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/process_stats.h"
#include "common/status_macros.h"
#include "worker/engine/data/examples.h"
#include "worker/engine/data/tokenizer.h"
#include "worker/engine/data/training_data.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/hf_checkpoint.h"
#include "worker/engine/model/tensor_io.h"
#include "worker/engine/train/adamw.h"
#include "worker/engine/train/checkpointer.h"
#include "worker/engine/train/flops.h"
#include "worker/engine/train/lr_schedule.h"
#include "worker/engine/train/model_setup.h"

namespace lora {
namespace {

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

NamedTensors TrainableParameters(const torch::nn::Module& model) {
  NamedTensors out;
  for (const auto& item : model.named_parameters()) {
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  }
  return out;
}

}  // namespace

BatcherOptions TrainBatcherOptions(const lora::v1::JobSpec& spec) {
  BatcherOptions o;
  o.seq_len = spec.training().seq_len();
  o.pack = spec.dataset().pack();
  o.seed = spec.training().seed();
  o.shuffle = true;
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

nlohmann::json ReportCheckpoint(EventSink& events, int64_t step, const CheckpointInfo& info) {
  nlohmann::json record = {{"step", step},
                           {"path", info.path},
                           {"bytes", info.bytes},
                           {"sha256", info.sha256},
                           {"files", info.files}};
  events.Emit("checkpoint", record,
              absl::StrFormat("step %d  checkpoint %s (%d bytes)", step, info.path, info.bytes));
  return record;
}

BatcherOptions ValidationBatcherOptions(const lora::v1::JobSpec& spec) {
  BatcherOptions o = TrainBatcherOptions(spec);
  o.shuffle = false;
  return o;
}

torch::Tensor BatchLossSum(LlamaForCausalLMImpl& model, const Batch& batch) {
  // Batches are built on the CPU; the model may live elsewhere.
  const torch::Device device = model.model->embed_tokens->weight.device();
  auto on_device = [&](const torch::Tensor& t) { return t.defined() ? t.to(device) : t; };
  ForwardInputs in{on_device(batch.input_ids), on_device(batch.position_ids),
                   on_device(batch.document_ids)};
  torch::Tensor logits = model.forward(in);
  return at::cross_entropy_loss(logits.to(torch::kFloat32).view({-1, logits.size(-1)}),
                                on_device(batch.targets).view({-1}), {}, at::Reduction::Sum,
                                kIgnoreIndex);
}

EvalResult EvaluateLoss(LlamaForCausalLMImpl& model, Batcher& data, int64_t rows,
                        int64_t max_batches) {
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  EvalResult r;
  double sum = 0;
  const int64_t windows = data.windows_per_epoch();
  int64_t batches = 0;
  for (int64_t first = 0; first < windows; first += rows) {
    if (max_batches > 0 && batches++ >= max_batches) break;
    Batch b = data.MakeBatch(first, std::min(rows, windows - first));
    if (b.num_targets == 0) continue;
    sum += BatchLossSum(model, b).item<double>();
    r.tokens += b.num_targets;
  }
  r.loss = r.tokens > 0 ? sum / static_cast<double>(r.tokens) : std::nan("");
  if (was_training) model.train();
  return r;
}

namespace {

// Bytes of every parameter the process holds (frozen base and adapters).
int64_t ParameterBytes(torch::nn::Module& model) {
  int64_t total = 0;
  for (const auto& p : model.parameters())
    total += p.numel() * static_cast<int64_t>(p.element_size());
  return total;
}

}  // namespace

absl::StatusOr<TrainResult> RunTraining(const TrainerOptions& options) {
  // A copy: training.epochs becomes training.steps once the data is read.
  lora::v1::JobSpec spec = options.spec;
  EventSink& events = *options.events;
  const double t_start = Now();
  const auto& tcfg = spec.training();
  const int threads = tcfg.num_threads() > 0
                          ? tcfg.num_threads()
                          : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, threads));
  torch::manual_seed(tcfg.seed());  // dropout draws from the default generator

  LORA_RETURN_IF_ERROR(MakeDirectories(options.output_dir));
  LORA_ASSIGN_OR_RETURN(PreparedModel prepared, PrepareModel(spec));
  LlamaForCausalLM model = prepared.model;
  if (!options.device.is_cpu()) model->to(options.device);
  model->model->set_fused_kernels(options.device.is_cpu() && options.fused_kernels);
  model->model->set_activation_checkpointing(tcfg.activation_checkpoint() == "full");
  const LlamaConfig& mc = model->config();

  LORA_ASSIGN_OR_RETURN(TrainingData data, LoadTrainingData(spec, mc.vocab_size));
  const int64_t n_train_examples = static_cast<int64_t>(data.train.size());
  Batcher train_data(std::move(data.train), TrainBatcherOptions(spec));
  Batcher val_data(std::move(data.validation), ValidationBatcherOptions(spec));
  if (train_data.windows_per_epoch() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset: the training split is shorter than one sequence of ", tcfg.seq_len(), " tokens"));
  }
  spec.mutable_training()->set_steps(
      TotalSteps(tcfg, train_data.windows_per_epoch(),
                 tcfg.local_batch_size() * tcfg.gradient_accumulation_steps()));
  const bool has_validation = val_data.windows_per_epoch() > 0;

  NamedTensors trainable = TrainableParameters(*model);
  AdamW optimizer(trainable, SpecAdamWOptions(spec));
  const LrSchedule schedule = SpecLrSchedule(spec);

  int64_t start_step = 0;
  int64_t tokens_seen = 0;
  double initial_eval_loss = std::nan("");
  if (!options.resume_from.empty()) {
    LORA_ASSIGN_OR_RETURN(std::string ckpt, FindLatestCheckpoint(options.resume_from));
    LORA_ASSIGN_OR_RETURN(nlohmann::json state,
                          RestoreTrainingCheckpoint(ckpt, *model, optimizer, options.device));
    start_step = state.value("step", int64_t{0});
    tokens_seen = state.value("tokens", int64_t{0});
    if (state.contains("initial_eval_loss") && state["initial_eval_loss"].is_number()) {
      initial_eval_loss = state["initial_eval_loss"].get<double>();
    }
    events.Log("info", absl::StrCat("resumed from ", ckpt, " at step ", start_step));
  }

  const int64_t B = tcfg.local_batch_size(), accum = tcfg.gradient_accumulation_steps(),
                T = tcfg.seq_len();
  const int64_t rows_per_step = B * accum;
  const double flops_per_token = TrainingFlopsPerToken(mc, T, prepared.report.trainable_parameters);
  const int64_t total_steps = tcfg.steps();
  events.Emit(
      "started",
      {{"job", spec.job().name()},
       {"total_steps", total_steps},
       {"start_step", start_step},
       {"world_size", 1},
       {"rank", 0},
       {"base_model", prepared.base_source},
       {"trainable_parameters", prepared.report.trainable_parameters},
       {"total_parameters", prepared.report.total_parameters},
       {"wrapped_modules", prepared.report.modules.size()},
       {"train_examples", n_train_examples},
       {"windows_per_epoch", train_data.windows_per_epoch()},
       {"flops_per_token", flops_per_token},
       {"threads", at::get_num_threads()}},
      absl::StrFormat(
          "training %s: %d steps from step %d, %d trainable / %d parameters, %d threads",
          prepared.base_source, total_steps, start_step, prepared.report.trainable_parameters,
          prepared.report.total_parameters, at::get_num_threads()));

  const int64_t val_rows = B;
  const int64_t val_max = spec.dataset().validation_max_batches();
  double last_eval_loss = std::nan("");
  auto evaluate = [&](int64_t step) {
    EvalResult r = EvaluateLoss(*model, val_data, val_rows, val_max);
    last_eval_loss = r.loss;
    events.Emit("eval", {{"step", step}, {"eval_loss", r.loss}, {"eval_tokens", r.tokens}},
                absl::StrFormat("step %d  eval_loss %.4f (%d tokens)", step, r.loss, r.tokens));
    return r.loss;
  };
  if (has_validation && start_step == 0) initial_eval_loss = evaluate(0);

  nlohmann::json last_checkpoint;
  double last_train_loss = std::nan("");
  auto save_checkpoint = [&](int64_t step) -> absl::Status {
    CheckpointContents c;
    c.device = options.device;
    c.adapters = AdapterRecords(*model);
    c.modules = ListModules(*model);
    c.lora = &prepared.lora;
    c.base_model = prepared.base_source;
    c.optimizer_state = optimizer.State();
    c.optimizer_step = optimizer.step_count();
    c.trainer_state = {{"step", step},
                       {"optimizer_step", optimizer.step_count()},
                       {"tokens", tokens_seen},
                       {"data_cursor_windows", step * rows_per_step},
                       {"train_loss", last_train_loss},
                       {"eval_loss", last_eval_loss},
                       {"initial_eval_loss", initial_eval_loss},
                       {"world_size", 1},
                       {"format_version", 1}};
    LORA_ASSIGN_OR_RETURN(
        CheckpointInfo info,
        SaveTrainingCheckpoint(options.output_dir, c, spec.checkpoint().keep_latest()));
    last_checkpoint = ReportCheckpoint(events, step, info);
    return absl::OkStatus();
  };

  model->train();
  const double t_loop = Now();
  int64_t step = start_step;
  bool interrupted = false;
  while (step < total_steps) {
    if (options.stop_requested && options.stop_requested->load()) {
      interrupted = true;
      break;
    }
    ++step;
    const double t0 = Now();
    const double lr = schedule.At(step);
    for (auto& [name, p] : trainable) p.mutable_grad() = torch::Tensor();
    Batch batch = train_data.MakeBatch((step - 1) * rows_per_step, rows_per_step);
    const double denom = static_cast<double>(std::max<int64_t>(1, batch.num_targets));
    // The loss stays on the device until the step is logged: no host synchronisation between
    // micro-batches (the gradient norm for clipping and the logged loss are the step's two).
    torch::Tensor loss_sum;
    for (int64_t m = 0; m < accum; ++m) {
      Batch micro = accum == 1 ? batch : batch.Slice(m * B, B);
      torch::Tensor loss = BatchLossSum(*model, micro);
      (loss / denom).backward();
      loss_sum = m == 0 ? loss.detach().to(torch::kFloat64) : loss_sum + loss.detach();
    }
    const torch::Tensor norm = ClipGradNorm(trainable, tcfg.max_norm());
    optimizer.Step(lr);
    // The step's one host synchronisation: the logged loss and gradient norm in one read.
    const torch::Tensor logged =
        at::stack({loss_sum.reshape({}), norm.to(loss_sum.device())}).to(torch::kCPU);
    const double loss = logged[0].item<double>() / denom;
    const double grad_norm = logged[1].item<double>();
    last_train_loss = loss;
    tokens_seen += rows_per_step * T;
    const double now = Now();
    const double step_s = now - t0;
    const double elapsed = now - t_start;
    const double per_step = (now - t_loop) / static_cast<double>(step - start_step);
    const double eta = per_step * static_cast<double>(total_steps - step);
    const double tps = static_cast<double>(rows_per_step * T) / step_s;
    events.Emit(
        "step",
        {{"step", step},
         {"total_steps", total_steps},
         {"loss", loss},
         {"grad_norm", grad_norm},
         {"lr", lr},
         {"tokens", tokens_seen},
         {"tokens_per_second", tps},
         {"step_seconds", step_s},
         {"elapsed_seconds", elapsed},
         {"eta_seconds", eta},
         {"target_tokens", batch.num_targets}},
        absl::StrFormat(
            "step %d/%d  loss %.4f  grad_norm %.3f  lr %.2e  %.0f tok/s  elapsed %s  eta %s", step,
            total_steps, loss, grad_norm, lr, tps, Duration(elapsed), Duration(eta)));
    const int interval = spec.dataset().validation_interval();
    if (has_validation && ((interval > 0 && step % interval == 0) || step == total_steps))
      evaluate(step);
    const bool stop = options.stop_requested && options.stop_requested->load();
    const int ckpt_interval = spec.checkpoint().interval();
    if ((ckpt_interval > 0 && step % ckpt_interval == 0) || step == total_steps || stop) {
      LORA_RETURN_IF_ERROR(save_checkpoint(step));
    }
    if (stop) {
      interrupted = step < total_steps;
      break;
    }
  }

  TrainResult result;
  result.step = step;
  result.interrupted = interrupted;
  if (interrupted) {
    if (last_checkpoint.is_null() || last_checkpoint["step"] != step)
      LORA_RETURN_IF_ERROR(save_checkpoint(step));
    events.Log("warning", absl::StrCat("stopped on request after step ", step,
                                       "; resume with --resume ", options.output_dir));
    return result;
  }

  // Final exports.
  const std::string final_dir = JoinPath(options.output_dir, "final");
  LORA_RETURN_IF_ERROR(MakeDirectories(final_dir));
  LORA_ASSIGN_OR_RETURN(torch::Dtype export_dtype,
                        ParseFloatDtype(spec.checkpoint().export_dtype()));
  nlohmann::json outputs = nlohmann::json::object();
  for (const std::string& what : spec.checkpoint().export_()) {
    if (what == "adapter") {
      const std::string dir = JoinPath(final_dir, "adapter");
      PeftExportOptions peft;
      peft.dtype = export_dtype;
      peft.base_model_name_or_path = prepared.base_source;
      LORA_RETURN_IF_ERROR(ExportPeftAdapter(*model, prepared.lora, dir, peft));
      outputs["adapter"] = dir;
    }
  }
  for (const std::string& what : spec.checkpoint().export_()) {
    if (what == "merged") {
      const std::string dir = JoinPath(final_dir, "merged");
      MergeAdapters(*model);
      SaveOptions save;
      save.dtype = export_dtype;
      save.base_dir = spec.model().path();
      LORA_RETURN_IF_ERROR(SaveHfModelAtomically(*model, dir, save));
      UnmergeAdapters(*model);
      outputs["merged"] = dir;
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
       static_cast<double>((step - start_step) * rows_per_step * T) / (Now() - t_loop)},
      {"peak_rss_bytes", PeakRssBytes()},
      {"parameter_bytes", ParameterBytes(*model)},
      {"trainable_parameters", prepared.report.trainable_parameters},
      {"total_parameters", prepared.report.total_parameters},
      {"outputs", outputs},
      {"last_checkpoint", last_checkpoint}};
  LORA_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(options.output_dir, "summary.json"),
                                           result.summary.dump(2) + "\n"));
  events.Emit(
      "finished", result.summary,
      absl::StrFormat("finished %d steps in %s: train_loss %.4f eval_loss %.4f (from %.4f)", step,
                      Duration(wall), last_train_loss, last_eval_loss, initial_eval_loss));
  return result;
}

}  // namespace lora
