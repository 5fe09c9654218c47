// An independent, deliberately plain Llama forward pass for tests, written from
// shared/reference/FORMATS.md: float64 throughout, explicit loops over heads and positions,
// RoPE written as pairwise rotations with scalar angles. It shares no code with the model.
#ifndef LORA_TESTS_UNIT_LLAMA_REFERENCE_H_
#define LORA_TESTS_UNIT_LLAMA_REFERENCE_H_

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace lora::testing {

struct ReferenceConfig {
  int64_t hidden, intermediate, layers, heads, kv_heads, head_dim, vocab;
  double eps, theta;
  bool tied;
  bool rope_llama3 = false;
  double factor = 8, low = 1, high = 4;
  int64_t original_max = 8192;
};

struct ReferenceAdapter {
  torch::Tensor a, b;  // [r, in], [out, r]
  double scale;
};

class ReferenceLlama {
 public:
  ReferenceLlama(ReferenceConfig c, std::map<std::string, torch::Tensor> weights,
                 std::map<std::string, ReferenceAdapter> adapters = {})
      : c_(c), adapters_(std::move(adapters)) {
    for (auto& [k, v] : weights) w_[k] = v.to(torch::kFloat64);
  }

  // ids: [T] tokens of one sequence, positions: [T]. Returns logits [T, vocab] (float64).
  torch::Tensor Forward(const std::vector<int64_t>& ids,
                        const std::vector<int64_t>& positions) const {
    const int64_t T = static_cast<int64_t>(ids.size());
    torch::Tensor x = torch::empty({T, c_.hidden}, torch::kFloat64);
    for (int64_t t = 0; t < T; ++t) x[t] = W("model.embed_tokens.weight")[ids[t]];
    for (int64_t i = 0; i < c_.layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      torch::Tensor h = Norm(x, W(p + "input_layernorm.weight"));
      torch::Tensor q = Proj(h, p + "self_attn.q_proj");
      torch::Tensor k = Proj(h, p + "self_attn.k_proj");
      torch::Tensor v = Proj(h, p + "self_attn.v_proj");
      torch::Tensor attn = torch::zeros({T, c_.heads * c_.head_dim}, torch::kFloat64);
      const int64_t group = c_.heads / c_.kv_heads;
      for (int64_t head = 0; head < c_.heads; ++head) {
        const int64_t kvh = head / group;
        torch::Tensor qh = Rope(q.narrow(1, head * c_.head_dim, c_.head_dim), positions);
        torch::Tensor kh = Rope(k.narrow(1, kvh * c_.head_dim, c_.head_dim), positions);
        torch::Tensor vh = v.narrow(1, kvh * c_.head_dim, c_.head_dim);
        for (int64_t t = 0; t < T; ++t) {
          std::vector<double> scores;
          double mx = -1e300;
          for (int64_t s = 0; s <= t; ++s) {
            double sc =
                (qh[t] * kh[s]).sum().item<double>() / std::sqrt(static_cast<double>(c_.head_dim));
            scores.push_back(sc);
            mx = std::max(mx, sc);
          }
          double z = 0;
          for (double& sc : scores) z += (sc = std::exp(sc - mx));
          torch::Tensor out = torch::zeros({c_.head_dim}, torch::kFloat64);
          for (int64_t s = 0; s <= t; ++s) out += (scores[s] / z) * vh[s];
          attn[t].narrow(0, head * c_.head_dim, c_.head_dim).copy_(out);
        }
      }
      x = x + Proj(attn, p + "self_attn.o_proj");
      torch::Tensor h2 = Norm(x, W(p + "post_attention_layernorm.weight"));
      torch::Tensor g = Proj(h2, p + "mlp.gate_proj");
      torch::Tensor u = Proj(h2, p + "mlp.up_proj");
      x = x + Proj(g / (1 + torch::exp(-g)) * u, p + "mlp.down_proj");
    }
    x = Norm(x, W("model.norm.weight"));
    if (c_.tied) return torch::matmul(x, W("model.embed_tokens.weight").t());
    return Proj(x, "lm_head");
  }

 private:
  const torch::Tensor& W(const std::string& name) const {
    auto it = w_.find(name);
    if (it == w_.end()) throw std::runtime_error("reference: missing weight " + name);
    return it->second;
  }

  torch::Tensor Norm(const torch::Tensor& x, const torch::Tensor& w) const {
    return x / torch::sqrt((x * x).mean(-1, true) + c_.eps) * w;
  }

  torch::Tensor Proj(const torch::Tensor& x, const std::string& name) const {
    torch::Tensor y = torch::matmul(x, W(name + ".weight").t());
    auto b = w_.find(name + ".bias");
    if (b != w_.end()) y = y + b->second;
    auto ad = adapters_.find(name);
    if (ad != adapters_.end()) {
      y = y +
          ad->second.scale * torch::matmul(torch::matmul(x, ad->second.a.to(torch::kFloat64).t()),
                                           ad->second.b.to(torch::kFloat64).t());
    }
    return y;
  }

  double InvFreq(int64_t j) const {
    // fp32 rounding of the base frequencies, as checkpoints' reference implementation does.
    float exponent = static_cast<float>(2 * j) / static_cast<float>(c_.head_dim);
    double f = 1.0 / static_cast<double>(std::pow(static_cast<float>(c_.theta), exponent));
    f = static_cast<float>(f);
    if (!c_.rope_llama3) return f;
    const double wavelen = 2 * M_PI / f;
    const double low_wl = c_.original_max / c_.low, high_wl = c_.original_max / c_.high;
    if (wavelen < high_wl) return f;
    if (wavelen > low_wl) return f / c_.factor;
    const double smooth = (c_.original_max / wavelen - c_.low) / (c_.high - c_.low);
    return (1 - smooth) * f / c_.factor + smooth * f;
  }

  // Pairs (j, j + d/2) rotate by angle pos * inv_freq[j].
  torch::Tensor Rope(const torch::Tensor& x, const std::vector<int64_t>& positions) const {
    const int64_t T = x.size(0), half = c_.head_dim / 2;
    torch::Tensor out = torch::empty_like(x);
    auto xa = x.contiguous();
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < half; ++j) {
        // The angle is an fp32 product, as in transformers; cos/sin are then exact-ish.
        double angle = static_cast<float>(positions[t]) * static_cast<float>(InvFreq(j));
        double a = xa[t][j].item<double>(), b = xa[t][j + half].item<double>();
        out[t][j] = a * std::cos(angle) - b * std::sin(angle);
        out[t][j + half] = b * std::cos(angle) + a * std::sin(angle);
      }
    }
    return out;
  }

  ReferenceConfig c_;
  std::map<std::string, torch::Tensor> w_;
  std::map<std::string, ReferenceAdapter> adapters_;
};

}  // namespace lora::testing

#endif  // LORA_TESTS_UNIT_LLAMA_REFERENCE_H_
