#include "worker/engine/model/fused_attention.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "worker/engine/model/cpu_kernels.h"

namespace lora {
namespace {

// exp(x) for a vector (FastExp in a loop the compiler vectorizes).
LORA_MULTIVERSION void ExpInPlace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = FastExp(x[i]);
}

// Work is done in blocks of 16 floats held in registers (one AVX-512 vector, two AVX2 ones):
// the fixed inner trip count lets the compiler keep accumulators out of memory.
constexpr int64_t kBlock = 16;

inline int64_t RoundUp(int64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

// s[j] = sum_c q[c] * kt[c * ld + j] for j in [0, RoundUp(n)); kt must be readable that far.
LORA_MULTIVERSION void RowScores(const float* q, const float* kt, int64_t ld, int64_t d, int64_t n,
                                 float* s) {
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    float acc[kBlock] = {};
    for (int64_t c = 0; c < d; ++c) {
      const float qc = q[c];
      const float* k = kt + c * ld + j0;
      for (int64_t jj = 0; jj < kBlock; ++jj) acc[jj] += qc * k[jj];
    }
    for (int64_t jj = 0; jj < kBlock; ++jj) s[j0 + jj] = acc[jj];
  }
}

// out[c] = sum_j p[j] * rows[j * d + c]; d is a multiple of kBlock.
LORA_MULTIVERSION void WeightedRowSum(const float* p, const float* rows, int64_t d, int64_t n,
                                      float* out) {
  for (int64_t c0 = 0; c0 < d; c0 += kBlock) {
    float acc[kBlock] = {};
    for (int64_t j = 0; j < n; ++j) {
      const float w = p[j];
      const float* row = rows + j * d + c0;
      for (int64_t cc = 0; cc < kBlock; ++cc) acc[cc] += w * row[cc];
    }
    for (int64_t cc = 0; cc < kBlock; ++cc) out[c0 + cc] = acc[cc];
  }
}

// Query rows are processed kRows at a time so each key/value row loaded from cache serves
// several queries.
constexpr int64_t kRows = 4;

// RowScores for kRows query rows at once (rows of q are d apart, of s ld apart): each key
// block is loaded once for all of them.
LORA_MULTIVERSION void BlockRowScores(const float* q, const float* kt, int64_t ld, int64_t d,
                                      int64_t n, float* s) {
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    float acc0[kBlock] = {}, acc1[kBlock] = {}, acc2[kBlock] = {}, acc3[kBlock] = {};
    for (int64_t c = 0; c < d; ++c) {
      const float* k = kt + c * ld + j0;
      const float q0 = q[c], q1 = q[d + c], q2 = q[2 * d + c], q3 = q[3 * d + c];
      for (int64_t jj = 0; jj < kBlock; ++jj) {
        acc0[jj] += q0 * k[jj];
        acc1[jj] += q1 * k[jj];
        acc2[jj] += q2 * k[jj];
        acc3[jj] += q3 * k[jj];
      }
    }
    for (int64_t jj = 0; jj < kBlock; ++jj) {
      s[j0 + jj] = acc0[jj];
      s[ld + j0 + jj] = acc1[jj];
      s[2 * ld + j0 + jj] = acc2[jj];
      s[3 * ld + j0 + jj] = acc3[jj];
    }
  }
}

// rows[j * d + c] += sum_r w[r][j] * x[r][c] (w rows ld apart, x rows d apart).
LORA_MULTIVERSION void BlockRankUpdate(const float* w, int64_t ld, const float* x, int64_t d,
                                       int64_t n, float* rows) {
  for (int64_t j = 0; j < n; ++j) {
    float* row = rows + j * d;
    const float w0 = w[j], w1 = w[ld + j], w2 = w[2 * ld + j], w3 = w[3 * ld + j];
    for (int64_t c = 0; c < d; ++c)
      row[c] += w0 * x[c] + w1 * x[d + c] + w2 * x[2 * d + c] + w3 * x[3 * d + c];
  }
}

LORA_MULTIVERSION float RowMax(const float* s, int64_t n) {
  float m[kBlock];
  for (int64_t jj = 0; jj < kBlock; ++jj) m[jj] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kBlock <= n; j += kBlock) {
    for (int64_t jj = 0; jj < kBlock; ++jj) m[jj] = std::max(m[jj], s[j + jj]);
  }
  float out = -std::numeric_limits<float>::infinity();
  for (; j < n; ++j) out = std::max(out, s[j]);
  for (int64_t jj = 0; jj < kBlock; ++jj) out = std::max(out, m[jj]);
  return out;
}

