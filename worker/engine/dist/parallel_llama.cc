#include "worker/engine/dist/parallel_llama.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/dist/collectives.h"
#include "worker/engine/dist/ring_attention.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/model/rope.h"
#include "worker/engine/train/adamw.h"

namespace lora::dist {
namespace {

// -1 for parameters outside the decoder layers.
int LayerOf(const std::string& name) {
  static const std::string kPrefix = "model.layers.";
  if (!absl::StartsWith(name, kPrefix)) return -1;
  int layer = -1;
  const size_t dot = name.find('.', kPrefix.size());
  (void)absl::SimpleAtoi(name.substr(kPrefix.size(), dot - kPrefix.size()), &layer);
  return layer;
}

void SetData(torch::Tensor& p, const torch::Tensor& value) {
  torch::NoGradGuard no_grad;
  p.set_data(value);
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> StageLayers(const LlamaConfig& c, int stages,
                                                     const std::vector<int>& layers_per_stage) {
  const int64_t L = c.num_hidden_layers;
  std::vector<std::pair<int64_t, int64_t>> out;
  if (!layers_per_stage.empty()) {
    int64_t at = 0;
    for (int n : layers_per_stage) {
      out.emplace_back(at, at + n);
      at += n;
    }
    return out;
  }
  // Minimize the largest stage (contiguous partition, exact by dynamic programming).
  const double layer =
      static_cast<double>(LlamaConfig(c).NumParameters() -
                          c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2) -
                          c.hidden_size) /
      static_cast<double>(L);
  const double embed = static_cast<double>(c.vocab_size * c.hidden_size);
  const double head =
      static_cast<double>(c.tie_word_embeddings ? 0 : c.vocab_size * c.hidden_size) + c.hidden_size;
  auto cost = [&](int64_t a, int64_t b, int s) {
    return static_cast<double>(b - a) * layer + (s == 0 ? embed : 0) + (s == stages - 1 ? head : 0);
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(static_cast<size_t>(stages + 1),
                                        std::vector<double>(static_cast<size_t>(L + 1), inf));
  std::vector<std::vector<int64_t>> cut(static_cast<size_t>(stages + 1),
                                        std::vector<int64_t>(static_cast<size_t>(L + 1), 0));
  best[0][0] = 0;
  for (int s = 1; s <= stages; ++s) {
    for (int64_t b = s; b <= L; ++b) {
      for (int64_t a = s - 1; a < b; ++a) {
        const double v =
            std::max(best[static_cast<size_t>(s - 1)][static_cast<size_t>(a)], cost(a, b, s - 1));
        if (v < best[static_cast<size_t>(s)][static_cast<size_t>(b)]) {
          best[static_cast<size_t>(s)][static_cast<size_t>(b)] = v;
          cut[static_cast<size_t>(s)][static_cast<size_t>(b)] = a;
        }
      }
    }
  }
  out.resize(static_cast<size_t>(stages));
  int64_t b = L;
  for (int s = stages; s >= 1; --s) {
    const int64_t a = cut[static_cast<size_t>(s)][static_cast<size_t>(b)];
    out[static_cast<size_t>(s - 1)] = {a, b};
    b = a;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ParallelLlama>> ParallelLlama::Create(LlamaForCausalLM model,
                                                                     const lora::v1::JobSpec& spec,
                                                                     DistContext* dist) {
  std::unique_ptr<ParallelLlama> p(new ParallelLlama(std::move(model), dist));
  absl::Status s = p->Setup(spec);
  if (!s.ok()) return s;
  return p;
}

ParallelLlama::Split ParallelLlama::SplitOf(const std::string& name) const {
  if (tp_ == nullptr || tp_->size() == 1 || LayerOf(name) < 0) return Split::kNone;
  const bool column = absl::StrContains(name, ".q_proj.") || absl::StrContains(name, ".k_proj.") ||
                      absl::StrContains(name, ".v_proj.") ||
                      absl::StrContains(name, ".gate_proj.") ||
                      absl::StrContains(name, ".up_proj.");
  const bool row = absl::StrContains(name, ".o_proj.") || absl::StrContains(name, ".down_proj.");
  if (column) {
    if (absl::EndsWith(name, "lora_a.weight")) return Split::kNone;
    return Split::kRows;  // weight, bias, lora_b
  }
  if (row) {
    if (absl::EndsWith(name, "lora_a.weight")) return Split::kCols;
    if (absl::EndsWith(name, "lora_b.weight") || absl::EndsWith(name, ".bias")) return Split::kNone;
    return Split::kCols;  // weight
  }
  return Split::kNone;
}

bool ParallelLlama::Owned(const std::string& name) const {
  const int layer = LayerOf(name);
  if (layer >= 0) return layer >= first_ && layer < last_;
  if (absl::StartsWith(name, "model.embed_tokens.")) return first_stage_;
  return last_stage_;  // model.norm, lm_head
}

torch::Tensor ParallelLlama::Slice(const torch::Tensor& full, const std::string& name) const {
  const Split split = SplitOf(name);
  if (split == Split::kNone) return full;
  const int64_t dim = split == Split::kRows ? 0 : 1;
  const int64_t n = full.size(dim) / tp_->size();
  return full.narrow(dim, tp_->rank() * n, n).contiguous();
}

absl::Status ParallelLlama::Setup(const lora::v1::JobSpec& spec) {
  // Every rank creates the groups in the same order (group creation is collective).
  dist_->world_group();
  tp_ = &dist_->group({Dim::kTp});
  cp_ = &dist_->group({Dim::kCp});
  pp_ = &dist_->group({Dim::kPp});
  shard_ = &dist_->group({Dim::kShard});
  dp_cp_ = &dist_->group({Dim::kReplicate, Dim::kShard, Dim::kCp});
  dist_->group({Dim::kPp, Dim::kTp});

  const LlamaConfig& c = model_->config();
  const auto& par = spec.parallelism();
  ring_attention_ = par.context_parallel_method() == "ring";
  if (cp_->size() > 1 && !LlamaModelImpl::FusedAttentionFits(c)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallelism.context_parallel_degree: context parallelism runs on the fused attention "
        "kernel, which needs head_dim to be a multiple of 16 (the model's is ",
        c.head_dim, ")"));
  }
  if (cp_->size() > 1 && c.SlidingWindowBinds(spec.training().seq_len())) {
    // Each CP rank sees its own slice of keys; the window's bounds are not carried across the
    // gather or the ring, so a binding window would be silently ignored.
    return absl::InvalidArgumentError(absl::StrCat(
        "parallelism.context_parallel_degree: the model's sliding_window (", c.sliding_window,
        ") is shorter than training.seq_len (", spec.training().seq_len(),
        "); context parallelism does not implement sliding windows: use seq_len <= ",
        c.sliding_window, " or context_parallel_degree = 1"));
  }
  std::vector<int> per_stage(par.pipeline_parallel_layers_per_stage().begin(),
                             par.pipeline_parallel_layers_per_stage().end());
  if (pp_->size() > c.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallelism.pipeline_parallel_degree: ", pp_->size(),
                     " stages but the model has ", c.num_hidden_layers, " layers"));
  }
  int64_t listed = 0;
  for (int n : per_stage) listed += n;
  if (!per_stage.empty() &&
      (listed != c.num_hidden_layers || static_cast<int>(per_stage.size()) != pp_->size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallelism.pipeline_parallel_layers_per_stage: ", per_stage.size(),
                     " entries summing to ", listed, " but the model has ", c.num_hidden_layers,
                     " layers in ", pp_->size(), " stages"));
  }
  auto stages = StageLayers(c, pp_->size(), per_stage);
  const int stage = pp_->rank();
  first_ = stages[static_cast<size_t>(stage)].first;
  last_ = stages[static_cast<size_t>(stage)].second;
  first_stage_ = stage == 0;
  last_stage_ = stage == pp_->size() - 1;
  activation_dtype_ = model_->model->embed_tokens->weight.scalar_type();
  if (tp_->size() > 1) {
    if (c.num_attention_heads % tp_->size() || c.num_key_value_heads % tp_->size() ||
        c.intermediate_size % tp_->size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("parallelism.tensor_parallel_degree: ", tp_->size(),
                       " must divide the heads, kv heads and intermediate size"));
    }
    ApplyTensorParallel();
  }
  // Trainable: this stage's adapters. Everything else is frozen.
  for (const auto& item : model_->named_parameters()) {
    torch::Tensor p = item.value();
    const bool adapter =
        absl::StrContains(item.key(), "lora_a.") || absl::StrContains(item.key(), "lora_b.");
    if (adapter && Owned(item.key())) {
      p.set_requires_grad(true);
      trainable_.emplace_back(item.key(), p);
      if (tp_->size() > 1 && SplitOf(item.key()) == Split::kNone) {
        // Inside a layer a replicated factor sees only this rank's slice of the other factor:
        // its gradient is partial and must be summed. Outside the layers (lm_head) every TP
        // rank computes the identical full gradient.
        if (LayerOf(item.key()) >= 0) tp_partial_.push_back(item.key());
        tp_replicated_.push_back(item.key());
      }
    } else {
      p.set_requires_grad(false);
    }
  }
  // Free what other stages own (a tied lm_head needs the embedding on the last stage).
  for (const auto& item : model_->named_parameters()) {
    if (Owned(item.key())) continue;
    if (c.tie_word_embeddings && last_stage_ && absl::StartsWith(item.key(), "model.embed_tokens."))
      continue;
    if (absl::StrContains(item.key(), "lora_"))
      continue;  // adapters are tiny; they stay for gathering
    torch::Tensor p = item.value();
    SetData(p, torch::empty({0}, p.options()));
  }
  const std::string& reshard = par.fsdp_reshard_after_forward();
  hold_layers_ = reshard == "never" || (reshard == "default" && pp_->size() > 1);
  if (shard_->size() > 1) ApplyFsdp();
  if (spec.training().activation_checkpoint() == "full")
    model_->model->set_activation_checkpointing(true);
  return absl::OkStatus();
}

