// Depthwise 3 x 3 convolution on channels-last maps, for inference (zero padding 1, stride 1, dilation 1):
//
//   y[b, i, j, c] = act(bias[c] + sum_{di, dj in -1..1} w[c, di + 1, dj + 1] * x[b, i + di, j + dj, c])
//                   (+ x[b, i, j, c] with a residual)
//
// x: (batch, H, W, C) with contiguous channels (an NCHW tensor in channels-last memory, permuted); weight
// (C, 1, 3, 3), any strides; bias (C,) or None; act: silu or none; residual: x added after the activation (a
// conditional position encoding, x + conv(x)). Returns y (batch, H, W, C) contiguous float32.
//
// One task per (image, row); a chunk of channels (two vectors with AVX-512) keeps its nine tap weights in
// registers along the row, and each position accumulates its (up to) nine neighbours, applying the activation and
// the residual before the single store. The blocks' depthwise convolutions are small and memory-light (a VMamba-T
// stage-1 one at batch 1 is 2.7 M multiply-adds): what oneDNN's general convolution spends around them is most of
// their time.
#include <torch/extension.h>

#include "depthwise_cpu.h"
#include "simd.h"

namespace vssm_cpu {

namespace {

using simd::kLanes;
using simd::Vec;
// vectors of channels per chunk: its nine tap weights, bias and accumulators stay in registers (32 with AVX-512,
// 16 with AVX2)
#if defined(VSSM_SIMD_AVX512)
constexpr int kVecs = 2;
#else
constexpr int kVecs = 1;
#endif

void check_float_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "depthwise3x3 cpu: ", name, " must be float32, got ",
                   t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "depthwise3x3 cpu: ", name, " must be on the CPU, got ", t.device());
}

// x: a float32 CPU (batch, H, W, C) map with contiguous channels (a single channel's stride is never used:
// PyTorch calls such a map channels-last whatever its stride).
void check_map(const at::Tensor& x) {
  check_float_cpu(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 4 && (x.stride(3) == 1 || x.size(3) == 1), "depthwise3x3 cpu: x must be (batch, H, "
                    "W, C) with contiguous channels, got ", x.sizes(), " strides ", x.strides());
}

// rows[di]: the input row i - 1 + di of image n (nullptr outside the map), at strides sb (image) and si (row).
inline void neighbour_rows(const float* xp, int64_t n, int64_t i, int64_t H, int64_t sb, int64_t si,
                           const float* rows[3]) {
  for (int di = 0; di < 3; ++di) {
    const int64_t r = i + di - 1;
    rows[di] = r < 0 || r >= H ? nullptr : xp + n * sb + r * si;
  }
}

// fn(Chunk<V, FULL>{}, e, tail) over the channels [0, C): chunks of kVecs full vectors, then single vectors, then
// the partial last vector (tail lanes).
template <int V, bool FULL>
struct Chunk {
  static constexpr int kV = V;
  static constexpr bool kFull = FULL;
};

template <typename F>
inline void for_each_chunk(int64_t C, F&& fn) {
  int64_t e = 0;
  for (; e + kVecs * kLanes <= C; e += kVecs * kLanes) fn(Chunk<kVecs, true>{}, e, kLanes);
  for (; e + kLanes <= C; e += kLanes) fn(Chunk<1, true>{}, e, kLanes);
  if (e < C) fn(Chunk<1, false>{}, e, static_cast<int>(C - e));
}

// Vector v of a chunk of V vectors at p, the last holding `tail` lanes unless FULL.
template <int V, bool FULL>
inline Vec load_chunk(const float* p, int v, int tail) {
  return FULL || v < V - 1 ? simd::load(p + v * kLanes) : simd::load(p + v * kLanes, tail);
}

// fn(t, src) for each tap t = di * 3 + dj of output column j that reads inside the map: src, the input there at the
// chunk's first channel e (rows: neighbour_rows', sj: the column stride).
template <typename F>
inline void for_each_tap(const float* const* rows, int64_t sj, int64_t j, int64_t W, int64_t e, F&& fn) {
#pragma GCC unroll 3
  for (int di = 0; di < 3; ++di) {
    if (rows[di] == nullptr) continue;
#pragma GCC unroll 3
    for (int dj = 0; dj < 3; ++dj) {
      const int64_t col = j + dj - 1;
      if (col < 0 || col >= W) continue;
      fn(di * 3 + dj, rows[di] + col * sj + e);
    }
  }
}

// One output row's channels [e, e + V * kLanes) (the last vector holding `tail` lanes unless FULL): the chunk's nine
// tap weights and bias stay in registers while the row's positions are computed. rows[di]: the input row i - 1 + di
// (nullptr outside the map), res: the input row i (the residual) or nullptr, out: the output row.
template <int V, bool FULL>
inline void row_chunk(const float* const* rows, int64_t sj, int64_t W, const float* taps, int64_t C,
                      const float* bias, int64_t e, int tail, bool silu, const float* res, float* out) {
  auto load = [&](const float* p, int v) { return load_chunk<V, FULL>(p, v, tail); };
  Vec w[9][V], b[V];
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) w[t][v] = load(taps + t * C + e, v);
  }
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) b[v] = bias ? load(bias + e, v) : simd::zero();
  for (int64_t j = 0; j < W; ++j) {
    Vec acc[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[v] = b[v];
    for_each_tap(rows, sj, j, W, e, [&](int t, const float* src) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[v] = simd::fma(w[t][v], load(src, v), acc[v]);
    });
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      Vec y = silu ? acc[v] * simd::sigmoid(acc[v]) : acc[v];
      if (res) y = y + load(res + j * sj + e, v);
      if (FULL || v < V - 1)
        simd::store(out + j * C + e + v * kLanes, y);
      else
        simd::store(out + j * C + e + v * kLanes, y, tail);
    }
  }
}

}  // namespace