// s[j] = exp(s[j] - shift) for j < n; returns their sum.
LORA_MULTIVERSION float ExpShiftSum(float* s, float shift, int64_t n) {
  for (int64_t j = 0; j < n; ++j) s[j] -= shift;
  ExpInPlace(s, n);
  float acc[kBlock] = {};
  int64_t j = 0;
  for (; j + kBlock <= n; j += kBlock) {
    for (int64_t jj = 0; jj < kBlock; ++jj) acc[jj] += s[j + jj];
  }
  float out = 0.0f;
  for (; j < n; ++j) out += s[j];
  for (int64_t jj = 0; jj < kBlock; ++jj) out += acc[jj];
  return out;
}

LORA_MULTIVERSION void SoftmaxGrad(const float* p, const float* dp, float delta, int64_t n,
                                   float* ds) {
  for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (dp[j] - delta);
}

// y = x * cos + rotate_half(x) * sin (the HF rotation); identity when cos is null.
inline void Rotate(const float* x, const float* cos, const float* sin, int64_t d, float* y) {
  if (cos == nullptr) {
    std::memcpy(y, x, sizeof(float) * static_cast<size_t>(d));
    return;
  }
  const int64_t h = d / 2;
  for (int64_t c = 0; c < h; ++c) y[c] = x[c] * cos[c] - x[c + h] * sin[c];
  for (int64_t c = h; c < d; ++c) y[c] = x[c] * cos[c] + x[c - h] * sin[c];
}

// The transpose of Rotate: dx = dy * cos + rotate_half^T(dy * sin).
inline void RotateBack(const float* dy, const float* cos, const float* sin, int64_t d, float* dx) {
  if (cos == nullptr) {
    std::memcpy(dx, dy, sizeof(float) * static_cast<size_t>(d));
    return;
  }
  const int64_t h = d / 2;
  for (int64_t c = 0; c < h; ++c) dx[c] = dy[c] * cos[c] + dy[c + h] * sin[c + h];
  for (int64_t c = h; c < d; ++c) dx[c] = dy[c] * cos[c] - dy[c - h] * sin[c - h];
}

struct Dims {
  int64_t B, Tq, Tk, H, K, d, rep;
};

Dims GetDims(const torch::Tensor& q, const torch::Tensor& k) {
  Dims m{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), 0};
  m.rep = m.H / m.K;
  return m;
}

// Query rows [i0, i0 + kRows) of batch row b: each row's key range clipped to the keys
// (last < first: none; rows past Tq attend nothing) and their union [ufirst, ufirst + un),
// which the row block computes on (un <= 0: no row attends anything).
struct RowBlock {
  int64_t first[kRows], last[kRows];
  int64_t ufirst, un;
};

RowBlock KeyRanges(const int64_t* lo, const int64_t* hi, const Dims& m, int64_t b, int64_t i0) {
  RowBlock rb;
  int64_t ufirst = m.Tk, ulast = -1;
  for (int64_t r = 0; r < kRows; ++r) {
    const int64_t i = i0 + r;
    rb.first[r] = i < m.Tq ? std::max<int64_t>(lo[b * m.Tq + i], 0) : 0;
    rb.last[r] = i < m.Tq ? std::min<int64_t>(hi[b * m.Tq + i], m.Tk - 1) : -1;
    if (rb.last[r] >= rb.first[r]) {
      ufirst = std::min(ufirst, rb.first[r]);
      ulast = std::max(ulast, rb.last[r]);
    }
  }
  rb.ufirst = ufirst;
  rb.un = ulast - ufirst + 1;
  return rb;
}

// Pointer to the rope row of (batch b, position t) or null when rotation is off.
struct RopeView {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t batch_stride = 0, d = 0;
  RopeView(const torch::Tensor& c, const torch::Tensor& s, int64_t T, int64_t d_) : d(d_) {
    if (!c.defined() || c.numel() == 0) return;
    cos = c.data_ptr<float>();
    sin = s.data_ptr<float>();
    batch_stride = c.size(0) == 1 ? 0 : T * d;
  }
  const float* Cos(int64_t b, int64_t t) const {
    return cos ? cos + b * batch_stride + t * d : nullptr;
  }
  const float* Sin(int64_t b, int64_t t) const {
    return sin ? sin + b * batch_stride + t * d : nullptr;
  }
};