void ParallelLlama::ApplyTensorParallel() {
  const LlamaConfig& c = model_->config();
  const int tp = tp_->size();
  for (const auto& item : model_->named_parameters()) {
    if (SplitOf(item.key()) == Split::kNone) {
      // Row-parallel biases are added once: keep them on TP rank 0.
      if (tp_->rank() != 0 && absl::EndsWith(item.key(), ".bias") &&
          (absl::StrContains(item.key(), ".o_proj.") ||
           absl::StrContains(item.key(), ".down_proj."))) {
        torch::NoGradGuard no_grad;
        item.value().zero_();
      }
      continue;
    }
    torch::Tensor p = item.value();
    SetData(p, Slice(p.detach(), item.key()));
  }
  Group* tp_group = tp_;
  TensorParallelHooks hooks;
  hooks.enter = [tp_group](const torch::Tensor& x) { return CopyToGroup(x, tp_group); };
  hooks.exit = [tp_group](const torch::Tensor& x) { return ReduceFromGroup(x, tp_group); };
  for (const auto& layer : *model_->model->layers) {
    auto* decoder = layer->as<LlamaDecoderLayer>();
    decoder->self_attn->SetLocalHeads(c.num_attention_heads / tp, c.num_key_value_heads / tp);
    decoder->self_attn->SetTensorParallel(hooks);
    decoder->mlp->SetTensorParallel(hooks);
  }
}

