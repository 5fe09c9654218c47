#include "common/llama_config.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lora {
namespace {

using json = nlohmann::json;

absl::Status FieldError(const std::string& field, const std::string& reason) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", field, ": ", reason));
}

// Reads an optional integer field; leaves `out` unchanged when absent or null.
absl::Status ReadInt(const json& j, const char* key, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) return FieldError(key, "must be an integer");
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadDouble(const json& j, const char* key, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return FieldError(key, "must be a number");
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status ReadBool(const json& j, const char* key, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return FieldError(key, "must be true or false");
  *out = it->get<bool>();
  return absl::OkStatus();
}

// eos/bos may be an int or a list of ints; we keep the first.
absl::Status ReadTokenId(const json& j, const char* key, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_number_integer()) {
    *out = it->get<int64_t>();
  } else if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) {
    *out = (*it)[0].get<int64_t>();
  } else {
    return FieldError(key, "must be an integer or a list of integers");
  }
  return absl::OkStatus();
}

#define RETURN_IF_ERROR_(expr) \
  do {                         \
    absl::Status s_ = (expr);  \
    if (!s_.ok()) return s_;   \
  } while (false)

// mistral: `sliding_window` (int or null) on every layer. qwen2/qwen3: only with
// `use_sliding_window`, on the layers `layer_types` marks "sliding_attention" (or, without it,
// layers >= max_window_layers), as transformers does. llama has no window.
absl::Status ReadSlidingWindow(const json& j, LlamaConfig* c) {
  const int64_t n = c->num_hidden_layers;
  if (c->model_type == "llama") return absl::OkStatus();
  // One flag per layer is allocated below: bound the count first (the fuzzer found 2^62).
  if (n <= 0 || n > LlamaConfig::kMaxLayers) {
    return FieldError("num_hidden_layers",
                      absl::StrCat("must be in [1, ", LlamaConfig::kMaxLayers, "], got ", n));
  }
  int64_t window = 0;
  RETURN_IF_ERROR_(ReadInt(j, "sliding_window", &window));
  if (c->model_type != "mistral") {
    bool use = false;
    RETURN_IF_ERROR_(ReadBool(j, "use_sliding_window", &use));
    if (!use) window = 0;
  }
  if (window == 0) return absl::OkStatus();
  if (window < 0) return FieldError("sliding_window", absl::StrCat("must be > 0, got ", window));
  c->sliding_window = window;
  c->sliding_layers.assign(static_cast<size_t>(n), true);
  auto types = j.find("layer_types");
  if (types != j.end() && !types->is_null()) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != n) {
      return FieldError("layer_types",
                        absl::StrCat("must be a list of num_hidden_layers (", n, ") strings"));
    }
    for (int64_t i = 0; i < n; ++i) {
      const json& t = (*types)[static_cast<size_t>(i)];
      if (!t.is_string() || (t != "full_attention" && t != "sliding_attention")) {
        return FieldError(absl::StrCat("layer_types[", i, "]"),
                          "must be \"full_attention\" or \"sliding_attention\"");
      }
      c->sliding_layers[static_cast<size_t>(i)] = t == "sliding_attention";
    }
  } else if (c->model_type != "mistral") {
    int64_t max_window_layers = n;
    RETURN_IF_ERROR_(ReadInt(j, "max_window_layers", &max_window_layers));
    for (int64_t i = 0; i < n; ++i)
      c->sliding_layers[static_cast<size_t>(i)] = i >= max_window_layers;
  }
  return absl::OkStatus();
}

}  // namespace

bool LlamaConfig::SlidingWindowBinds(int64_t seq_len) const {
  if (sliding_window <= 0 || sliding_window >= seq_len) return false;
  for (bool sliding : sliding_layers) {
    if (sliding) return true;
  }
  return false;
}

std::vector<std::string> LlamaConfig::FlavorNames() {
  return {"tiny", "debugmodel", "llama3.2-1b", "llama3.1-8b"};
}

