// The one validation of a job spec, shared by lorad, lora-worker, lora-train and loractl.
#include <cmath>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/job_spec/job_spec.h"
#include "common/llama_config.h"
#include "common/user_pattern.h"
#include "google/rpc/error_details.pb.h"

namespace lora {
namespace {

using lora::v1::JobSpec;

// Maxima for client-controlled sizes (docs/JOB_SPEC.md, "Limits").
constexpr int kMaxLabels = 64;
constexpr size_t kMaxDescriptionBytes = 16 << 10;
constexpr size_t kMaxPathBytes = 4096;
constexpr int kMaxModuleNames = 1024;
constexpr int64_t kMaxRank = 4096;
constexpr int64_t kMaxSteps = 100'000'000;
constexpr int64_t kMaxBatchRows = 65536;

// A map key as it appears in a field path: user keys can be long, messages stay short.
std::string ShortKey(const std::string& key) {
  return key.size() <= 64 ? key : absl::StrCat(key.substr(0, 64), "...");
}

class Checker {
 public:
  void Fail(const std::string& field, const std::string& description) {
    out_.push_back({field, description});
  }

  void OneOf(const std::string& field, const std::string& value,
             const std::vector<std::string>& allowed) {
    for (const std::string& a : allowed) {
      if (value == a) return;
    }
    Fail(field, absl::StrCat("'", value, "' is not one of ", absl::StrJoin(allowed, ", ")));
  }
  void AtLeast(const std::string& field, int64_t value, int64_t min) {
    if (value < min) Fail(field, absl::StrCat("must be >= ", min, ", got ", value));
  }
  void InRange(const std::string& field, int64_t value, int64_t min, int64_t max) {
    if (value < min || value > max) {
      Fail(field, absl::StrCat("must be in [", min, ", ", max, "], got ", value));
    }
  }
  void MaxLength(const std::string& field, const std::string& value, size_t max) {
    if (value.size() > max) {
      Fail(field, absl::StrCat("is ", value.size(), " bytes; at most ", max));
    }
  }
  void Positive(const std::string& field, double value) {
    if (!(value > 0) || !std::isfinite(value))
      Fail(field, absl::StrCat("must be > 0, got ", value));
  }
  void Regex(const std::string& field, const std::string& pattern) {
    auto compiled = UserPattern::Compile(pattern, field);
    if (!compiled.ok()) {
      // The message starts with the field; keep only the reason.
      std::string why(compiled.status().message());
      const std::string prefix = field + ": ";
      if (why.rfind(prefix, 0) == 0) why = why.substr(prefix.size());
      Fail(field, why);
    }
  }
  std::vector<FieldViolation> Take() { return std::move(out_); }