void ParallelLlama::ApplyFsdp() {
  const int n = shard_->size();
  auto shard = [&](int unit, torch::Tensor p) {
    FsdpShard s;
    s.param = p;
    s.shape = p.sizes().vec();
    s.numel = p.numel();
    const int64_t chunk = (s.numel + n - 1) / n;
    torch::Tensor flat = torch::zeros({chunk * n}, p.options());
    flat.narrow(0, 0, s.numel).copy_(p.detach().reshape({-1}));
    s.local = flat.narrow(0, shard_->rank() * chunk, chunk).clone();
    SetData(p, torch::empty({0}, p.options()));
    fsdp_[unit].push_back(std::move(s));
  };
  for (int64_t layer = first_; layer < last_; ++layer) {
    for (const auto& item : model_->model->layers[static_cast<size_t>(layer)]->named_parameters()) {
      if (!absl::StrContains(item.key(), "lora_")) shard(static_cast<int>(layer), item.value());
    }
  }
  // The embedding and the output projection are sharded too (for small models they are most
  // of the weights). A tied output projection is the embedding, gathered where either is used.
  const bool tied = model_->config().tie_word_embeddings;
  if (first_stage_ || (tied && last_stage_)) shard(kEmbedUnit, model_->model->embed_tokens->weight);
  if (last_stage_ && !tied) shard(kHeadUnit, model_->lm_head->weight);
  hooks_ = std::make_shared<LayerHooks>();
  hooks_->before = [this](int layer) { Gather(layer); };
  hooks_->after = [this](int layer) {
    if (!hold_layers_) Release(layer);
  };
  model_->model->SetLayerHooks(hooks_);
  // Weights freed after each use must be gathered again for the backward, which then
  // recomputes the layer (the activation-checkpointing path calls the hooks around the
  // recomputation). Held weights need no recomputation: the spec's setting applies.
  if (!hold_layers_) model_->model->set_activation_checkpointing(true);
}

