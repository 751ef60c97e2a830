// The kernels of the CPU selective scan (see scan_cpu_problem.h for the problem they solve). N = 1 with
// contiguous channels, what the entries make of every model's inputs, runs the explicitly vectorised kernels
// of scan_cpu_n1.h; the kernels here, vectorised by the compiler, run everything else.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <type_traits>
#include <vector>

#include "fast_math.h"
#include "scan_cpu_block.h"
#include "scan_cpu_n1.h"
#include "scan_cpu_problem.h"

namespace vssm_cpu {

template <typename T>
inline float to_float(T v) { return static_cast<float>(v); }

template <typename T>
inline void load_row(const T* src, int64_t stride, int w, float* dst) {
  if (stride == 1) {
#pragma omp simd
    for (int d = 0; d < w; ++d) dst[d] = to_float(src[d]);
  } else {
    for (int d = 0; d < w; ++d) dst[d] = to_float(src[d * stride]);
  }
}

template <typename T>
inline void store_row(T* dst, int64_t stride, int w, const float* src) {
  if (stride == 1) {
#pragma omp simd
    for (int d = 0; d < w; ++d) dst[d] = static_cast<T>(src[d]);
  } else {
    for (int d = 0; d < w; ++d) dst[d * stride] = static_cast<T>(src[d]);
  }
}

inline void add_row(float* dst, int64_t stride, int w, const float* src) {
  if (stride == 1) {
#pragma omp simd
    for (int d = 0; d < w; ++d) dst[d] += src[d];
  } else {
    for (int d = 0; d < w; ++d) dst[d * stride] += src[d];
  }
}

// The step sizes of one step: dt = softplus(delta + bias) (or without softplus), in place.
inline void step_sizes(float* dt, const float* bias, bool softplus, int w) {
  if (softplus) {
#pragma omp simd
    for (int d = 0; d < w; ++d) dt[d] = fast_softplus(dt[d] + bias[d]);
  } else {
#pragma omp simd
    for (int d = 0; d < w; ++d) dt[d] = dt[d] + bias[d];
  }
}

// Per-channel constants of a block: A as [n][d], bias, D.
struct BlockConstants {
  alignas(64) float A[kMaxState * kBlock];
  alignas(64) float bias[kBlock];
  alignas(64) float D[kBlock];

  BlockConstants(const Problem& p, const Block& s, int N) {
    for (int n = 0; n < N; ++n)
      for (int d = 0; d < s.w; ++d) A[n * kBlock + d] = p.A[(s.c0 + d) * N + n];
    for (int d = 0; d < s.w; ++d) {
      bias[d] = p.bias ? p.bias[s.c0 + d] : 0.0f;
      D[d] = p.D ? p.D[s.c0 + d] : 0.0f;
    }
  }
};

// Rows are read a few steps ahead of their use, so the strided rows of a task arrive from memory in time.
constexpr int64_t kPrefetch = 8;

template <typename T>
inline void prefetch_row(const T* row, int64_t stride, int w, int for_write = 0) {
  if (stride != 1) return;
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int off = 0; off < w * static_cast<int>(sizeof(T)); off += 64) {
    if (for_write)
      __builtin_prefetch(bytes + off, 1);
    else
      __builtin_prefetch(bytes + off, 0);
  }
}

// A row of w channels as float: the source itself when it is float with unit stride, else converted into buf.
template <typename T>
inline const float* read_row(const T* src, int64_t stride, int w, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    if (stride == 1) return src;
  }
  load_row(src, stride, w, buf);
  return buf;
}

// Where to compute an output row: the destination itself when it is float with unit stride, else buf (then
// written with store_row or add_row).
template <typename T>
inline float* write_row(T* dst, int64_t stride, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    if (stride == 1) return dst;
  }
  return buf;
}

// Calls fn(std::true_type) when the step sizes go through softplus, else fn(std::false_type), so the fused
// N = 1 loops are compiled once per case with no branch inside.
template <typename F>
inline void with_softplus(bool softplus, F&& fn) {
  if (softplus)
    fn(std::true_type{});
  else
    fn(std::false_type{});
}

