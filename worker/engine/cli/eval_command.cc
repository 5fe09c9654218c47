// lora-train eval: mean next-token cross-entropy of a model (optionally with an adapter).
#include <ATen/ATen.h>

#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/engine/cli/cli_common.h"
#include "worker/engine/cli/job_file.h"
#include "worker/engine/data/batcher.h"
#include "worker/engine/data/examples.h"
#include "worker/engine/data/jsonl.h"
#include "worker/engine/data/tokenizer.h"
#include "worker/engine/data/training_data.h"
#include "worker/engine/lora/peft_adapter.h"
#include "worker/engine/model/tensor_io.h"
#include "worker/engine/train/model_setup.h"
#include "worker/engine/train/trainer.h"

namespace lora {
namespace {

struct EvalOptions {
  std::string model;
  std::string adapter;
  std::string dataset;
  int64_t seq_len = 2048;
  int64_t batch_size = 8;
  std::string dtype = "float32";
  uint64_t model_seed = 0;
  bool json = false;
  std::string dump_logits;
  bool portable_kernels = false;
  std::string job;
  std::vector<std::string> overrides;
};

struct Chunk {
  std::vector<int64_t> tokens;  // inputs plus the final target
};

// A sequence of n tokens has n - 1 next-token predictions. Longer than seq_len, it is cut into
// windows of seq_len + 1 tokens overlapping by one, so every prediction is scored exactly once.
std::vector<Chunk> MakeChunks(const std::vector<std::vector<int64_t>>& sequences, int64_t seq_len) {
  std::vector<Chunk> out;
  for (const auto& seq : sequences) {
    const int64_t n = static_cast<int64_t>(seq.size());
    for (int64_t start = 0; start + 1 < n; start += seq_len) {
      int64_t end = std::min(n, start + seq_len + 1);
      out.push_back({std::vector<int64_t>(seq.begin() + start, seq.begin() + end)});
    }
  }
  return out;
}

// Scores the validation split a job spec defines, exactly as the trainer's eval events do.
int RunJobEval(const EvalOptions& o) {
  ConfigureThreads();
  Stopwatch clock;
  auto spec = LoadJobFile(o.job, o.overrides);
  if (!spec.ok()) return ReportError("eval", spec.status());
  if (!o.model.empty()) {
    return ReportError(
        "eval", absl::InvalidArgumentError("--model: with --job the model comes from the spec"));
  }
  lora::v1::JobSpec s = *spec;
  if (!o.adapter.empty()) s.mutable_lora()->set_adapter(o.adapter);
  auto prepared = PrepareModel(s);
  if (!prepared.ok()) return ReportError("eval", prepared.status());
  auto data = LoadTrainingData(s, prepared->model->config().vocab_size);
  if (!data.ok()) return ReportError("eval", data.status());
  Batcher val(std::move(data->validation), ValidationBatcherOptions(s));
  if (val.windows_per_epoch() == 0) {
    return ReportError("eval",
                       absl::InvalidArgumentError("dataset: the spec's validation split is empty"));
  }
  EvalResult r = EvaluateLoss(*prepared->model, val, s.training().local_batch_size(),
                              s.dataset().validation_max_batches());
  if (o.json) {
    std::cout << nlohmann::json{{"loss", r.loss},
                                {"perplexity", std::exp(r.loss)},
                                {"tokens", r.tokens},
                                {"seconds", clock.Seconds()}}
                     .dump()
              << std::endl;
  } else {
    std::cout << absl::StrFormat(
        "eval loss %.6f (perplexity %.3f) over %d validation tokens, %.2fs\n", r.loss,
        std::exp(r.loss), r.tokens, clock.Seconds());
  }
  return kExitOk;
}

int RunEval(const EvalOptions& o) {
  if (!o.job.empty()) return RunJobEval(o);
  if (o.model.empty() || o.dataset.empty()) {
    return ReportError(
        "eval", absl::InvalidArgumentError("--model and --dataset are required (or give --job)"));
  }
  ConfigureThreads();
  Stopwatch clock;
  if (o.seq_len <= 0)
    return ReportError("eval", absl::InvalidArgumentError("--seq-len: must be > 0"));
  if (o.batch_size <= 0)
    return ReportError("eval", absl::InvalidArgumentError("--batch-size: must be > 0"));
  auto dtype = ParseFloatDtype(o.dtype);
  if (!dtype.ok())
    return ReportError(
        "eval", absl::InvalidArgumentError(absl::StrCat("--dtype: ", dtype.status().message())));
  auto loaded = LoadModelOrFlavor(o.model, *dtype, o.model_seed);
  if (!loaded.ok()) return ReportError("eval", loaded.status());
  LlamaForCausalLM model = loaded->model;
  if (!o.adapter.empty()) {
    auto imported = ImportPeftAdapter(*model, o.adapter);
    if (!imported.ok()) return ReportError("eval", imported.status());
  }
  auto sequences = ReadTokenSequences(o.dataset, model->config().vocab_size);
  if (!sequences.ok()) return ReportError("eval", sequences.status());
  std::vector<Chunk> chunks = MakeChunks(*sequences, o.seq_len);
  if (chunks.empty()) {
    return ReportError("eval", absl::InvalidArgumentError(
                                   absl::StrCat(o.dataset, ": no sequence has 2 or more tokens")));
  }
  if (o.portable_kernels) model->model->set_fused_kernels(false);
  model->eval();
  torch::NoGradGuard no_grad;
  double loss_sum = 0.0;
  int64_t tokens = 0;
  NamedTensors dumped;  // "chunk<i>": fp32 logits [inputs, vocab] of each window
  for (size_t b = 0; b < chunks.size(); b += static_cast<size_t>(o.batch_size)) {
    const size_t end = std::min(chunks.size(), b + static_cast<size_t>(o.batch_size));
    int64_t width = 0;
    for (size_t i = b; i < end; ++i)
      width = std::max<int64_t>(width, static_cast<int64_t>(chunks[i].tokens.size()) - 1);
    const int64_t rows = static_cast<int64_t>(end - b);
    torch::Tensor inputs = torch::zeros({rows, width}, torch::kInt64);
    torch::Tensor targets = torch::full({rows, width}, -100, torch::kInt64);
    auto in = inputs.accessor<int64_t, 2>();
    auto tg = targets.accessor<int64_t, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      const auto& t = chunks[b + static_cast<size_t>(r)].tokens;
      for (size_t j = 0; j + 1 < t.size(); ++j) {
        in[r][static_cast<int64_t>(j)] = t[j];
        tg[r][static_cast<int64_t>(j)] = t[j + 1];
      }
    }
    // Right padding is harmless under causal attention: real tokens never see it.
    torch::Tensor logits = model->forward(ForwardInputs{inputs});
    torch::Tensor loss =
        at::cross_entropy_loss(logits.to(torch::kFloat32).view({-1, logits.size(-1)}),
                               targets.view({-1}), {}, at::Reduction::Sum, -100);
    loss_sum += loss.item<double>();
    tokens += targets.ne(-100).sum().item<int64_t>();
    if (!o.dump_logits.empty()) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n =
            static_cast<int64_t>(chunks[b + static_cast<size_t>(r)].tokens.size()) - 1;
        dumped.emplace_back(absl::StrCat("chunk", b + static_cast<size_t>(r)),
                            logits[r].narrow(0, 0, n).to(torch::kFloat32).contiguous());
      }
    }
  }
  if (!o.dump_logits.empty()) {
    absl::Status written = WriteTensors(o.dump_logits, dumped, torch::kFloat32, {});
    if (!written.ok()) return ReportError("eval", written);
  }
  const double mean = loss_sum / static_cast<double>(tokens);
  if (o.json) {
    nlohmann::json j = {{"loss", mean},
                        {"perplexity", std::exp(mean)},
                        {"tokens", tokens},
                        {"sequences", sequences->size()},
                        {"seconds", clock.Seconds()}};
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << absl::StrFormat(
        "eval loss %.6f (perplexity %.3f) over %d tokens in %d sequences, %.2fs\n", mean,
        std::exp(mean), tokens, sequences->size(), clock.Seconds());
  }
  return kExitOk;
}

}  // namespace