absl::StatusOr<LlamaConfig> LlamaConfig::FromFlavor(const std::string& flavor) {
  LlamaConfig c;
  if (flavor == "debugmodel") {
    // torchtitan's llama3 debug model.
    c.hidden_size = 256;
    c.num_hidden_layers = 6;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 16;
    c.head_dim = 16;
    c.intermediate_size = 768;
    c.vocab_size = 2048;
    c.rope_theta = 500000.0;
    c.max_position_embeddings = 2048;
  } else if (flavor == "tiny") {
    // Small enough for unit tests; still exercises GQA (4 heads over 2 kv heads).
    c.hidden_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.intermediate_size = 160;
    c.vocab_size = 512;
    c.rope_theta = 10000.0;
    c.max_position_embeddings = 1024;
  } else if (flavor == "llama3.2-1b") {
    c.hidden_size = 2048;
    c.num_hidden_layers = 16;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.head_dim = 64;
    c.intermediate_size = 8192;
    c.vocab_size = 128256;
    c.rope_theta = 500000.0;
    c.max_position_embeddings = 131072;
    c.tie_word_embeddings = true;
    c.has_rope_scaling = true;
    c.rope_scaling = RopeScaling{"llama3", 32.0, 1.0, 4.0, 8192};
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
    c.torch_dtype = "bfloat16";
  } else if (flavor == "llama3.1-8b") {
    c.hidden_size = 4096;
    c.num_hidden_layers = 32;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.head_dim = 128;
    c.intermediate_size = 14336;
    c.vocab_size = 128256;
    c.rope_theta = 500000.0;
    c.max_position_embeddings = 131072;
    c.has_rope_scaling = true;
    c.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 8192};
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
    c.torch_dtype = "bfloat16";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown model flavor '", flavor,
                     "'; known flavors: ", absl::StrJoin(FlavorNames(), ", ")));
  }
  return c;
}

