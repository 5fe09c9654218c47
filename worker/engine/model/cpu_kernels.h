// Building blocks of the fused CPU kernels (attention, SwiGLU): per-ISA clones of the row
// loops and an exp the compiler can vectorize.
#ifndef LORA_WORKER_ENGINE_MODEL_CPU_KERNELS_H_
#define LORA_WORKER_ENGINE_MODEL_CPU_KERNELS_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

// Row kernels are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one at start.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LORA_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LORA_MULTIVERSION
#endif

namespace lora {

// exp(v), Cephes-style: 2^n * p(r), |relative error| < 2e-7, v clamped to fp32's range. Plain
// arithmetic (no libm call), so loops calling it vectorize.
inline float FastExp(float v) {
  v = std::min(std::max(v, -87.3f), 88.3f);
  // Round to nearest by adding and removing 1.5 * 2^23.
  const float t = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = v - t * 0.693359375f + t * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(t) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_CPU_KERNELS_H_