template <typename scalar_t, typename weight_t, int NS>
void forward_block(const Problem& p, const ForwardOut& o, const Block& s) {
  const int N = NS ? NS : static_cast<int>(p.n_state);
  const int w = s.w;
  const int64_t C_all = p.channels();
  const BlockConstants k(p, s, N);
  alignas(64) float h[kMaxState * kBlock];
  alignas(64) float uu[kBlock], draw[kBlock], dt[kBlock], x[kBlock], acc[kBlock], zz[kBlock];
  std::fill(h, h + N * kBlock, 0.0f);
  const auto* u = static_cast<const scalar_t*>(p.u) + s.b * p.su.b + s.k * p.su.k + s.d0 * p.su.d;
  const auto* delta = static_cast<const scalar_t*>(p.delta) + s.b * p.sdt.b + s.k * p.sdt.k + s.d0 * p.sdt.d;
  const auto* Bp = static_cast<const weight_t*>(p.B) + s.b * p.sB.b + (s.k / p.B_div) * p.sB.k;
  const auto* Cp = p.C ? static_cast<const weight_t*>(p.C) + s.b * p.sC.b + (s.k / p.C_div) * p.sC.k : nullptr;
  const auto* zp = p.z ? static_cast<const scalar_t*>(p.z) + s.b * p.sz.b + s.k * p.sz.k + s.d0 * p.sz.d : nullptr;
  float* y_sum = p.sum_groups && Cp ? static_cast<float*>(o.y) + s.b * o.sy.b + s.d0 * o.sy.d : nullptr;
  scalar_t* y_own = !p.sum_groups && Cp ? static_cast<scalar_t*>(o.y) + s.b * o.sy.b + s.k * o.sy.k + s.d0 * o.sy.d
                                        : nullptr;
  float* seg = o.seg ? o.seg + s.b * p.n_segments() * N * C_all + s.c0 : nullptr;
  int64_t to_next_segment = 0;
  for (int64_t t = 0; t < p.length; ++t) {
    const int64_t pos = s.pos(t);
    if (t + kPrefetch < p.length) {
      const int64_t ahead = s.pos(t + kPrefetch);
      prefetch_row(u + ahead * p.su.p, p.su.d, w);
      prefetch_row(delta + ahead * p.sdt.p, p.sdt.d, w);
      if (zp) prefetch_row(zp + ahead * p.sz.p, p.sz.d, w);
      if (y_sum) prefetch_row(y_sum + ahead * o.sy.p, o.sy.d, w, 1);
      if (y_own) prefetch_row(y_own + ahead * o.sy.p, o.sy.d, w, 1);
    }
    if (seg && to_next_segment-- == 0) {  // the state entering this segment, for the backward
      for (int n = 0; n < N; ++n) std::copy(h + n * kBlock, h + n * kBlock + w, seg + n * C_all);
      seg += N * C_all;
      to_next_segment = p.seg_len - 1;
    }
    const float* ur = read_row(u + pos * p.su.p, p.su.d, w, uu);
    const float* dr = read_row(delta + pos * p.sdt.p, p.sdt.d, w, draw);
    float* out = Cp && !y_sum ? write_row(y_own + pos * o.sy.p, o.sy.d, acc) : acc;
    if constexpr (NS == 1) {  // one pass: step size, decay, state and output of every channel
      const float bn = to_float(Bp[pos * p.sB.p]);
      const float cn = Cp ? to_float(Cp[pos * p.sC.p]) : 0.0f;
      with_softplus(p.softplus, [&](auto softplus) {
#pragma omp simd
        for (int d = 0; d < w; ++d) {
          const float raw = dr[d] + k.bias[d];
          const float dtv = decltype(softplus)::value ? fast_softplus(raw) : raw;
          const float hv = fast_exp(dtv * k.A[d]) * h[d] + dtv * ur[d] * bn;
          h[d] = hv;
          out[d] = k.D[d] * ur[d] + cn * hv;
        }
      });
    } else {
      if (p.softplus) {
#pragma omp simd
        for (int d = 0; d < w; ++d) dt[d] = fast_softplus(dr[d] + k.bias[d]);
      } else {
#pragma omp simd
        for (int d = 0; d < w; ++d) dt[d] = dr[d] + k.bias[d];
      }
#pragma omp simd
      for (int d = 0; d < w; ++d) x[d] = dt[d] * ur[d];
      for (int n = 0; n < N; ++n) {
        const float bn = to_float(Bp[pos * p.sB.p + n * p.sB.d]);
        float* hn = h + n * kBlock;
        const float* An = k.A + n * kBlock;
#pragma omp simd
        for (int d = 0; d < w; ++d) hn[d] = fast_exp(dt[d] * An[d]) * hn[d] + x[d] * bn;
      }
    }
    if (o.states) {
      auto* st = static_cast<scalar_t*>(o.states) + ((s.b * p.length + t) * C_all + s.c0) * N;
      for (int n = 0; n < N; ++n)
        for (int d = 0; d < w; ++d) st[d * N + n] = static_cast<scalar_t>(h[n * kBlock + d]);
    }
    if (Cp) {
      if constexpr (NS != 1) {
#pragma omp simd
        for (int d = 0; d < w; ++d) out[d] = k.D[d] * ur[d];
        for (int n = 0; n < N; ++n) {
          const float cn = to_float(Cp[pos * p.sC.p + n * p.sC.d]);
          const float* hn = h + n * kBlock;
#pragma omp simd
          for (int d = 0; d < w; ++d) out[d] += cn * hn[d];
        }
      }
      if (zp) {
        const float* zr = read_row(zp + pos * p.sz.p, p.sz.d, w, zz);
#pragma omp simd
        for (int d = 0; d < w; ++d) out[d] *= zr[d] * fast_sigmoid(zr[d]);
      }
      if (y_sum)
        add_row(y_sum + pos * o.sy.p, o.sy.d, w, out);
      else if (out == acc)
        store_row(y_own + pos * o.sy.p, o.sy.d, w, out);
    }
  }
  if (o.last) {
    for (int d = 0; d < w; ++d)
      for (int n = 0; n < N; ++n) o.last[(s.b * C_all + s.c0 + d) * N + n] = h[n * kBlock + d];
  }
}