 private:
  std::vector<FieldViolation> out_;
};

bool IsFloatDtype(const std::string& s) {
  return s == "float32" || s == "bfloat16" || s == "float16" || s == "fp32" || s == "bf16" ||
         s == "fp16";
}

const std::vector<std::string> kBuiltinDatasets = {"synthetic-arith", "synthetic-text"};

}  // namespace

std::string JobKindName(lora::v1::JobKind kind) {
  switch (kind) {
    case lora::v1::JOB_KIND_TRAIN:
      return "train";
    case lora::v1::JOB_KIND_CONVERT:
      return "convert";
    case lora::v1::JOB_KIND_MERGE:
      return "merge";
    default:
      return "unspecified";
  }
}

std::vector<FieldViolation> JobSpecViolations(const JobSpec& spec) {
  Checker c;
  const auto kind = spec.job().kind();
  const bool train = kind == lora::v1::JOB_KIND_TRAIN;
  if (kind == lora::v1::JOB_KIND_UNSPECIFIED) c.Fail("job.kind", "must be train, convert or merge");
  // The whole spec is bounded too: it is stored, listed and sent to workers in one message.
  if (spec.ByteSizeLong() > kMaxJobSpecBytes) {
    c.Fail("(spec)",
           absl::StrCat("is ", spec.ByteSizeLong(), " bytes encoded; at most ", kMaxJobSpecBytes));
  }
  // Caps on what a client controls, so that every spec lorad accepts stays small (it is stored,
  // listed and sent to workers) and every run it starts is bounded.
  if (spec.job().labels_size() > kMaxLabels) {
    c.Fail("job.labels", absl::StrCat("at most ", kMaxLabels, " labels"));
  }
  for (const auto& [k, v] : spec.job().labels()) {
    if (k.empty() || k.size() > 63) c.Fail("job.labels", "label keys must be 1 to 63 characters");
    if (v.size() > 256) c.Fail("job.labels", "label values must be at most 256 characters");
  }
  if (spec.job().name().size() > 256) c.Fail("job.name", "must be at most 256 characters");
  c.MaxLength("job.description", spec.job().description(), kMaxDescriptionBytes);
  for (const auto& [field, path] : std::vector<std::pair<const char*, const std::string*>>{
           {"model.path", &spec.model().path()},
           {"model.tokenizer", &spec.model().tokenizer()},
           {"lora.adapter", &spec.lora().adapter()},
           {"dataset.path", &spec.dataset().path()},
           {"dataset.validation_path", &spec.dataset().validation_path()}}) {
    c.MaxLength(field, *path, kMaxPathBytes);
  }
  for (const auto& [field, list] :
       std::vector<std::pair<const char*, const google::protobuf::RepeatedPtrField<std::string>*>>{
           {"lora.target_modules", &spec.lora().target_modules()},
           {"lora.exclude_modules", &spec.lora().exclude_modules()}}) {
    if (list->size() > kMaxModuleNames) {
      c.Fail(field, absl::StrCat("at most ", kMaxModuleNames, " names"));
    }
    for (const std::string& name : *list) {
      if (name.size() > 256) c.Fail(field, "module names must be at most 256 characters");
    }
  }
  if (spec.lora().rank_pattern_size() > kMaxModuleNames ||
      spec.lora().alpha_pattern_size() > kMaxModuleNames) {
    c.Fail("lora.rank_pattern", absl::StrCat("at most ", kMaxModuleNames, " keys per pattern map"));
  }

  // [model]
  const auto& m = spec.model();
  c.OneOf("model.name", m.name(), {"llama3", "llama", "mistral", "qwen2", "qwen3"});
  std::optional<LlamaConfig> shape;
  if (!m.path().empty() && !m.flavor().empty()) {
    c.Fail("model.path", "set either model.flavor or model.path, not both");
  } else if (m.path().empty()) {
    auto flavor = LlamaConfig::FromFlavor(m.flavor());
    if (flavor.ok())
      shape = *flavor;
    else
      c.Fail("model.flavor", std::string(flavor.status().message()));
  }
  // Empty: the tokenizer of model.path's directory. Otherwise "byte" or a path (tokenizer.json,
  // a SentencePiece .model, or a directory holding one), checked where the file is read.
  if (m.tokenizer() == "byte" && !m.path().empty()) {
    c.Fail("model.tokenizer",
           "\"byte\" is only for built-in flavors: a checkpoint's embeddings expect its own "
           "tokenizer's ids (leave model.tokenizer empty to use the one in model.path)");
  }
  if (!m.dtype().empty() && !IsFloatDtype(m.dtype()))
    c.Fail("model.dtype", "must be float32, bfloat16 or float16");

  // [lora]
  const auto& l = spec.lora();
  c.InRange("lora.rank", l.rank(), 1, kMaxRank);
  c.Positive("lora.alpha", l.alpha());
  if (!(l.dropout() >= 0 && l.dropout() < 1))
    c.Fail("lora.dropout", absl::StrCat("must be in [0, 1), got ", l.dropout()));
  if (!l.target_modules().empty() && !l.target_modules_regex().empty()) {
    c.Fail("lora.target_modules", "give a list of names or one regex string, not both");
  }
  for (const std::string& t : l.target_modules()) {
    if (t.empty()) c.Fail("lora.target_modules", "empty module name");
  }
  if (!l.target_modules_regex().empty() && l.target_modules_regex() != "all-linear") {
    c.Regex("lora.target_modules", l.target_modules_regex());
  }
  if (!l.exclude_modules_regex().empty())
    c.Regex("lora.exclude_modules", l.exclude_modules_regex());
  c.OneOf("lora.init", l.init(), {"kaiming", "gaussian"});
  for (const auto& [k, v] : l.rank_pattern()) {
    c.InRange(absl::StrCat("lora.rank_pattern.", ShortKey(k)), v, 1, kMaxRank);
    c.Regex(absl::StrCat("lora.rank_pattern.", ShortKey(k)), k);
  }
  for (const auto& [k, v] : l.alpha_pattern()) {
    c.Positive(absl::StrCat("lora.alpha_pattern.", ShortKey(k)), v);
    c.Regex(absl::StrCat("lora.alpha_pattern.", ShortKey(k)), k);
  }
  if (kind == lora::v1::JOB_KIND_MERGE && l.adapter().empty())
    c.Fail("lora.adapter", "a merge job needs the adapter to merge");

  // [optimizer] [lr_scheduler]
  const auto& o = spec.optimizer();
  if (absl::AsciiStrToLower(o.name()) != "adamw")
    c.Fail("optimizer.name", absl::StrCat("'", o.name(), "' is not supported (AdamW)"));
  c.Positive("optimizer.lr", o.lr());
  if (!(o.weight_decay() >= 0)) c.Fail("optimizer.weight_decay", "must be >= 0");
  if (o.betas_size() != 2) {
    c.Fail("optimizer.betas", "must be [beta1, beta2]");
  } else {
    for (int i = 0; i < 2; ++i) {
      if (!(o.betas(i) >= 0 && o.betas(i) < 1))
        c.Fail(absl::StrCat("optimizer.betas[", i, "]"), "must be in [0, 1)");
    }
  }
  c.Positive("optimizer.eps", o.eps());
  const auto& s = spec.lr_scheduler();
  c.AtLeast("lr_scheduler.warmup_steps", s.warmup_steps(), 0);
  c.OneOf("lr_scheduler.decay_type", s.decay_type(), {"linear", "cosine", "constant"});
  if (!(s.min_lr_factor() >= 0 && s.min_lr_factor() <= 1))
    c.Fail("lr_scheduler.min_lr_factor", "must be in [0, 1]");

  // [training]
  const auto& t = spec.training();
  if (t.has_epochs()) {
    if (t.has_steps()) c.Fail("training.epochs", "set training.steps or training.epochs, not both");
    if (!(t.epochs() > 0 && t.epochs() <= 1e6)) c.Fail("training.epochs", "must be in (0, 1e6]");
  } else {
    c.InRange("training.steps", t.steps(), 1, kMaxSteps);
  }
  c.AtLeast("training.seq_len", t.seq_len(), 2);
  if (t.seq_len() > (1 << 20)) c.Fail("training.seq_len", "must be <= 1048576");
  c.InRange("training.local_batch_size", t.local_batch_size(), 1, kMaxBatchRows);
  c.InRange("training.gradient_accumulation_steps", t.gradient_accumulation_steps(), 1,
            kMaxBatchRows);
  if (!(t.max_norm() >= 0)) c.Fail("training.max_norm", "must be >= 0 (0 disables clipping)");
  c.OneOf("training.mixed_precision", t.mixed_precision(), {"none", "bf16", "fp16"});
  if (t.mixed_precision() == "fp16" && spec.resources().device() != "cuda") {
    c.Fail("training.mixed_precision", "fp16 needs resources.device = \"cuda\" (use bf16 on CPU)");
  }
  if (t.activation_checkpoint() == "selective") {
    c.Fail("training.activation_checkpoint",
           "\"selective\" is not supported; use \"full\" or \"none\"");
  } else {
    c.OneOf("training.activation_checkpoint", t.activation_checkpoint(), {"none", "full"});
  }
  c.AtLeast("training.num_threads", t.num_threads(), 0);
  if (shape && t.seq_len() > shape->max_position_embeddings) {
    c.Fail("training.seq_len", absl::StrCat("exceeds the model's max_position_embeddings (",
                                            shape->max_position_embeddings, ")"));
  }

  // [dataset]
  const auto& d = spec.dataset();
  if (train) {
    if (d.path().empty() == d.name().empty()) {
      c.Fail("dataset.path",
             absl::StrCat("set exactly one of dataset.path (a JSONL file) or dataset.name (",
                          absl::StrJoin(kBuiltinDatasets, ", "), ")"));
    }
    if (!d.name().empty()) c.OneOf("dataset.name", d.name(), kBuiltinDatasets);
  }
  c.OneOf("dataset.format", d.format(),
          {"auto", "text", "prompt_completion", "input_ids", "messages"});
  if (!(d.validation_fraction() >= 0 && d.validation_fraction() < 1))
    c.Fail("dataset.validation_fraction", "must be in [0, 1)");
  if (!d.validation_path().empty() && d.validation_fraction() > 0) {
    c.Fail("dataset.validation_fraction",
           "must be 0 with dataset.validation_path (the held-out file is the validation set)");
  }
  c.AtLeast("dataset.validation_interval", d.validation_interval(), 0);
  c.AtLeast("dataset.validation_max_batches", d.validation_max_batches(), 0);
  c.InRange("dataset.num_examples", d.num_examples(), 1, kMaxSteps);

  if (spec.lora().use_dora() && spec.resources().world_size() > 1) {
    // The sharded paths gather, scatter and checkpoint A and B only; the magnitude and its
    // row norms across tensor-parallel shards are not carried yet.
    c.Fail("lora.use_dora", "DoRA runs on one rank: set resources.world_size = 1");
  }

  // [parallelism] x [resources]
  const auto& p = spec.parallelism();
  const int world = spec.resources().world_size();
  c.AtLeast("resources.world_size", world, 1);
  if (world > 4096) c.Fail("resources.world_size", "must be <= 4096");
  c.OneOf("resources.device", spec.resources().device(), {"cpu", "cuda"});
  c.AtLeast("resources.collective_timeout_seconds", spec.resources().collective_timeout_seconds(),
            1);
  if (spec.resources().collective_timeout_seconds() > 86400)
    c.Fail("resources.collective_timeout_seconds", "must be <= 86400 (one day)");
  c.AtLeast("parallelism.data_parallel_replicate_degree", p.data_parallel_replicate_degree(), 1);
  c.AtLeast("parallelism.tensor_parallel_degree", p.tensor_parallel_degree(), 1);
  c.AtLeast("parallelism.pipeline_parallel_degree", p.pipeline_parallel_degree(), 1);
  c.AtLeast("parallelism.context_parallel_degree", p.context_parallel_degree(), 1);
  c.AtLeast("parallelism.pipeline_parallel_microbatches", p.pipeline_parallel_microbatches(), 1);
  if (p.data_parallel_shard_degree() != -1)
    c.AtLeast("parallelism.data_parallel_shard_degree", p.data_parallel_shard_degree(), 1);
  c.OneOf("parallelism.pipeline_parallel_schedule", p.pipeline_parallel_schedule(),
          {"GPipe", "1F1B"});
  c.OneOf("parallelism.context_parallel_method", p.context_parallel_method(),
          {"allgather", "ring"});
  c.OneOf("parallelism.fsdp_reshard_after_forward", p.fsdp_reshard_after_forward(),
          {"default", "always", "never"});
  const int64_t others = static_cast<int64_t>(std::max(1, p.data_parallel_replicate_degree())) *
                         std::max(1, p.tensor_parallel_degree()) *
                         std::max(1, p.pipeline_parallel_degree()) *
                         std::max(1, p.context_parallel_degree());
  if (world >= 1) {
    if (p.data_parallel_shard_degree() == -1) {
      if (world % others != 0) {
        c.Fail("parallelism", absl::StrCat("replicate x tp x pp x cp = ", others,
                                           " does not divide resources.world_size = ", world));
      }
    } else if (others * p.data_parallel_shard_degree() != world) {
      c.Fail("parallelism", absl::StrCat("replicate x shard x tp x pp x cp = ",
                                         others * p.data_parallel_shard_degree(),
                                         " but resources.world_size = ", world));
    }
  }
  if (p.pipeline_parallel_degree() > 1 && p.pipeline_parallel_microbatches() >= 1 &&
      t.local_batch_size() % p.pipeline_parallel_microbatches() != 0) {
    c.Fail("parallelism.pipeline_parallel_microbatches",
           absl::StrCat("must divide training.local_batch_size (", t.local_batch_size(), ")"));
  }
  if (p.context_parallel_degree() > 1 && spec.resources().device() == "cuda") {
    // Its masks are the fused CPU attention kernel's per-query key ranges.
    c.Fail("parallelism.context_parallel_degree",
           "> 1 runs on the CPU only (its attention is the fused CPU kernel); on GPUs use FSDP, "
           "tensor or pipeline parallelism");
  }
  if (p.context_parallel_degree() > 1 && t.seq_len() % (2 * p.context_parallel_degree()) != 0) {
    c.Fail("training.seq_len",
           absl::StrCat("must be a multiple of 2 x context_parallel_degree (",
                        2 * p.context_parallel_degree(), ") for causal load balancing"));
  }
  if (!p.pipeline_parallel_layers_per_stage().empty()) {
    if (p.pipeline_parallel_layers_per_stage_size() != p.pipeline_parallel_degree()) {
      c.Fail("parallelism.pipeline_parallel_layers_per_stage",
             "needs one entry per pipeline stage");
    }
    int64_t total = 0;
    for (int n : p.pipeline_parallel_layers_per_stage()) {
      if (n < 1)
        c.Fail("parallelism.pipeline_parallel_layers_per_stage",
               "every stage needs at least one layer");
      total += n;
    }
    if (shape && total != shape->num_hidden_layers) {
      c.Fail("parallelism.pipeline_parallel_layers_per_stage",
             absl::StrCat("sums to ", total, " but the model has ", shape->num_hidden_layers,
                          " layers"));
    }
  }
  if (shape) {
    const int tp = p.tensor_parallel_degree();
    if (tp > 1 && (shape->num_attention_heads % tp != 0 || shape->num_key_value_heads % tp != 0 ||
                   shape->intermediate_size % tp != 0)) {
      c.Fail("parallelism.tensor_parallel_degree",
             absl::StrCat(tp, " must divide the heads (", shape->num_attention_heads,
                          "), kv heads (", shape->num_key_value_heads, ") and intermediate size (",
                          shape->intermediate_size, ")"));
    }
    if (p.pipeline_parallel_degree() > shape->num_hidden_layers) {
      c.Fail("parallelism.pipeline_parallel_degree",
             absl::StrCat("exceeds the number of layers (", shape->num_hidden_layers, ")"));
    }
  }

  // [checkpoint]
  const auto& k = spec.checkpoint();
  c.AtLeast("checkpoint.interval", k.interval(), 0);
  c.AtLeast("checkpoint.keep_latest", k.keep_latest(), 0);
  for (const std::string& e : k.export_()) c.OneOf("checkpoint.export", e, {"adapter", "merged"});
  if (!IsFloatDtype(k.export_dtype()))
    c.Fail("checkpoint.export_dtype", "must be float32, bfloat16 or float16");
  return c.Take();
}

absl::Status ValidateJobSpec(const JobSpec& spec, const ParsedJobSpec* parsed,
                             const std::string& source) {
  std::vector<FieldViolation> violations = JobSpecViolations(spec);
  if (violations.empty()) return absl::OkStatus();
  std::vector<std::string> parts;
  for (const FieldViolation& v : violations) {
    std::string where;
    if (parsed != nullptr) {
      // The key itself, else its section.
      auto it = parsed->lines.find(v.field);
      if (it == parsed->lines.end()) it = parsed->lines.find(v.field.substr(0, v.field.find('.')));
      if (it != parsed->lines.end()) where = absl::StrCat(source, ":", it->second, ": ");
    }
    parts.push_back(absl::StrCat(where, v.field, ": ", v.description));
  }
  return WithBadRequest(absl::InvalidArgumentError(absl::StrJoin(parts, "; ")), violations);
}

absl::Status WithBadRequest(absl::Status status, const std::vector<FieldViolation>& violations) {
  google::rpc::BadRequest details;
  for (const FieldViolation& v : violations) {
    auto* fv = details.add_field_violations();
    fv->set_field(v.field);
    fv->set_description(v.description);
  }
  status.SetPayload(kBadRequestTypeUrl, absl::Cord(details.SerializeAsString()));
  return status;
}

}  // namespace lora