torch::Tensor Fp32Contiguous(const torch::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.to(torch::kFloat32).contiguous() : torch::Tensor();
}

template <typename T>
void LoadRow(const T* src, int64_t d, float* dst) {
  for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<float>(src[c]);
}

template <typename T>
void StoreRow(const float* src, int64_t d, T* dst) {
  for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<T>(src[c]);
}

template <typename T>
void ForwardImpl(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                 const RopeTables& rope, const torch::Tensor& lo, const torch::Tensor& hi,
                 torch::Tensor& out, torch::Tensor& lse) {
  const Dims m = GetDims(q, k);
  const float scale = 1.0f / std::sqrt(static_cast<float>(m.d));
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  const int64_t* lop = lo.data_ptr<int64_t>();
  const int64_t* hip = hi.data_ptr<int64_t>();
  torch::Tensor qc = Fp32Contiguous(rope.q_cos), qs = Fp32Contiguous(rope.q_sin);
  torch::Tensor kc = Fp32Contiguous(rope.k_cos), ks = Fp32Contiguous(rope.k_sin);
  const RopeView qrope(qc, qs, m.Tq, m.d), krope(kc, ks, m.Tk, m.d);
  at::parallel_for(0, m.B * m.H, 1, [&](int64_t begin, int64_t end) {
    const int64_t ld = RoundUp(m.Tk) + kBlock;  // padded so blocks may run past the last key
    std::vector<float> kt(static_cast<size_t>(m.d * ld), 0.0f), vf(static_cast<size_t>(m.Tk * m.d));
    std::vector<float> row(static_cast<size_t>(m.d)), rot(static_cast<size_t>(m.d));
    std::vector<float> o(static_cast<size_t>(kRows * m.d)), s(static_cast<size_t>(kRows * ld));
    int64_t loaded = -1;  // (b, kv head) whose K/V are in kt / vf
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / m.H, h = task % m.H, kvh = h / m.rep;
      if (loaded != b * m.K + kvh) {
        loaded = b * m.K + kvh;
        for (int64_t j = 0; j < m.Tk; ++j) {
          const int64_t off = ((b * m.Tk + j) * m.K + kvh) * m.d;
          LoadRow(kp + off, m.d, row.data());
          Rotate(row.data(), krope.Cos(b, j), krope.Sin(b, j), m.d, rot.data());
          for (int64_t c = 0; c < m.d; ++c)
            kt[static_cast<size_t>(c * ld + j)] = rot[static_cast<size_t>(c)];
          LoadRow(vp + off, m.d, vf.data() + j * m.d);
        }
      }
      for (int64_t i0 = 0; i0 < m.Tq; i0 += kRows) {
        // The block's rows attend overlapping key ranges; work on their union and zero each
        // row's probabilities outside its own range.
        const RowBlock rb = KeyRanges(lop, hip, m, b, i0);
        const int64_t* first = rb.first;
        const int64_t* last = rb.last;
        const int64_t ufirst = rb.ufirst, un = rb.un;
        for (int64_t r = 0; r < kRows; ++r) {
          const int64_t i = i0 + r;
          float* pr = s.data() + r * ld;
          if (un <= 0 || last[r] < first[r]) {
            std::fill(pr, pr + std::max<int64_t>(un, 0), 0.0f);
            if (i < m.Tq) {
              T* orow = op + ((b * m.Tq + i) * m.H + h) * m.d;
              for (int64_t c = 0; c < m.d; ++c) orow[c] = static_cast<T>(0.0f);
              lp[(b * m.H + h) * m.Tq + i] = -std::numeric_limits<float>::infinity();
            }
            continue;
          }
          LoadRow(qp + ((b * m.Tq + i) * m.H + h) * m.d, m.d, row.data());
          Rotate(row.data(), qrope.Cos(b, i), qrope.Sin(b, i), m.d, rot.data());
          for (int64_t c = 0; c < m.d; ++c) rot[static_cast<size_t>(c)] *= scale;
          RowScores(rot.data(), kt.data() + ufirst, ld, m.d, un, pr);
          const int64_t lo_off = first[r] - ufirst, n = last[r] - first[r] + 1;
          std::fill(pr, pr + lo_off, 0.0f);
          std::fill(pr + lo_off + n, pr + un, 0.0f);
          const float mx = RowMax(pr + lo_off, n);
          const float sum = ExpShiftSum(pr + lo_off, mx, n);
          const float inv = 1.0f / sum;
          for (int64_t j = 0; j < n; ++j) pr[lo_off + j] *= inv;
          lp[(b * m.H + h) * m.Tq + i] = mx + std::log(sum);
        }
        if (un <= 0) continue;
        for (int64_t r = 0; r < kRows && i0 + r < m.Tq; ++r) {
          if (last[r] < first[r]) continue;
          WeightedRowSum(s.data() + r * ld + (first[r] - ufirst), vf.data() + first[r] * m.d, m.d,
                         last[r] - first[r] + 1, o.data() + r * m.d);
          StoreRow(o.data() + r * m.d, m.d, op + ((b * m.Tq + i0 + r) * m.H + h) * m.d);
        }
      }
    }
  });
}

