#include "common/llama_config.h"

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

}  // namespace

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
    if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
      return FieldError("model_type", absl::StrCat("'", c.model_type,
                                                   "' is not a Llama-family model (llama, "
                                                   "mistral, qwen2)"));
    }
  }
  if (c.model_type == "qwen2") c.attention_bias = true;
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
  auto dtype = j.find("torch_dtype");
  if (dtype != j.end() && dtype->is_string()) c.torch_dtype = dtype->get<std::string>();
  auto act = j.find("hidden_act");
  if (act != j.end() && !act->is_null()) {
    if (!act->is_string() || act->get<std::string>() != "silu") {
      return FieldError("hidden_act", "only \"silu\" is supported");
    }
  }
  auto scaling = j.find("rope_scaling");
  if (scaling != j.end() && !scaling->is_null()) {
    if (!scaling->is_object()) return FieldError("rope_scaling", "must be an object or null");
    std::string type;
    for (const char* key : {"rope_type", "type"}) {
      auto t = scaling->find(key);
      if (t != scaling->end() && t->is_string()) type = t->get<std::string>();
    }
    if (type == "default") {
      // Same as no scaling.
    } else if (type == "llama3") {
      c.has_rope_scaling = true;
      RETURN_IF_ERROR_(ReadDouble(*scaling, "factor", &c.rope_scaling.factor));
      RETURN_IF_ERROR_(ReadDouble(*scaling, "low_freq_factor", &c.rope_scaling.low_freq_factor));
      RETURN_IF_ERROR_(ReadDouble(*scaling, "high_freq_factor", &c.rope_scaling.high_freq_factor));
      RETURN_IF_ERROR_(ReadInt(*scaling, "original_max_position_embeddings",
                               &c.rope_scaling.original_max_position_embeddings));
    } else {
      return FieldError("rope_scaling.rope_type",
                        absl::StrCat("'", type, "' is not supported (supported: llama3, default)"));
    }
  }
  RETURN_IF_ERROR_(c.Validate());
  return c;
}

json LlamaConfig::ToHfJson() const {
  json j;
  j["architectures"] = {model_type == "qwen2"     ? "Qwen2ForCausalLM"
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
  if (model_type != "qwen2") {
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = mlp_bias;
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
  const int64_t q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  int64_t attn = hidden_size * q + 2 * hidden_size * kv + q * hidden_size;
  if (attention_bias) attn += q + 2 * kv + (o_proj_bias() ? hidden_size : 0);
  int64_t mlp = 3 * hidden_size * intermediate_size;
  if (mlp_bias) mlp += 2 * intermediate_size + hidden_size;
  int64_t layer = attn + mlp + 2 * hidden_size;
  int64_t embed = vocab_size * hidden_size;
  return embed * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * layer + hidden_size;
}

}  // namespace lora