// One step of the adjoint recurrence at N = 1 in a single pass over the block's channels: the state's
// adjoint lambda, the gradients of the decay (dA), the step size (ddelta, d delta_bias), the input (du),
// D, and the step's sums over channels (dB, dC).
template <typename scalar_t, typename weight_t>
inline void adjoint_step_n1(const Problem& p, const BackwardIn& in, const BackwardOut& o, const Block& s,
                            const BlockConstants& k, int64_t t, int64_t pos, const float* ur, const float* dy,
                            bool has_dy, const weight_t* Cp, const weight_t* Bp, const scalar_t* dstates,
                            const float* an, const float* anx, const float* hp, const float* hi, const float* dt,
                            const float* sg, float* lam, float* dA, float* dD, float* dbias, scalar_t* ddelta,
                            float* du_sum, scalar_t* du_own, int64_t part) {
  const int w = s.w;
  const int64_t C_all = p.channels();
  alignas(64) static const float kZeros[kBlock] = {};
  alignas(64) float gbuf[kBlock], ddt_buf[kBlock], du_buf[kBlock];
  const float* gdir = kZeros;  // the gradient reaching h_t directly: dstates, and dlast at the last step
  if (dstates || (in.dlast && t == p.length - 1)) {
    std::fill(gbuf, gbuf + w, 0.0f);
    if (dstates) {
      const scalar_t* gs = dstates + t * in.dst_t;
      for (int d = 0; d < w; ++d) gbuf[d] = to_float(gs[d * in.dst_c]);
    }
    if (in.dlast && t == p.length - 1) {
      for (int d = 0; d < w; ++d) gbuf[d] += in.dlast[s.b * C_all + s.c0 + d];
    }
    gdir = gbuf;
  }
  const float cn = has_dy ? to_float(Cp[pos * p.sC.p]) : 0.0f;
  const float bn = to_float(Bp[pos * p.sB.p]);
  float* ddt_out = write_row(ddelta + pos * o.sddt.p, o.sddt.d, ddt_buf);
  float* du_out = du_sum ? du_buf : write_row(du_own + pos * o.sdu.p, o.sdu.d, du_buf);
  float sumB = 0.0f, sumC = 0.0f;
  with_softplus(p.softplus, [&](auto softplus) {
#pragma omp simd reduction(+ : sumB, sumC)
    for (int d = 0; d < w; ++d) {
      const float g = dy[d];
      const float l = gdir[d] + g * cn + anx[d] * lam[d];
      lam[d] = l;
      const float wv = l * an[d] * hp[d];  // d loss / d a_t, times a_t
      dA[d] += wv * dt[d];
      const float lb = l * bn;
      sumB += l * dt[d] * ur[d];
      sumC += g * hi[d];
      dD[d] += g * ur[d];
      float v = wv * k.A[d] + lb * ur[d];
      if constexpr (decltype(softplus)::value) v *= sg[d];
      dbias[d] += v;
      ddt_out[d] = v;
      du_out[d] = lb * dt[d] + g * k.D[d];
    }
  });
  if (has_dy)
    o.dC[part + pos] = sumC;
  else if (Cp && o.dC)
    o.dC[part + pos] = 0.0f;
  o.dB[part + pos] = sumB;
  if (ddt_out == ddt_buf) store_row(ddelta + pos * o.sddt.p, o.sddt.d, w, ddt_buf);
  if (du_sum)
    add_row(du_sum + pos * o.sdu.p, o.sdu.d, w, du_out);
  else if (du_out == du_buf)
    store_row(du_own + pos * o.sdu.p, o.sdu.d, w, du_buf);
}