template <typename T>
void BackwardImpl(const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
                  const torch::Tensor& v, const RopeTables& rope, const torch::Tensor& lo,
                  const torch::Tensor& hi, const torch::Tensor& lse, const torch::Tensor& delta,
                  torch::Tensor& dq, torch::Tensor& dk, torch::Tensor& dv) {
  const Dims m = GetDims(q, k);
  const float scale = 1.0f / std::sqrt(static_cast<float>(m.d));
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* gp = dout.data_ptr<T>();
  T* dqp = dq.data_ptr<T>();
  T* dkp = dk.data_ptr<T>();
  T* dvp = dv.data_ptr<T>();
  const float* lp = lse.data_ptr<float>();
  const float* deltap = delta.data_ptr<float>();
  const int64_t* lop = lo.data_ptr<int64_t>();
  const int64_t* hip = hi.data_ptr<int64_t>();
  torch::Tensor qc = Fp32Contiguous(rope.q_cos), qs = Fp32Contiguous(rope.q_sin);
  torch::Tensor kc = Fp32Contiguous(rope.k_cos), ks = Fp32Contiguous(rope.k_sin);
  const RopeView qrope(qc, qs, m.Tq, m.d), krope(kc, ks, m.Tk, m.d);
  // One task per (batch, kv head): it owns dK / dV of that head, so no two threads write them.
  at::parallel_for(0, m.B * m.K, 1, [&](int64_t begin, int64_t end) {
    const size_t tk = static_cast<size_t>(m.Tk * m.d);
    const int64_t ld = RoundUp(m.Tk) + kBlock;
    std::vector<float> kr(tk), dk_acc(tk), dv_acc(tk);
    std::vector<float> kt(static_cast<size_t>(m.d * ld), 0.0f),
        vt(static_cast<size_t>(m.d * ld), 0.0f);
    std::vector<float> row(static_cast<size_t>(m.d)), qsc(static_cast<size_t>(kRows * m.d)),
        g(static_cast<size_t>(kRows * m.d));
    std::vector<float> dqr(static_cast<size_t>(m.d)), tmp(static_cast<size_t>(m.d));
    std::vector<float> p(static_cast<size_t>(kRows * ld)), dp(static_cast<size_t>(kRows * ld));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / m.K, kvh = task % m.K;
      for (int64_t j = 0; j < m.Tk; ++j) {
        const int64_t off = ((b * m.Tk + j) * m.K + kvh) * m.d;
        LoadRow(kp + off, m.d, row.data());
        Rotate(row.data(), krope.Cos(b, j), krope.Sin(b, j), m.d, kr.data() + j * m.d);
        LoadRow(vp + off, m.d, row.data());
        for (int64_t c = 0; c < m.d; ++c) {
          kt[static_cast<size_t>(c * ld + j)] = kr[static_cast<size_t>(j * m.d + c)];
          vt[static_cast<size_t>(c * ld + j)] = row[static_cast<size_t>(c)];
        }
      }
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
      for (int64_t rh = 0; rh < m.rep; ++rh) {
        const int64_t h = kvh * m.rep + rh;
        for (int64_t i0 = 0; i0 < m.Tq; i0 += kRows) {
          const RowBlock rb = KeyRanges(lop, hip, m, b, i0);
          const int64_t* first = rb.first;
          const int64_t* last = rb.last;
          const int64_t ufirst = rb.ufirst, un = rb.un;
          if (un <= 0) {
            for (int64_t r = 0; r < kRows && i0 + r < m.Tq; ++r) {
              T* dqrow = dqp + ((b * m.Tq + i0 + r) * m.H + h) * m.d;
              for (int64_t c = 0; c < m.d; ++c) dqrow[c] = static_cast<T>(0.0f);
            }
            continue;
          }
          // Phase 1: the block's (rotated, scaled) queries and output gradients.
          for (int64_t r = 0; r < kRows; ++r) {
            const int64_t i = i0 + r;
            float* qr = qsc.data() + r * m.d;
            float* gr = g.data() + r * m.d;
            if (last[r] < first[r]) {
              std::fill(qr, qr + m.d, 0.0f);
              std::fill(gr, gr + m.d, 0.0f);
              continue;
            }
            LoadRow(qp + ((b * m.Tq + i) * m.H + h) * m.d, m.d, row.data());
            Rotate(row.data(), qrope.Cos(b, i), qrope.Sin(b, i), m.d, qr);
            for (int64_t c = 0; c < m.d; ++c) qr[c] *= scale;
            LoadRow(gp + ((b * m.Tq + i) * m.H + h) * m.d, m.d, gr);
          }
          // Phase 2: scores and dO.V for all rows over the union of their ranges.
          BlockRowScores(qsc.data(), kt.data() + ufirst, ld, m.d, un, p.data());
          BlockRowScores(g.data(), vt.data() + ufirst, ld, m.d, un, dp.data());
          // Phase 3: per row, probabilities, dS and dQ; zero weights outside each row's range.
          for (int64_t r = 0; r < kRows; ++r) {
            const int64_t i = i0 + r;
            float* pr = p.data() + r * ld;
            float* dsr = dp.data() + r * ld;
            if (last[r] < first[r]) {
              std::fill(pr, pr + un, 0.0f);
              std::fill(dsr, dsr + un, 0.0f);
              if (i < m.Tq) {
                T* dqrow = dqp + ((b * m.Tq + i) * m.H + h) * m.d;
                for (int64_t c = 0; c < m.d; ++c) dqrow[c] = static_cast<T>(0.0f);
              }
              continue;
            }
            const float row_lse = lp[(b * m.H + h) * m.Tq + i];
            const float row_delta = deltap[(b * m.H + h) * m.Tq + i];
            const int64_t lo_off = first[r] - ufirst, n = last[r] - first[r] + 1;
            ExpShiftSum(pr + lo_off, row_lse, n);
            SoftmaxGrad(pr + lo_off, dsr + lo_off, row_delta, n, dsr + lo_off);
            std::fill(pr, pr + lo_off, 0.0f);
            std::fill(pr + lo_off + n, pr + un, 0.0f);
            std::fill(dsr, dsr + lo_off, 0.0f);
            std::fill(dsr + lo_off + n, dsr + un, 0.0f);
            WeightedRowSum(dsr + lo_off, kr.data() + first[r] * m.d, m.d, n, dqr.data());
            for (int64_t c = 0; c < m.d; ++c) dqr[static_cast<size_t>(c)] *= scale;
            RotateBack(dqr.data(), qrope.Cos(b, i), qrope.Sin(b, i), m.d, tmp.data());
            StoreRow(tmp.data(), m.d, dqp + ((b * m.Tq + i) * m.H + h) * m.d);
          }
          BlockRankUpdate(dp.data(), ld, qsc.data(), m.d, un, dk_acc.data() + ufirst * m.d);
          BlockRankUpdate(p.data(), ld, g.data(), m.d, un, dv_acc.data() + ufirst * m.d);
        }
      }
      for (int64_t j = 0; j < m.Tk; ++j) {
        const int64_t off = ((b * m.Tk + j) * m.K + kvh) * m.d;
        RotateBack(dk_acc.data() + j * m.d, krope.Cos(b, j), krope.Sin(b, j), m.d, tmp.data());
        StoreRow(tmp.data(), m.d, dkp + off);
        StoreRow(dv_acc.data() + j * m.d, m.d, dvp + off);
      }
    }
  });
}

void CheckInputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                 const torch::Tensor& lo, const torch::Tensor& hi) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "FusedAttention: q, k, v must be [B, T, heads, d]");
  TORCH_CHECK(k.sizes() == v.sizes(), "FusedAttention: k and v shapes differ");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3),
              "FusedAttention: batch or head_dim mismatch");
  TORCH_CHECK(q.size(2) % k.size(2) == 0, "FusedAttention: kv heads must divide query heads");
  TORCH_CHECK(q.size(3) % 16 == 0, "FusedAttention: head_dim must be a multiple of 16");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "FusedAttention: dtype mismatch");
  TORCH_CHECK(lo.scalar_type() == torch::kInt64 && hi.scalar_type() == torch::kInt64,
              "FusedAttention: lo/hi must be int64");
  TORCH_CHECK(lo.size(0) == q.size(0) && lo.size(1) == q.size(1),
              "FusedAttention: lo/hi must be [B, Tq]");
}

class FusedAttentionFunction : public torch::autograd::Function<FusedAttentionFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                                torch::Tensor q_cos, torch::Tensor q_sin,
                                                torch::Tensor k_cos, torch::Tensor k_sin,
                                                torch::Tensor lo, torch::Tensor hi) {
    RopeTables rope{q_cos, q_sin, k_cos, k_sin};
    auto [out, lse] = FusedAttentionForward(q, k, v, rope, lo, hi);
    ctx->save_for_backward({q, k, v, q_cos, q_sin, k_cos, k_sin, lo, hi, out, lse});
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    torch::Tensor dout = grads[0].contiguous();
    torch::Tensor delta = (dout.to(torch::kFloat32) * s[9].to(torch::kFloat32))
                              .sum(-1)
                              .permute({0, 2, 1})
                              .contiguous();
    RopeTables rope{s[3], s[4], s[5], s[6]};
    auto [dq, dk, dv] =
        FusedAttentionBackward(dout, s[0], s[1], s[2], rope, s[7], s[8], s[10], delta);
    return {dq,
            dk,
            dv,
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> FusedAttentionForward(
    const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
    const RopeTables& rope, const torch::Tensor& lo_in, const torch::Tensor& hi_in) {
  CheckInputs(q_in, k_in, v_in, lo_in, hi_in);
  torch::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  torch::Tensor lo = lo_in.contiguous(), hi = hi_in.contiguous();
  torch::Tensor out = torch::empty_like(q);
  torch::Tensor lse =
      torch::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(torch::kFloat32));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(),
                                  "FusedAttentionForward",
                                  [&] { ForwardImpl<scalar_t>(q, k, v, rope, lo, hi, out, lse); });
  return {out, lse};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> FusedAttentionBackward(
    const torch::Tensor& dout_in, const torch::Tensor& q_in, const torch::Tensor& k_in,
    const torch::Tensor& v_in, const RopeTables& rope, const torch::Tensor& lo_in,
    const torch::Tensor& hi_in, const torch::Tensor& lse, const torch::Tensor& delta) {
  CheckInputs(q_in, k_in, v_in, lo_in, hi_in);
  torch::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  torch::Tensor dout = dout_in.to(q.scalar_type()).contiguous();
  torch::Tensor lo = lo_in.contiguous(), hi = hi_in.contiguous();
  torch::Tensor dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
  torch::Tensor lse_c = lse.contiguous(), delta_c = delta.to(torch::kFloat32).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, q.scalar_type(), "FusedAttentionBackward",
      [&] { BackwardImpl<scalar_t>(dout, q, k, v, rope, lo, hi, lse_c, delta_c, dq, dk, dv); });
  return {dq, dk, dv};
}

std::tuple<torch::Tensor, torch::Tensor> FusedAttention(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const RopeTables& rope,
    const torch::Tensor& lo, const torch::Tensor& hi) {
  auto outs = FusedAttentionFunction::apply(q, k, v, rope.q_cos, rope.q_sin, rope.k_cos, rope.k_sin,
                                            lo, hi);
  return {outs[0], outs[1]};
}

}  // namespace lora
