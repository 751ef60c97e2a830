// Spatial-Mamba's structure-aware state fusion and observation in one pass over the states, and its gradients:
//
//   y[b, i, j, e] = C[b, i, j] * sum_t w[t, e] * h[b, clamp(i + dy_t), clamp(j + dx_t), e] + D[e] * x[b, i, j, e]
//
// h: (batch, H, W, E) states (the map the scan's states form, channels contiguous), w: (T, E) per-channel weights
// of T taps at offsets (T, 2) (dy, dx) (the dilated 3 x 3 kernels' 25 distinct taps; clamping the indices is the
// replicate padding), C: (batch, H, W) the per-position observation, x: (batch, H, W, E) the skip input, D: (E,).
// Returns y (batch, H, W, E) contiguous, float32 like its inputs. state_fusion_bwd gives dh, dw and dC for dy
// (the skip's gradients are the caller's): one task per (image, chunk of channels), which scatters the
// transposed taps into its own rows of dh.
//
// state_fusion_gated_fwd also applies the mixer's next two steps while a position's row is in cache (inference):
// out = LayerNorm(y) * silu(z), the norm over E with weight and bias, z (batch, H, W, E) the gate.
//
// One task per (batch element, row); each position gathers its T tap rows once and accumulates channels in
// chunks of four vectors (64 with AVX-512) kept in registers, so every state is read from cache
// and y is written once. PyTorch's equivalent (replicate pad, an 11 x 11 depthwise convolution of the folded
// kernel, the products and the sum) makes four passes over memory and computes the 96 zero taps too.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fast_math.h"
#include "simd.h"
#include "state_fusion_cpu.h"