template <typename scalar_t, typename weight_t, int NS>
void backward_block(const Problem& p, const BackwardIn& in, const BackwardOut& o, const Block& s, int64_t blk,
                    std::vector<float>& work) {
  const int N = NS ? NS : static_cast<int>(p.n_state);
  const int w = s.w;
  const int64_t C_all = p.channels(), L = p.length, T = p.seg_len;
  const BlockConstants k(p, s, N);
  // per segment: states H[i][n][d], decays Ad[i][n][d], step sizes DT[i][d] and their softplus' SG[i][d]
  const int64_t stride_i = N * kBlock;
  work.resize(2 * T * stride_i + 2 * T * kBlock);
  float* H = work.data();
  float* Ad = H + T * stride_i;
  float* DT = Ad + T * stride_i;
  float* SG = DT + T * kBlock;
  alignas(64) float h0[kMaxState * kBlock], lam[kMaxState * kBlock], a_next[kMaxState * kBlock];
  alignas(64) float dA[kMaxState * kBlock];
  alignas(64) float uu[kBlock], draw[kBlock], dybuf[kBlock], zz[kBlock], ddt[kBlock], lamB[kBlock], tmp[kBlock];
  alignas(64) float gbuf[kBlock], dD[kBlock], dbias[kBlock], zeros[kBlock];
  std::fill(lam, lam + N * kBlock, 0.0f);
  std::fill(a_next, a_next + N * kBlock, 0.0f);
  std::fill(dA, dA + N * kBlock, 0.0f);
  std::fill(dD, dD + kBlock, 0.0f);
  std::fill(dbias, dbias + kBlock, 0.0f);
  std::fill(zeros, zeros + kBlock, 0.0f);
  const float* anx = a_next;  // the decays of the step after the current one (0 after the last step)

  const auto* u = static_cast<const scalar_t*>(p.u) + s.b * p.su.b + s.k * p.su.k + s.d0 * p.su.d;
  const auto* delta = static_cast<const scalar_t*>(p.delta) + s.b * p.sdt.b + s.k * p.sdt.k + s.d0 * p.sdt.d;
  const auto* Bp = static_cast<const weight_t*>(p.B) + s.b * p.sB.b + (s.k / p.B_div) * p.sB.k;
  const auto* Cp = p.C ? static_cast<const weight_t*>(p.C) + s.b * p.sC.b + (s.k / p.C_div) * p.sC.k : nullptr;
  const auto* zp = p.z ? static_cast<const scalar_t*>(p.z) + s.b * p.sz.b + s.k * p.sz.k + s.d0 * p.sz.d : nullptr;
  const scalar_t* dyp = nullptr;
  const float* dy_sum = nullptr;
  if (in.dy && Cp) {
    if (p.sum_groups)
      dy_sum = static_cast<const float*>(in.dy) + s.b * in.sdy.b + s.d0 * in.sdy.d;
    else
      dyp = static_cast<const scalar_t*>(in.dy) + s.b * in.sdy.b + s.k * in.sdy.k + s.d0 * in.sdy.d;
  }
  const bool has_dy = dyp || dy_sum;
  const auto* dstates = in.dstates ? static_cast<const scalar_t*>(in.dstates) + s.b * in.dst_b + s.c0 * in.dst_c
                                   : nullptr;
  float* du_sum = p.sum_groups ? static_cast<float*>(o.du) + s.b * o.sdu.b + s.d0 * o.sdu.d : nullptr;
  scalar_t* du_own = p.sum_groups ? nullptr
                                  : static_cast<scalar_t*>(o.du) + s.b * o.sdu.b + s.k * o.sdu.k + s.d0 * o.sdu.d;
  auto* ddelta = static_cast<scalar_t*>(o.ddelta) + s.b * o.sddt.b + s.k * o.sddt.k + s.d0 * o.sddt.d;
  const int64_t part = ((s.k * p.n_blocks() + blk) * p.batch + s.b) * L;  // row of dB / dC partials

  for (int64_t seg = p.n_segments() - 1; seg >= 0; --seg) {
    const int64_t t0 = seg * T, t1 = std::min(L, t0 + T);
    const float* src = in.seg + ((s.b * p.n_segments() + seg) * N) * C_all + s.c0;
    for (int n = 0; n < N; ++n) std::copy(src + n * C_all, src + n * C_all + w, h0 + n * kBlock);
    // recompute the segment's step sizes, decays and states
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t - t0, pos = s.pos(t);
      if (t + kPrefetch < t1) {
        const int64_t ahead = s.pos(t + kPrefetch);
        prefetch_row(u + ahead * p.su.p, p.su.d, w);
        prefetch_row(delta + ahead * p.sdt.p, p.sdt.d, w);
      }
      float* dt = DT + i * kBlock;
      float* sg = SG + i * kBlock;
      const float* ur = read_row(u + pos * p.su.p, p.su.d, w, uu);
      const float* dr = read_row(delta + pos * p.sdt.p, p.sdt.d, w, draw);
      const float* hp = i ? H + (i - 1) * stride_i : h0;
      if constexpr (NS == 1) {
        const float bn = to_float(Bp[pos * p.sB.p]);
        float* an = Ad + i * stride_i;
        float* hn = H + i * stride_i;
        with_softplus(p.softplus, [&](auto softplus) {
#pragma omp simd
          for (int d = 0; d < w; ++d) {
            const float raw = dr[d] + k.bias[d];
            float dtv = raw;
            if constexpr (decltype(softplus)::value) {
              float sgv;
              fast_softplus_sigmoid(raw, dtv, sgv);
              sg[d] = sgv;
            }
            dt[d] = dtv;
            const float av = fast_exp(dtv * k.A[d]);
            an[d] = av;
            hn[d] = av * hp[d] + dtv * ur[d] * bn;
          }
        });
        continue;
      }
      if (p.softplus) {
#pragma omp simd
        for (int d = 0; d < w; ++d) fast_softplus_sigmoid(dr[d] + k.bias[d], dt[d], sg[d]);
      } else {
#pragma omp simd
        for (int d = 0; d < w; ++d) dt[d] = dr[d] + k.bias[d];
      }
      for (int n = 0; n < N; ++n) {
        const float bn = to_float(Bp[pos * p.sB.p + n * p.sB.d]);
        const float* An = k.A + n * kBlock;
        float* an = Ad + i * stride_i + n * kBlock;
        float* hn = H + i * stride_i + n * kBlock;
        const float* hpn = hp + n * kBlock;
#pragma omp simd
        for (int d = 0; d < w; ++d) {
          an[d] = fast_exp(dt[d] * An[d]);
          hn[d] = an[d] * hpn[d] + dt[d] * ur[d] * bn;
        }
      }
    }
    // adjoint recurrence backwards over the segment
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0, pos = s.pos(t);
      if (t - kPrefetch >= 0) {  // the reverse pass reads and writes rows at decreasing steps
        const int64_t ahead = s.pos(t - kPrefetch);
        if (dyp) prefetch_row(dyp + ahead * in.sdy.p, in.sdy.d, w);
        if (dy_sum) prefetch_row(dy_sum + ahead * in.sdy.p, in.sdy.d, w);
        if (zp) prefetch_row(zp + ahead * p.sz.p, p.sz.d, w);
        prefetch_row(ddelta + ahead * o.sddt.p, o.sddt.d, w, 1);
        if (du_sum) prefetch_row(du_sum + ahead * o.sdu.p, o.sdu.d, w, 1);
        if (du_own) prefetch_row(du_own + ahead * o.sdu.p, o.sdu.d, w, 1);
      }
      const float* dt = DT + i * kBlock;
      const float* Hi = H + i * stride_i;
      const float* hp = i ? H + (i - 1) * stride_i : h0;
      const float* ur = read_row(u + pos * p.su.p, p.su.d, w, uu);
      const float* dy = zeros;  // the gradient reaching y_pre (before the gate): 0 without a y gradient
      if (has_dy) {
        dy = dy_sum ? read_row(dy_sum + pos * in.sdy.p, in.sdy.d, w, dybuf)
                    : read_row(dyp + pos * in.sdy.p, in.sdy.d, w, dybuf);
        if (zp) {  // y = y_pre * silu(z)
          const float* zr = read_row(zp + pos * p.sz.p, p.sz.d, w, zz);
#pragma omp simd
          for (int d = 0; d < w; ++d) tmp[d] = k.D[d] * ur[d];
          for (int n = 0; n < N; ++n) {
            const float cn = to_float(Cp[pos * p.sC.p + n * p.sC.d]);
            const float* hn = Hi + n * kBlock;
#pragma omp simd
            for (int d = 0; d < w; ++d) tmp[d] += cn * hn[d];
          }
#pragma omp simd
          for (int d = 0; d < w; ++d) {
            const float sz = fast_sigmoid(zr[d]);
            const float g = dy[d];
            tmp[d] = g * tmp[d] * sz * (1.0f + zr[d] * (1.0f - sz));  // dz
            gbuf[d] = g * zr[d] * sz;
          }
          dy = gbuf;
          store_row(static_cast<scalar_t*>(o.dz) + s.b * o.sdz.b + pos * o.sdz.p + s.k * o.sdz.k +
                        s.d0 * o.sdz.d, o.sdz.d, w, tmp);
        }
      }
      if constexpr (NS == 1) {
        adjoint_step_n1(p, in, o, s, k, t, pos, ur, dy, has_dy, Cp, Bp, dstates, Ad + i * stride_i, anx, hp, Hi, dt,
                        SG + i * kBlock, lam, dA, dD, dbias, ddelta, du_sum, du_own, part);
        anx = Ad + i * stride_i;
        continue;
      }
      if (has_dy) {
#pragma omp simd
        for (int d = 0; d < w; ++d) dD[d] += dy[d] * ur[d];
        for (int n = 0; n < N; ++n) {  // dC: sum over the block's channels of dy * h
          const float* hn = Hi + n * kBlock;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int d = 0; d < w; ++d) sum += dy[d] * hn[d];
          o.dC[(part + pos) * N + n] = sum;
        }
      } else if (Cp && o.dC) {
        for (int n = 0; n < N; ++n) o.dC[(part + pos) * N + n] = 0.0f;
      }
      std::fill(ddt, ddt + w, 0.0f);
      std::fill(lamB, lamB + w, 0.0f);
      for (int n = 0; n < N; ++n) {
        const float cn = has_dy ? to_float(Cp[pos * p.sC.p + n * p.sC.d]) : 0.0f;
        const float bn = to_float(Bp[pos * p.sB.p + n * p.sB.d]);
        float* ln = lam + n * kBlock;
        const float* anxn = anx + n * kBlock;
        const float* an = Ad + i * stride_i + n * kBlock;
        const float* hpn = hp + n * kBlock;
        const float* An = k.A + n * kBlock;
        float* dAn = dA + n * kBlock;
        const float* g = zeros;  // the gradient reaching h_t directly: dstates, and dlast at the last step
        if (dstates || (in.dlast && t == L - 1)) {
          std::fill(tmp, tmp + w, 0.0f);
          if (dstates) {
            const scalar_t* gs = dstates + n * in.dst_n + t * in.dst_t;
            for (int d = 0; d < w; ++d) tmp[d] = to_float(gs[d * in.dst_c]);
          }
          if (in.dlast && t == L - 1) {
            for (int d = 0; d < w; ++d) tmp[d] += in.dlast[(s.b * C_all + s.c0 + d) * N + n];
          }
          g = tmp;
        }
        float sumB = 0.0f;
#pragma omp simd reduction(+ : sumB)
        for (int d = 0; d < w; ++d) {
          const float l = g[d] + dy[d] * cn + anxn[d] * ln[d];
          ln[d] = l;
          const float wv = l * an[d] * hpn[d];  // d loss / d a_t, times a_t
          dAn[d] += wv * dt[d];
          ddt[d] += wv * An[d];
          lamB[d] += l * bn;
          sumB += l * dt[d] * ur[d];
        }
        o.dB[(part + pos) * N + n] = sumB;
      }
      // ddt += lamB * u (times softplus' = sigmoid of the raw step size); du = lamB * dt + dy * D
      float* ddt_out = write_row(ddelta + pos * o.sddt.p, o.sddt.d, tmp);
      if (p.softplus) {
        const float* sg = SG + i * kBlock;
#pragma omp simd
        for (int d = 0; d < w; ++d) {
          const float v = (ddt[d] + lamB[d] * ur[d]) * sg[d];
          dbias[d] += v;
          ddt_out[d] = v;
        }
      } else {
#pragma omp simd
        for (int d = 0; d < w; ++d) {
          const float v = ddt[d] + lamB[d] * ur[d];
          dbias[d] += v;
          ddt_out[d] = v;
        }
      }
      if (ddt_out == tmp) store_row(ddelta + pos * o.sddt.p, o.sddt.d, w, tmp);
      float* du_out = du_sum ? ddt : write_row(du_own + pos * o.sdu.p, o.sdu.d, ddt);  // ddt is free now