void ParallelLlama::Gather(int layer) {
  auto it = fsdp_.find(layer);
  if (it == fsdp_.end()) return;
  if (hold_layers_ && layer != kHeadUnit && !held_.insert(layer).second) return;  // still held
  for (FsdpShard& s : it->second) {
    torch::Tensor full = shard_->AllGather(s.local, 0).narrow(0, 0, s.numel).view(s.shape);
    SetData(s.param, full);
  }
  peak_parameter_bytes_ = std::max(peak_parameter_bytes_, ParameterBytes());
}

void ParallelLlama::Release(int layer) {
  auto it = fsdp_.find(layer);
  if (it == fsdp_.end()) return;
  for (FsdpShard& s : it->second) SetData(s.param, torch::empty({0}, s.param.options()));
}

LocalBatch ParallelLlama::Localize(const Batch& rows) {
  LocalBatch out;
  out.rows = rows.input_ids.size(0);
  const int64_t B = out.rows, T = rows.input_ids.size(1);
  const int cp = cp_->size(), r = cp_->rank();
  out.input_ids = TakeLocalChunks(rows.input_ids, cp, r).contiguous();
  out.targets = TakeLocalChunks(rows.targets, cp, r).contiguous();
  out.num_targets = out.targets.ne(kIgnoreIndex).sum().item<int64_t>();  // before any copy
  if (!model_->model->fused_attention()) {
    // The portable path (SDPA, what a GPU runs): the model's own context, causal or
    // document-masked, on the model's device. Context parallelism needs the fused kernel's
    // key ranges (refused before a run starts).
    const torch::Device device = model_->model->embed_tokens->weight.device();
    auto on_device = [&](const torch::Tensor& t) { return t.defined() ? t.to(device) : t; };
    out.input_ids = on_device(out.input_ids);
    out.targets = on_device(out.targets);
    out.ctx = model_->model->MakeAttentionContext(
        ForwardInputs{out.input_ids, on_device(rows.position_ids), on_device(rows.document_ids)},
        model_->model->embed_tokens->weight.scalar_type());
    return out;
  }
  // The fused kernel's per-query key ranges [lo, hi] in global positions.
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor index = torch::arange(T, i64).unsqueeze(0).expand({B, T}).contiguous();
  torch::Tensor lo = torch::zeros({B, T}, i64);
  if (rows.document_ids.defined()) {
    const torch::Tensor& doc = rows.document_ids;
    torch::Tensor starts = torch::ones({B, T}, torch::TensorOptions().dtype(torch::kBool));
    starts.narrow(1, 1, T - 1).copy_(doc.narrow(1, 1, T - 1).ne(doc.narrow(1, 0, T - 1)));
    lo = std::get<0>(torch::cummax(torch::where(starts, index, torch::zeros_like(index)), 1))
             .contiguous();
  }
  torch::Tensor positions = rows.position_ids;
  torch::Tensor local_pos = TakeLocalChunks(positions, cp, r);
  out.ctx.lo = TakeLocalChunks(lo, cp, r).contiguous();
  out.ctx.hi = TakeLocalChunks(index, cp, r).contiguous();
  const torch::Tensor& inv = model_->model->inv_freq();
  auto [cos, sin] = RopeCosSin(inv, local_pos, torch::kFloat32);
  out.ctx.rope_cos = cos.squeeze(2).contiguous();
  out.ctx.rope_sin = sin.squeeze(2).contiguous();
  if (cp > 1 && ring_attention_) {
    auto plan = std::make_shared<const RingPlan>(MakeRingPlan(lo, index, positions, inv, cp, r));
    Group* g = cp_;
    out.ctx.attend = [plan, g](const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v) { return RingAttention(q, k, v, *plan, g); };
  } else if (cp > 1) {
    auto [kcos, ksin] = RopeCosSin(inv, positions, torch::kFloat32);
    out.ctx.k_rope_cos = kcos.squeeze(2).contiguous();
    out.ctx.k_rope_sin = ksin.squeeze(2).contiguous();
    Group* g = cp_;
    out.ctx.gather_kv = [g](const torch::Tensor& t) { return GatherSequence(t, g); };
  }
  return out;
}