namespace vssm_cpu {

namespace {

using simd::kLanes;
using simd::Vec;
constexpr int kVecs = 4;                       // vectors of accumulators per chunk, kept in registers
constexpr int64_t kChunk = kVecs * kLanes;     // channels per chunk: 64 with AVX-512, 32 with AVX2

void check(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK_VALUE(t.dim() == dims, "state_fusion cpu: ", name, " must have ", dims, " dimensions, got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "state_fusion cpu: ", name, " must be float32, got ",
                   t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "state_fusion cpu: ", name, " must be on the CPU, got ", t.device());
}

// The checks both entries share, for h, weight (T, E), offsets (T, 2), C and `other` (x or dy, shaped like h);
// returns the offsets clamped to [-H, H] x [-W, W]: any offset beyond reads the edge (replicate padding), and
// clamped first, i + dy cannot overflow.
at::Tensor checked_offsets(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                           const at::Tensor& C, const at::Tensor& other, const char* other_name) {
  check(h, "h", 4);
  check(weight, "weight", 2);
  check(C, "C", 3);
  check(other, other_name, 4);
  const int64_t H = h.size(1), W = h.size(2), E = h.size(3), T = weight.size(0);
  TORCH_CHECK_VALUE(weight.size(1) == E, "state_fusion cpu: weight must be (T, E) with E = h's channels = ", E,
                    ", got ", weight.sizes());
  TORCH_CHECK(offsets.device().is_cpu(), "state_fusion cpu: offsets must be on the CPU, got ", offsets.device());
  TORCH_CHECK_VALUE(offsets.dim() == 2 && offsets.size(0) == T && offsets.size(1) == 2 &&
                        offsets.scalar_type() == at::kLong,
                    "state_fusion cpu: offsets must be (T, 2) int64 = (", T, ", 2), got ", offsets.sizes(), " ",
                    offsets.scalar_type());
  TORCH_CHECK_VALUE(C.sizes() == h.sizes().slice(0, 3) && other.sizes() == h.sizes(), "state_fusion cpu: C must be ",
                    "(batch, H, W) and ", other_name, " (batch, H, W, E) like h ", h.sizes(), ", got ", C.sizes(),
                    " and ", other.sizes());
  TORCH_CHECK_VALUE(h.stride(3) == 1 && other.stride(3) == 1, "state_fusion cpu: h and ", other_name,
                    " must have contiguous channels");
  return at::stack({offsets.select(1, 0).clamp(-H, H), offsets.select(1, 1).clamp(-W, W)}, 1).contiguous();
}

// The rows and columns of position (i, j)'s T taps (op: clamped (T, 2) offsets).
inline void tap_cells(const int64_t* op, int64_t T, int64_t i, int64_t j, int64_t H, int64_t W, int64_t* rows,
                      int64_t* cols) {
  for (int64_t t = 0; t < T; ++t) {
    rows[t] = std::clamp<int64_t>(i + op[2 * t], 0, H - 1);
    cols[t] = std::clamp<int64_t>(j + op[2 * t + 1], 0, W - 1);
  }
}

}  // namespace

namespace {

// The gate of state_fusion_gated_fwd: z's rows, the norm's weight and bias (E,), its eps.
struct Gate {
  const float* z;
  int64_t zb, zi, zj;
  const float *weight, *bias;
  float eps;
};

// out = LayerNorm(y) * silu(z) on one position's E channels, in place (y in cache); the mean and variance in two
// passes over the row, as PyTorch's LayerNorm (biased variance). Whole vectors, then the last E % kLanes channels.
inline void norm_and_gate(float* y, const float* z, const Gate& g, int64_t E) {
  const int64_t whole = E - E % kLanes;
  Vec sums = simd::zero();
  for (int64_t e = 0; e < whole; e += kLanes) sums = sums + simd::load(y + e);
  float sum = simd::sum(sums);
  for (int64_t e = whole; e < E; ++e) sum += y[e];
  const float mean = sum / static_cast<float>(E);
  const Vec mean_vec = simd::bcast(mean);
  Vec squares_vec = simd::zero();
  for (int64_t e = 0; e < whole; e += kLanes) {
    const Vec d = simd::load(y + e) - mean_vec;
    squares_vec = simd::fma(d, d, squares_vec);
  }
  float squares = simd::sum(squares_vec);
  for (int64_t e = whole; e < E; ++e) squares += (y[e] - mean) * (y[e] - mean);
  const float rstd = 1.f / std::sqrt(squares / static_cast<float>(E) + g.eps);
  const Vec rstd_vec = simd::bcast(rstd);
  for (int64_t e = 0; e < whole; e += kLanes) {
    const Vec zv = simd::load(z + e);
    const Vec normed = simd::fma((simd::load(y + e) - mean_vec) * rstd_vec, simd::load(g.weight + e),
                                 simd::load(g.bias + e));
    simd::store(y + e, normed * (zv * simd::sigmoid(zv)));
  }
  for (int64_t e = whole; e < E; ++e) {
    const float silu = z[e] / (1.f + fast_exp(-z[e]));
    y[e] = ((y[e] - mean) * rstd * g.weight[e] + g.bias[e]) * silu;
  }
}

at::Tensor fusion_forward(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                          const at::Tensor& C, const at::Tensor& x, const at::Tensor& D, const Gate* gate) {
  const at::Tensor off = checked_offsets(h, weight, offsets, C, x, "x");
  check(D, "D", 1);
  const int64_t batch = h.size(0), H = h.size(1), W = h.size(2), E = h.size(3), T = weight.size(0);
  TORCH_CHECK_VALUE(D.size(0) == E, "state_fusion cpu: D must be (E,) with E = h's channels = ", E, ", got ",
                    D.sizes());
  const at::Tensor w = weight.contiguous(), d = D.contiguous();
  at::Tensor y = at::empty({batch, H, W, E}, h.options());
  const float *hp = h.data_ptr<float>(), *wp = w.data_ptr<float>(), *dp = d.data_ptr<float>();
  const float *cp = C.data_ptr<float>(), *xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t* op = off.data_ptr<int64_t>();
  const int64_t hb = h.stride(0), hi = h.stride(1), hj = h.stride(2);
  const int64_t xb = x.stride(0), xi = x.stride(1), xj = x.stride(2);
  const int64_t cb = C.stride(0), ci = C.stride(1), cj = C.stride(2);

  at::parallel_for(0, batch * H, 1, [&](int64_t lo, int64_t hi_task) {
    std::vector<const float*> rows(T);
    std::vector<int64_t> tap_rows(T), tap_cols(T);
    for (int64_t task = lo; task < hi_task; ++task) {
      const int64_t b = task / H, i = task % H;
      for (int64_t j = 0; j < W; ++j) {
        tap_cells(op, T, i, j, H, W, tap_rows.data(), tap_cols.data());
        for (int64_t t = 0; t < T; ++t) rows[t] = hp + b * hb + tap_rows[t] * hi + tap_cols[t] * hj;
        const float c_obs = cp[b * cb + i * ci + j * cj];
        const float* xrow = xp + b * xb + i * xi + j * xj;
        float* yrow = yp + ((b * H + i) * W + j) * E;
        int64_t e0 = 0;
        for (; e0 + kChunk <= E; e0 += kChunk) {
          Vec acc[kVecs];
#pragma GCC unroll 8
          for (int v = 0; v < kVecs; ++v) acc[v] = simd::zero();
          for (int64_t t = 0; t < T; ++t) {
            const float* src = rows[t] + e0;
            const float* wt = wp + t * E + e0;
#pragma GCC unroll 8
            for (int v = 0; v < kVecs; ++v) acc[v] = simd::fma(simd::load(wt + v * kLanes), simd::load(src + v * kLanes), acc[v]);
          }
          const Vec c_vec = simd::bcast(c_obs);
#pragma GCC unroll 8
          for (int v = 0; v < kVecs; ++v) {
            const int64_t e = e0 + v * kLanes;
            simd::store(yrow + e, simd::fma(acc[v], c_vec, simd::load(dp + e) * simd::load(xrow + e)));
          }
        }
        for (; e0 < E; ++e0) {  // the last channels, fewer than a chunk
          float acc = 0.f;
          for (int64_t t = 0; t < T; ++t) acc += wp[t * E + e0] * rows[t][e0];
          yrow[e0] = acc * c_obs + dp[e0] * xrow[e0];
        }
        if (gate != nullptr) norm_and_gate(yrow, gate->z + b * gate->zb + i * gate->zi + j * gate->zj, *gate, E);
      }
    }
  });
  return y;
}

}  // namespace

at::Tensor state_fusion_fwd(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                            const at::Tensor& C, const at::Tensor& x, const at::Tensor& D) {
  return fusion_forward(h, weight, offsets, C, x, D, nullptr);
}

at::Tensor state_fusion_gated_fwd(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                                  const at::Tensor& C, const at::Tensor& x, const at::Tensor& D, const at::Tensor& z,
                                  const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps) {
  check(h, "h", 4);
  check(z, "z", 4);
  check(norm_weight, "norm_weight", 1);
  check(norm_bias, "norm_bias", 1);
  const int64_t E = h.size(3);
  TORCH_CHECK_VALUE(z.sizes() == h.sizes() && z.stride(3) == 1, "state_fusion cpu: z must be (batch, H, W, E) like ",
                    "h ", h.sizes(), " with contiguous channels, got ", z.sizes());
  TORCH_CHECK_VALUE(norm_weight.size(0) == E && norm_bias.size(0) == E, "state_fusion cpu: norm_weight and ",
                    "norm_bias must be (E,) with E = h's channels = ", E, ", got ", norm_weight.sizes(), " and ",
                    norm_bias.sizes());
  TORCH_CHECK_VALUE(eps >= 0, "state_fusion cpu: eps must be >= 0, got ", eps);
  const at::Tensor nw = norm_weight.contiguous(), nb = norm_bias.contiguous();
  const Gate gate{z.data_ptr<float>(), z.stride(0), z.stride(1), z.stride(2), nw.data_ptr<float>(),
                  nb.data_ptr<float>(), static_cast<float>(eps)};
  return fusion_forward(h, weight, offsets, C, x, D, &gate);
}

std::vector<at::Tensor> state_fusion_bwd(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                                         const at::Tensor& C, const at::Tensor& dy) {
  const at::Tensor off = checked_offsets(h, weight, offsets, C, dy, "dy");
  const int64_t batch = h.size(0), H = h.size(1), W = h.size(2), E = h.size(3), T = weight.size(0);
  const at::Tensor w = weight.contiguous();
  const int64_t chunks = (E + kChunk - 1) / kChunk;
  at::Tensor dh = at::zeros({batch, H, W, E}, h.options());
  at::Tensor dw = at::zeros({batch, T, E}, h.options());               // per image, summed below
  at::Tensor dC = at::zeros({batch, chunks, H, W}, h.options());       // per chunk of channels, summed below
  const float *hp = h.data_ptr<float>(), *wp = w.data_ptr<float>(), *cp = C.data_ptr<float>();
  const float* gp = dy.data_ptr<float>();
  float *dhp = dh.data_ptr<float>(), *dwp = dw.data_ptr<float>(), *dcp = dC.data_ptr<float>();
  const int64_t* op = off.data_ptr<int64_t>();
  const int64_t hb = h.stride(0), hi = h.stride(1), hj = h.stride(2);
  const int64_t gb = dy.stride(0), gi = dy.stride(1), gj = dy.stride(2);
  const int64_t cb = C.stride(0), ci = C.stride(1), cj = C.stride(2);

  // One task per (image, chunk of channels): its dh rows and dw entries are its own, so the scatter of the
  // transposed taps needs no atomics.
  at::parallel_for(0, batch * chunks, 1, [&](int64_t lo, int64_t hi_task) {
    std::vector<int64_t> tap_rows(T), tap_cols(T);
    std::vector<Vec> dw_acc(T * kVecs);
    for (int64_t task = lo; task < hi_task; ++task) {
      const int64_t b = task / chunks, chunk = task % chunks, e0 = chunk * kChunk;
      const int n = static_cast<int>(std::min<int64_t>(kChunk, E - e0));
      const int nv = (n + kLanes - 1) / kLanes, tail = n - (nv - 1) * kLanes;
      auto ld = [&](const float* p, int v) { return v < nv - 1 ? simd::load(p + v * kLanes) : simd::load(p + v * kLanes, tail); };
      auto st = [&](float* p, int v, Vec a) {
        if (v < nv - 1) simd::store(p + v * kLanes, a); else simd::store(p + v * kLanes, a, tail);
      };
      std::fill(dw_acc.begin(), dw_acc.end(), simd::zero());
      for (int64_t i = 0; i < H; ++i) {
        for (int64_t j = 0; j < W; ++j) {
          tap_cells(op, T, i, j, H, W, tap_rows.data(), tap_cols.data());
          const Vec c_obs = simd::bcast(cp[b * cb + i * ci + j * cj]);
          const float* grow = gp + b * gb + i * gi + j * gj + e0;
          Vec g[kVecs], gf[kVecs], f[kVecs];
          for (int v = 0; v < nv; ++v) {
            g[v] = ld(grow, v);
            gf[v] = g[v] * c_obs;  // the gradient of the fused states h'
            f[v] = simd::zero();
          }
          for (int64_t t = 0; t < T; ++t) {
            const int64_t r = tap_rows[t], c = tap_cols[t];
            const float* src = hp + b * hb + r * hi + c * hj + e0;
            float* dst = dhp + ((b * H + r) * W + c) * E + e0;
            const float* wt = wp + t * E + e0;
            for (int v = 0; v < nv; ++v) {
              const Vec hv = ld(src, v), wv = ld(wt, v);
              f[v] = simd::fma(wv, hv, f[v]);                                 // h' again, for dC
              dw_acc[t * kVecs + v] = simd::fma(gf[v], hv, dw_acc[t * kVecs + v]);
              st(dst, v, simd::fma(wv, gf[v], ld(dst, v)));                   // the transposed tap
            }
          }
          Vec dc = simd::zero();
          for (int v = 0; v < nv; ++v) dc = simd::fma(g[v], f[v], dc);
          dcp[((b * chunks + chunk) * H + i) * W + j] = simd::sum(dc);
        }
      }
      for (int64_t t = 0; t < T; ++t)
        for (int v = 0; v < nv; ++v) st(dwp + (b * T + t) * E + e0, v, dw_acc[t * kVecs + v]);
    }
  });
  return {dh, dw.sum(0), dC.sum(1)};
}

}  // namespace vssm_cpu