#pragma omp simd
      for (int d = 0; d < w; ++d) du_out[d] = lamB[d] * dt[d] + dy[d] * k.D[d];
      if (du_sum)
        add_row(du_sum + pos * o.sdu.p, o.sdu.d, w, du_out);
      else if (du_out == ddt)
        store_row(du_own + pos * o.sdu.p, o.sdu.d, w, du_out);
      anx = Ad + i * stride_i;
    }
    // the next segment to recompute overwrites Ad: keep the decays of its successor step
    std::copy(Ad, Ad + N * kBlock, a_next);
    anx = a_next;
  }
  for (int d = 0; d < w; ++d) {
    for (int n = 0; n < N; ++n) o.dA[(s.b * C_all + s.c0 + d) * N + n] = dA[n * kBlock + d];
    if (o.dD) o.dD[s.b * C_all + s.c0 + d] = dD[d];
    if (o.dbias) o.dbias[s.b * C_all + s.c0 + d] = dbias[d];
  }
}

// Tasks: (batch, block) owning every group when the groups add onto one output, else (batch, group, block).
template <typename F>
void for_each_block(const Problem& p, F&& fn) {
  const int64_t nb = p.n_blocks();
  const int64_t per_batch = p.sum_groups ? nb : p.groups * nb;
  at::parallel_for(0, p.batch * per_batch, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / per_batch, r = task % per_batch;
      if (p.sum_groups) {
        for (int64_t k = 0; k < p.groups; ++k) fn(make_block(p, b, k, r), r);
      } else {
        fn(make_block(p, b, r / nb, r % nb), r % nb);
      }
    }
  });
}