void AddEvalCommand(CLI::App& app, CommandRunner* runner) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* cmd =
      app.add_subcommand("eval", "Mean next-token cross-entropy of a model on a JSONL dataset");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint directory or flavor name");
  cmd->add_option("--adapter", o->adapter, "PEFT adapter directory to apply");
  cmd->add_option("--dataset", o->dataset, "JSONL file of {\"input_ids\": [...]} lines");
  cmd->add_option("--job", o->job,
                  "Score the validation split of this job spec (model and data from the spec)");
  cmd->add_option("--set", o->overrides, "Override a spec key: section.key=value (repeatable)");
  cmd->add_option("--seq-len", o->seq_len, "Context window; longer sequences are scored in windows")
      ->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "Windows per forward pass")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "Dtype to run the model in")->capture_default_str();
  cmd->add_option("--model-seed", o->model_seed, "Base weight seed when --model is a flavor")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "Print the result as JSON");
  cmd->add_flag("--portable-kernels", o->portable_kernels,
                "LibTorch's SDPA and element-wise ops instead of the fused CPU kernels");
  cmd->add_option("--dump-logits", o->dump_logits,
                  "Write each window's fp32 logits to this safetensors file (chunk0, chunk1, ...)");
  cmd->callback([o, runner] { *runner = [o] { return RunEval(*o); }; });
}

}  // namespace lora