torch::Tensor ParallelLlama::StageForward(const LocalBatch& batch, const torch::Tensor& hidden_in) {
  const bool tied = model_->config().tie_word_embeddings;
  torch::Tensor h = hidden_in;
  if (first_stage_) {
    // The embedding's backward needs no weights (they are frozen): release at once, unless it
    // is also the output projection, held for the step.
    const bool held = (head_gathered_ && tied) || hold_layers_;
    Gather(kEmbedUnit);
    h = model_->model->Embed(batch.input_ids);
    if (!held) Release(kEmbedUnit);
  }
  h = model_->model->RunLayers(h, batch.ctx, first_, last_);
  if (!last_stage_) return h;
  // The output projection's backward needs its weight: it stays until ReleaseRoot().
  if (!head_gathered_) {
    Gather(tied ? kEmbedUnit : kHeadUnit);
    head_gathered_ = true;
  }
  return model_->Logits(model_->model->norm(h));
}

void ParallelLlama::ReleaseRoot() {
  for (int layer : held_) Release(layer);
  held_.clear();
  if (!head_gathered_) return;
  Release(model_->config().tie_word_embeddings ? kEmbedUnit : kHeadUnit);
  head_gathered_ = false;
}

void ParallelLlama::SyncGradients() {
  auto bucket = [](const NamedTensors& params, Group* g, const std::vector<std::string>* only) {
    if (g->size() == 1) return;
    std::vector<torch::Tensor> grads;
    for (const auto& [name, p] : params) {
      if (only && std::find(only->begin(), only->end(), name) == only->end()) continue;
      torch::Tensor gr = p.grad().defined() ? p.grad() : torch::zeros_like(p);
      grads.push_back(gr);
    }
    if (grads.empty()) return;
    std::vector<torch::Tensor> flat_parts;
    for (auto& gr : grads) flat_parts.push_back(gr.reshape({-1}).to(torch::kFloat32));
    torch::Tensor flat = torch::cat(flat_parts);
    g->AllReduceSum(flat);
    int64_t at = 0;
    size_t i = 0;
    for (const auto& [name, p] : params) {
      if (only && std::find(only->begin(), only->end(), name) == only->end()) continue;
      torch::Tensor slice = flat.narrow(0, at, p.numel()).view(p.sizes()).to(p.scalar_type());
      at += p.numel();
      p.mutable_grad() = slice.clone();
      ++i;
    }
  };
  ReleaseRoot();  // every backward of the step is done
  bucket(trainable_, dp_cp_, nullptr);
  bucket(trainable_, tp_, &tp_partial_);
}

double ParallelLlama::ClipGradients(double max_norm) {
  NamedTensors counted;
  for (const auto& [name, p] : trainable_) {
    const bool replicated =
        std::find(tp_replicated_.begin(), tp_replicated_.end(), name) != tp_replicated_.end();
    if (replicated && tp_->rank() != 0) continue;  // counted once per TP group
    counted.emplace_back(name, p);
  }
  // Summed on the device and reduced across ranks: one host read for the logged value.
  torch::Tensor total = GradSquaredSum(counted).reshape({1});
  dist_->group({Dim::kPp, Dim::kTp}).AllReduceSum(total);
  return ClipGradientsToNorm(trainable_, total.sqrt().squeeze(), max_norm).item<double>();
}