template <typename scalar_t, typename weight_t, int NS>
void run_forward(const Problem& p, const ForwardOut& o) {
  if constexpr (NS == 1) {
    if (n1::forward_supported(p, o)) {
      for_each_block(p, [&](const Block& s, int64_t) { n1::forward_block<scalar_t, weight_t>(p, o, s); });
      return;
    }
  }
  TORCH_CHECK(p.rank == 0, "selective_scan cpu: step sizes from codes need the N = 1 kernels and contiguous channels");
  for_each_block(p, [&](const Block& s, int64_t) { forward_block<scalar_t, weight_t, NS>(p, o, s); });
}

template <typename scalar_t, typename weight_t, int NS>
void run_backward(const Problem& p, const BackwardIn& in, const BackwardOut& o) {
  if constexpr (NS == 1) {
    if (n1::backward_supported(p, in, o)) {
      for_each_block(p, [&](const Block& s, int64_t blk) {
        thread_local n1::Scratch scratch;
        n1::backward_block<scalar_t, weight_t>(p, in, o, s, blk, scratch);
      });
      return;
    }
  }
  for_each_block(p, [&](const Block& s, int64_t blk) {
    thread_local std::vector<float> work;
    backward_block<scalar_t, weight_t, NS>(p, in, o, s, blk, work);
  });
}

// One translation unit per input dtype instantiates these (scan_cpu_{fp32,fp16,bf16}.cpp), compiled in parallel.
#define VSSM_CPU_INSTANTIATE(scalar_t, weight_t)                                                            \
  template void run_forward<scalar_t, weight_t, 1>(const Problem&, const ForwardOut&);                      \
  template void run_forward<scalar_t, weight_t, 0>(const Problem&, const ForwardOut&);                      \
  template void run_backward<scalar_t, weight_t, 1>(const Problem&, const BackwardIn&, const BackwardOut&); \
  template void run_backward<scalar_t, weight_t, 0>(const Problem&, const BackwardIn&, const BackwardOut&);

}  // namespace vssm_cpu
