#include "worker/engine/model/rope.h"

#include <ATen/ATen.h>

#include <cmath>

namespace lora {

torch::Tensor RopeInverseFrequencies(const LlamaConfig& config) {
  // theta^(-2j/d) evaluated in fp32 exactly as transformers does, so positions rotate by the
  // same angles bit for bit.
  torch::Tensor exponent = torch::arange(0, config.head_dim, 2, torch::kInt64).to(torch::kFloat32) /
                           static_cast<double>(config.head_dim);
  torch::Tensor inv_freq = 1.0 / at::pow(at::Scalar(config.rope_theta), exponent);
  if (!config.has_rope_scaling) return inv_freq;

  // llama3 scaling: long wavelengths divided by `factor`, short ones kept, the band between
  // interpolated smoothly.
  const RopeScaling& s = config.rope_scaling;
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / s.low_freq_factor;
  const double high_freq_wavelen = old_len / s.high_freq_factor;
  torch::Tensor wavelen = 2.0 * M_PI / inv_freq;
  torch::Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  torch::Tensor smooth =
      (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  torch::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  torch::Tensor is_medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return torch::where(is_medium, smoothed, scaled);
}

std::pair<torch::Tensor, torch::Tensor> RopeCosSin(const torch::Tensor& inv_freq,
                                                   const torch::Tensor& position_ids,
                                                   torch::Dtype dtype) {
  torch::Tensor pos = position_ids.dim() == 1 ? position_ids.unsqueeze(0) : position_ids;
  torch::Tensor freqs = pos.to(torch::kFloat32).unsqueeze(-1) * inv_freq.to(pos.device());
  torch::Tensor emb = torch::cat({freqs, freqs}, -1).unsqueeze(2);  // [B, T, 1, d]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin) {
  return x * cos + RotateHalf(x) * sin;
}

}  // namespace lora