torch::Tensor ParallelLlama::Full(const torch::Tensor& local, const std::string& name, bool owned) {
  torch::Tensor t = owned ? local.detach().to(torch::kFloat32).clone()
                          : torch::zeros(local.sizes(), torch::kFloat32);
  const Split split = SplitOf(name);
  if (split == Split::kRows) t = tp_->AllGather(t, 0);
  if (split == Split::kCols) t = tp_->AllGather(t, 1);
  if (pp_->size() > 1) pp_->AllReduceSum(t);  // only the owning stage contributes
  return t;
}

std::vector<AdapterRecord> ParallelLlama::GatherAdapters() {
  std::vector<AdapterRecord> out;
  for (const auto& [name, linear] : AdaptedLinears(*model_)) {
    const std::string a = name + ".lora_a.weight", b = name + ".lora_b.weight";
    out.push_back({name, linear->rank(), linear->alpha(), linear->use_rslora(),
                   Full(linear->lora_a->weight, a, Owned(a)),
                   Full(linear->lora_b->weight, b, Owned(b))});
  }
  return out;
}

NamedTensors ParallelLlama::GatherOptimizerState(const NamedTensors& local_state) {
  std::map<std::string, torch::Tensor> local(local_state.begin(), local_state.end());
  NamedTensors out;
  for (const auto& [module, linear] : AdaptedLinears(*model_)) {
    for (const auto& [param, value] :
         {std::pair<std::string, torch::Tensor>{module + ".lora_a.weight", linear->lora_a->weight},
          std::pair<std::string, torch::Tensor>{module + ".lora_b.weight",
                                                linear->lora_b->weight}}) {
      for (const char* moment : {"exp_avg.", "exp_avg_sq."}) {
        const std::string key = moment + param;
        auto it = local.find(key);
        const bool have = it != local.end();
        out.emplace_back(key, Full(have ? it->second : torch::zeros(value.sizes()), param, have));
      }
    }
  }
  return out;
}

absl::Status ParallelLlama::ScatterAdapters(const std::vector<AdapterRecord>& full) {
  std::map<std::string, LinearImpl*> linears;
  for (const auto& [name, linear] : AdaptedLinears(*model_)) linears[name] = linear;
  torch::NoGradGuard no_grad;
  for (const AdapterRecord& r : full) {
    auto it = linears.find(r.module);
    if (it == linears.end())
      return absl::FailedPreconditionError(absl::StrCat("no adapter for '", r.module, "'"));
    torch::Tensor a = Slice(r.a, r.module + ".lora_a.weight"),
                  b = Slice(r.b, r.module + ".lora_b.weight");
    if (a.sizes() != it->second->lora_a->weight.sizes() ||
        b.sizes() != it->second->lora_b->weight.sizes()) {
      return absl::FailedPreconditionError(
          absl::StrCat("adapter for '", r.module, "' has another shape"));
    }
    it->second->lora_a->weight.copy_(a);
    it->second->lora_b->weight.copy_(b);
  }
  return absl::OkStatus();
}

NamedTensors ParallelLlama::ScatterOptimizerState(const NamedTensors& full) {
  std::map<std::string, torch::Tensor> by_name(full.begin(), full.end());
  NamedTensors out;
  for (const auto& [name, p] : trainable_) {
    for (const char* moment : {"exp_avg.", "exp_avg_sq."}) {
      auto it = by_name.find(moment + name);
      if (it != by_name.end()) out.emplace_back(moment + name, Slice(it->second, name));
    }
  }
  return out;
}

std::vector<ModuleInfo> ParallelLlama::Modules() const { return ListModules(*model_); }

int64_t ParallelLlama::ParameterBytes() const {
  int64_t total = 0;
  for (const auto& p : model_->parameters())
    total += p.numel() * static_cast<int64_t>(p.element_size());
  for (const auto& [layer, shards] : fsdp_) {
    for (const FsdpShard& s : shards)
      total += s.local.numel() * static_cast<int64_t>(s.local.element_size());
  }
  return total;
}

}  // namespace lora::dist