at::Tensor depthwise3x3_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            bool silu, bool residual) {
  check_map(x);
  check_float_cpu(weight, "weight");
  const int64_t batch = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == 3 &&
                        weight.size(3) == 3,
                    "depthwise3x3 cpu: weight must be (C, 1, 3, 3) with C = x's channels = ", C, ", got ",
                    weight.sizes());
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_float_cpu(*bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == C, "depthwise3x3 cpu: bias must be (C,) with C = ", C,
                      ", got ", bias->sizes());
  }
  const at::Tensor taps = weight.reshape({C, 9}).t().contiguous();  // (9, C): a tap's channels contiguous
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({batch, H, W, C}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* tp = taps.data_ptr<float>();
  const float* bp = has_bias ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t sb = x.stride(0), si = x.stride(1), sj = x.stride(2);

  at::parallel_for(0, batch * H, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t n = task / H, i = task % H;
      const float* rows[3];
      neighbour_rows(xp, n, i, H, sb, si, rows);
      const float* res = residual ? rows[1] : nullptr;
      float* out = yp + (n * H + i) * W * C;
      for_each_chunk(C, [&](auto chunk, int64_t e, int tail) {
        using Ck = decltype(chunk);
        row_chunk<Ck::kV, Ck::kFull>(rows, sj, W, tp, C, bp, e, tail, silu, res, out);
      });
    }
  });
  return y;
}

}  // namespace vssm_cpu

// ---- the weight and bias gradients (training) ----
//
//   dw[c, di + 1, dj + 1] = sum_{b, i, j} g[b, i, j, c] * x[b, i + di, j + dj, c]   (zero outside the map)
//   dbias[c] = sum_{b, i, j} g[b, i, j, c]
//
// (The input's gradient is the forward convolution of g with the taps rotated by 180 degrees: depthwise3x3_fwd.)
// The rows (image, row) are split into blocks; a block's chunk of channels keeps its ten sums in registers along
// each row and adds them into the block's partial sums, which are added up at the end (in a fixed order: the
// result does not depend on the threads).

namespace vssm_cpu {

namespace {

template <int V, bool FULL>
inline void row_chunk_grad(const float* const* rows, int64_t sj, const float* grad, int64_t sgj, int64_t W, int64_t e,
                           int tail, float* sums, int64_t C) {
  auto load = [&](const float* p, int v) { return load_chunk<V, FULL>(p, v, tail); };
  Vec acc[10][V];
#pragma GCC unroll 10
  for (int t = 0; t < 10; ++t) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[t][v] = simd::zero();
  }
  for (int64_t j = 0; j < W; ++j) {
    Vec g[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      g[v] = load(grad + j * sgj + e, v);
      acc[9][v] = acc[9][v] + g[v];
    }
    for_each_tap(rows, sj, j, W, e, [&](int t, const float* src) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[t][v] = simd::fma(g[v], load(src, v), acc[t][v]);
    });
  }
#pragma GCC unroll 10
  for (int t = 0; t < 10; ++t) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      float* dst = sums + t * C + e + v * kLanes;
      if (FULL || v < V - 1)
        simd::store(dst, simd::load(dst) + acc[t][v]);
      else
        simd::store(dst, simd::load(dst, tail) + acc[t][v], tail);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> depthwise3x3_bwd_weight(const at::Tensor& x, const at::Tensor& grad) {
  check_map(x);
  check_float_cpu(grad, "grad");
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes() && (grad.stride(3) == 1 || grad.size(3) == 1),
                    "depthwise3x3 cpu: grad must be x's shape ", x.sizes(), " with contiguous channels, got ",
                    grad.sizes(), " strides ", grad.strides());
  const int64_t batch = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t rows_total = batch * H;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(rows_total, 4 * at::get_num_threads()));
  at::Tensor partial = at::zeros({blocks, 10, C}, x.options());  // (block, tap or bias, C)
  const float* xp = x.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  float* pp = partial.data_ptr<float>();
  const int64_t sb = x.stride(0), si = x.stride(1), sj = x.stride(2);
  const int64_t gb = grad.stride(0), gi = grad.stride(1), gj = grad.stride(2);

  at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t block = lo; block < hi; ++block) {
      float* sums = pp + block * 10 * C;
      for (int64_t task = block * rows_total / blocks; task < (block + 1) * rows_total / blocks; ++task) {
        const int64_t n = task / H, i = task % H;
        const float* rows[3];
        neighbour_rows(xp, n, i, H, sb, si, rows);
        const float* g = gp + n * gb + i * gi;
        for_each_chunk(C, [&](auto chunk, int64_t e, int tail) {
          using Ck = decltype(chunk);
          row_chunk_grad<Ck::kV, Ck::kFull>(rows, sj, g, gj, W, e, tail, sums, C);
        });
      }
    }
  });
  at::Tensor total = partial.sum(0);  // (10, C), blocks added in order
  at::Tensor dweight = total.narrow(0, 0, 9).t().reshape({C, 1, 3, 3}).contiguous();
  return {dweight, total[9].contiguous()};
}

}  // namespace vssm_cpu