absl::StatusOr<LlamaConfig> LlamaConfig::FromHfJson(const json& j) {
  if (!j.is_object()) return FieldError("(root)", "must be a JSON object");
  LlamaConfig c;
  c.has_rope_scaling = false;
  auto model_type = j.find("model_type");
  if (model_type != j.end()) {
    if (!model_type->is_string()) return FieldError("model_type", "must be a string");
    c.model_type = model_type->get<std::string>();
    if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2" &&
        c.model_type != "qwen3") {
      return FieldError("model_type", absl::StrCat("'", c.model_type,
                                                   "' is not a Llama-family model (llama, "
                                                   "mistral, qwen2, qwen3)"));
    }
  }
  if (c.model_type == "qwen2") c.attention_bias = true;
  if (c.model_type == "qwen3") c.qk_norm = true;
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size"}) {
    if (!j.contains(key)) return FieldError(key, "missing");
  }
  RETURN_IF_ERROR_(ReadInt(j, "hidden_size", &c.hidden_size));
  RETURN_IF_ERROR_(ReadInt(j, "intermediate_size", &c.intermediate_size));
  RETURN_IF_ERROR_(ReadInt(j, "num_hidden_layers", &c.num_hidden_layers));
  RETURN_IF_ERROR_(ReadInt(j, "num_attention_heads", &c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  RETURN_IF_ERROR_(ReadInt(j, "num_key_value_heads", &c.num_key_value_heads));
  c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  RETURN_IF_ERROR_(ReadInt(j, "head_dim", &c.head_dim));
  RETURN_IF_ERROR_(ReadInt(j, "vocab_size", &c.vocab_size));
  RETURN_IF_ERROR_(ReadInt(j, "max_position_embeddings", &c.max_position_embeddings));
  RETURN_IF_ERROR_(ReadDouble(j, "rms_norm_eps", &c.rms_norm_eps));
  c.rope_theta = 10000.0;  // HF default when absent
  RETURN_IF_ERROR_(ReadDouble(j, "rope_theta", &c.rope_theta));
  RETURN_IF_ERROR_(ReadBool(j, "tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR_(ReadBool(j, "attention_bias", &c.attention_bias));
  RETURN_IF_ERROR_(ReadBool(j, "mlp_bias", &c.mlp_bias));
  RETURN_IF_ERROR_(ReadDouble(j, "initializer_range", &c.initializer_range));
  RETURN_IF_ERROR_(ReadTokenId(j, "bos_token_id", &c.bos_token_id));
  RETURN_IF_ERROR_(ReadTokenId(j, "eos_token_id", &c.eos_token_id));
  // transformers 5 writes `dtype`; earlier versions `torch_dtype`.
  for (const char* key : {"dtype", "torch_dtype"}) {
    auto dtype = j.find(key);
    if (dtype != j.end() && dtype->is_string()) c.torch_dtype = dtype->get<std::string>();
  }
  auto act = j.find("hidden_act");
  if (act != j.end() && !act->is_null()) {
    if (!act->is_string() || act->get<std::string>() != "silu") {
      return FieldError("hidden_act", "only \"silu\" is supported");
    }
  }
  // transformers 5 writes `rope_parameters` {rope_type, rope_theta, factor, ...}; the hub's
  // checkpoints have `rope_theta` and `rope_scaling`. Either way one set of settings results.
  auto params = j.find("rope_parameters");
  const bool new_form = params != j.end() && !params->is_null();
  if (new_form) {
    if (!params->is_object()) return FieldError("rope_parameters", "must be an object or null");
    RETURN_IF_ERROR_(ReadDouble(*params, "rope_theta", &c.rope_theta));
  }
  auto scaling = new_form ? params : j.find("rope_scaling");
  const std::string scaling_field = new_form ? "rope_parameters" : "rope_scaling";
  if (scaling != j.end() && !scaling->is_null()) {
    if (!scaling->is_object()) return FieldError(scaling_field, "must be an object or null");
    std::string type;
    for (const char* key : {"rope_type", "type"}) {
      auto t = scaling->find(key);
      if (t != scaling->end() && t->is_string()) type = t->get<std::string>();
    }
    if (type == "default" || (new_form && type.empty())) {
      // Same as no scaling.
    } else if (type == "llama3") {
      c.has_rope_scaling = true;
      RETURN_IF_ERROR_(ReadDouble(*scaling, "factor", &c.rope_scaling.factor));
      RETURN_IF_ERROR_(ReadDouble(*scaling, "low_freq_factor", &c.rope_scaling.low_freq_factor));
      RETURN_IF_ERROR_(ReadDouble(*scaling, "high_freq_factor", &c.rope_scaling.high_freq_factor));
      RETURN_IF_ERROR_(ReadInt(*scaling, "original_max_position_embeddings",
                               &c.rope_scaling.original_max_position_embeddings));
    } else {
      return FieldError(scaling_field + ".rope_type",
                        absl::StrCat("'", type, "' is not supported (supported: llama3, default)"));
    }
  }
  RETURN_IF_ERROR_(ReadSlidingWindow(j, &c));
  RETURN_IF_ERROR_(c.Validate());
  return c;
}

json LlamaConfig::ToHfJson() const {
  json j;
  j["architectures"] = {model_type == "qwen2"     ? "Qwen2ForCausalLM"
                        : model_type == "qwen3"   ? "Qwen3ForCausalLM"
                        : model_type == "mistral" ? "MistralForCausalLM"
                                                  : "LlamaForCausalLM"};
  j["model_type"] = model_type;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (has_rope_scaling) {
    j["rope_scaling"] = {
        {"rope_type", rope_scaling.rope_type},
        {"factor", rope_scaling.factor},
        {"low_freq_factor", rope_scaling.low_freq_factor},
        {"high_freq_factor", rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (model_type == "llama") {
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = mlp_bias;
  } else if (model_type == "qwen3") {
    j["attention_bias"] = attention_bias;
  }
  if (model_type == "mistral") {
    j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
  } else if (model_type == "qwen2" || model_type == "qwen3") {
    j["use_sliding_window"] = sliding_window > 0;
    j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
    json types = json::array();
    for (int64_t i = 0; i < num_hidden_layers; ++i) {
      types.push_back(LayerIsSliding(i) ? "sliding_attention" : "full_attention");
    }
    j["layer_types"] = types;
  }
  j["hidden_act"] = "silu";
  j["initializer_range"] = initializer_range;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["torch_dtype"] = torch_dtype;
  j["use_cache"] = true;
  j["attention_dropout"] = 0.0;
  return j;
}

absl::Status LlamaConfig::Validate() const {
  auto positive = [](int64_t v, const char* field) -> absl::Status {
    if (v <= 0) return FieldError(field, absl::StrCat("must be > 0, got ", v));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR_(positive(hidden_size, "hidden_size"));
  RETURN_IF_ERROR_(positive(intermediate_size, "intermediate_size"));
  RETURN_IF_ERROR_(positive(num_hidden_layers, "num_hidden_layers"));
  if (num_hidden_layers > kMaxLayers) {
    return FieldError("num_hidden_layers",
                      absl::StrCat("must be <= ", kMaxLayers, ", got ", num_hidden_layers));
  }
  RETURN_IF_ERROR_(positive(num_attention_heads, "num_attention_heads"));
  RETURN_IF_ERROR_(positive(num_key_value_heads, "num_key_value_heads"));
  RETURN_IF_ERROR_(positive(head_dim, "head_dim"));
  RETURN_IF_ERROR_(positive(vocab_size, "vocab_size"));
  if (num_attention_heads % num_key_value_heads != 0) {
    return FieldError("num_key_value_heads",
                      absl::StrCat(num_key_value_heads, " does not divide num_attention_heads (",
                                   num_attention_heads, ")"));
  }
  if (head_dim % 2 != 0) return FieldError("head_dim", "must be even for rotary embeddings");
  if (rms_norm_eps <= 0) return FieldError("rms_norm_eps", "must be > 0");
  if (rope_theta <= 0) return FieldError("rope_theta", "must be > 0");
  if (sliding_window > 0 && static_cast<int64_t>(sliding_layers.size()) != num_hidden_layers) {
    return FieldError("layer_types", "needs one entry per layer with a sliding window");
  }
  if (has_rope_scaling) {
    if (rope_scaling.factor <= 0) return FieldError("rope_scaling.factor", "must be > 0");
    if (rope_scaling.high_freq_factor <= rope_scaling.low_freq_factor) {
      return FieldError("rope_scaling.high_freq_factor", "must be > low_freq_factor");
    }
    if (rope_scaling.original_max_position_embeddings <= 0) {
      return FieldError("rope_scaling.original_max_position_embeddings", "must be > 0");
    }
  }
  return absl::OkStatus();
}

int64_t LlamaConfig::NumParameters() const {
  // In double (exact below 2^53, far beyond any real model): a config the validator accepts
  // can still describe more than 2^63 parameters (the fuzzer found one); the count saturates.
  const double h = static_cast<double>(hidden_size), d = static_cast<double>(head_dim);
  const double q = num_attention_heads * d, kv = num_key_value_heads * d;
  double attn = h * q + 2 * h * kv + q * h;
  if (attention_bias) attn += q + 2 * kv + (o_proj_bias() ? h : 0);
  double mlp = 3 * h * static_cast<double>(intermediate_size);
  if (mlp_bias) mlp += 2 * static_cast<double>(intermediate_size) + h;
  const double layer = attn + mlp + 2 * h + (qk_norm ? 2 * d : 0);
  const double embed = static_cast<double>(vocab_size) * h;
  const double total = embed * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * layer + h;
  return total >= 9.2e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(total);
}

}  // namespace lora
