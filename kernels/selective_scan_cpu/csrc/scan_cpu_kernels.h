// The kernels of the CPU selective scan (see scan_cpu_problem.h for the problem they solve).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <vector>

#include "fast_math.h"
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

// What one task needs of the channel block [d0, d0 + w) of group k.
struct Block {
  int64_t b, k, d0, c0;  // c0: global channel of d0
  int w;
  const int64_t* index;  // this (batch, group)'s positions, or null
  int64_t pos(int64_t t) const { return index ? index[t] : t; }
};

inline Block make_block(const Problem& p, int64_t b, int64_t k, int64_t blk) {
  Block s;
  s.b = b;
  s.k = k;
  s.d0 = blk * p.block;
  s.c0 = k * p.dim + s.d0;
  s.w = static_cast<int>(std::min<int64_t>(p.block, p.dim - s.d0));
  s.index = p.index ? p.index + b * p.index_b + k * p.index_k : nullptr;
  return s;
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

template <typename scalar_t, typename weight_t, int NS>
void forward_block(const Problem& p, const ForwardOut& o, const Block& s) {
  const int N = NS ? NS : static_cast<int>(p.n_state);
  const int w = s.w;
  const int64_t C_all = p.channels();
  const BlockConstants k(p, s, N);
  alignas(64) float h[kMaxState * kBlock];
  alignas(64) float uu[kBlock], dt[kBlock], x[kBlock], acc[kBlock], zz[kBlock];
  std::fill(h, h + N * kBlock, 0.0f);
  const auto* u = static_cast<const scalar_t*>(p.u) + s.b * p.su.b + s.k * p.su.k + s.d0 * p.su.d;
  const auto* delta = static_cast<const scalar_t*>(p.delta) + s.b * p.sdt.b + s.k * p.sdt.k + s.d0 * p.sdt.d;
  const auto* Bp = static_cast<const weight_t*>(p.B) + s.b * p.sB.b + (s.k / p.B_div) * p.sB.k;
  const auto* Cp = p.C ? static_cast<const weight_t*>(p.C) + s.b * p.sC.b + (s.k / p.C_div) * p.sC.k : nullptr;
  const auto* zp = p.z ? static_cast<const scalar_t*>(p.z) + s.b * p.sz.b + s.k * p.sz.k + s.d0 * p.sz.d : nullptr;
  for (int64_t t = 0; t < p.length; ++t) {
    const int64_t pos = s.pos(t);
    if (o.seg && t % p.seg_len == 0) {
      float* dst = o.seg + ((s.b * p.n_segments() + t / p.seg_len) * N) * C_all + s.c0;
      for (int n = 0; n < N; ++n) std::copy(h + n * kBlock, h + n * kBlock + w, dst + n * C_all);
    }
    load_row(u + pos * p.su.p, p.su.d, w, uu);
    load_row(delta + pos * p.sdt.p, p.sdt.d, w, dt);
    step_sizes(dt, k.bias, p.softplus, w);
#pragma omp simd
    for (int d = 0; d < w; ++d) x[d] = dt[d] * uu[d];
    for (int n = 0; n < N; ++n) {
      const float bn = to_float(Bp[pos * p.sB.p + n * p.sB.d]);
      float* hn = h + n * kBlock;
      const float* An = k.A + n * kBlock;
#pragma omp simd
      for (int d = 0; d < w; ++d) hn[d] = fast_exp(dt[d] * An[d]) * hn[d] + x[d] * bn;
    }
    if (o.states) {
      auto* st = static_cast<scalar_t*>(o.states) + ((s.b * p.length + t) * C_all + s.c0) * N;
      for (int n = 0; n < N; ++n)
        for (int d = 0; d < w; ++d) st[d * N + n] = static_cast<scalar_t>(h[n * kBlock + d]);
    }
    if (Cp) {
#pragma omp simd
      for (int d = 0; d < w; ++d) acc[d] = k.D[d] * uu[d];
      for (int n = 0; n < N; ++n) {
        const float cn = to_float(Cp[pos * p.sC.p + n * p.sC.d]);
        const float* hn = h + n * kBlock;
#pragma omp simd
        for (int d = 0; d < w; ++d) acc[d] += cn * hn[d];
      }
      if (zp) {
        load_row(zp + pos * p.sz.p, p.sz.d, w, zz);
#pragma omp simd
        for (int d = 0; d < w; ++d) acc[d] *= zz[d] * fast_sigmoid(zz[d]);
      }
      if (p.sum_groups) {
        add_row(static_cast<float*>(o.y) + s.b * o.sy.b + pos * o.sy.p + s.d0 * o.sy.d, o.sy.d, w, acc);
      } else {
        store_row(static_cast<scalar_t*>(o.y) + s.b * o.sy.b + pos * o.sy.p + s.k * o.sy.k + s.d0 * o.sy.d,
                  o.sy.d, w, acc);
      }
    }
  }
  if (o.last) {
    for (int d = 0; d < w; ++d)
      for (int n = 0; n < N; ++n) o.last[(s.b * C_all + s.c0 + d) * N + n] = h[n * kBlock + d];
  }
}

template <typename scalar_t, typename weight_t, int NS>
void backward_block(const Problem& p, const BackwardIn& in, const BackwardOut& o, const Block& s, int64_t blk,
                    std::vector<float>& work) {
  const int N = NS ? NS : static_cast<int>(p.n_state);
  const int w = s.w;
  const int64_t C_all = p.channels(), L = p.length, T = p.seg_len;
  const BlockConstants k(p, s, N);
  // per segment: states H[i][n][d], decays Ad[i][n][d], step sizes DT[i][d]
  const int64_t stride_i = N * kBlock;
  work.resize(2 * T * stride_i + T * kBlock);
  float* H = work.data();
  float* Ad = H + T * stride_i;
  float* DT = Ad + T * stride_i;
  alignas(64) float h0[kMaxState * kBlock], lam[kMaxState * kBlock], a_next[kMaxState * kBlock];
  alignas(64) float dA[kMaxState * kBlock];
  alignas(64) float uu[kBlock], raw[kBlock], dy[kBlock], zz[kBlock], ddt[kBlock], lamB[kBlock], tmp[kBlock];
  alignas(64) float dD[kBlock], dbias[kBlock];
  std::fill(lam, lam + N * kBlock, 0.0f);
  std::fill(a_next, a_next + N * kBlock, 0.0f);
  std::fill(dA, dA + N * kBlock, 0.0f);
  std::fill(dD, dD + kBlock, 0.0f);
  std::fill(dbias, dbias + kBlock, 0.0f);
  std::fill(dy, dy + kBlock, 0.0f);  // stays 0 when no gradient reaches y

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
  const auto* dstates = in.dstates ? static_cast<const scalar_t*>(in.dstates) + s.b * in.dst_b + s.c0 * in.dst_c
                                   : nullptr;
  const int64_t part = ((s.k * p.n_blocks() + blk) * p.batch + s.b) * L;  // row of dB / dC partials

  for (int64_t seg = p.n_segments() - 1; seg >= 0; --seg) {
    const int64_t t0 = seg * T, t1 = std::min(L, t0 + T);
    const float* src = in.seg + ((s.b * p.n_segments() + seg) * N) * C_all + s.c0;
    for (int n = 0; n < N; ++n) std::copy(src + n * C_all, src + n * C_all + w, h0 + n * kBlock);
    // recompute the segment's step sizes, decays and states
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t - t0, pos = s.pos(t);
      float* dt = DT + i * kBlock;
      load_row(u + pos * p.su.p, p.su.d, w, uu);
      load_row(delta + pos * p.sdt.p, p.sdt.d, w, dt);
      step_sizes(dt, k.bias, p.softplus, w);
      const float* hp = i ? H + (i - 1) * stride_i : h0;
      for (int n = 0; n < N; ++n) {
        const float bn = to_float(Bp[pos * p.sB.p + n * p.sB.d]);
        const float* An = k.A + n * kBlock;
        float* an = Ad + i * stride_i + n * kBlock;
        float* hn = H + i * stride_i + n * kBlock;
        const float* hpn = hp + n * kBlock;
#pragma omp simd
        for (int d = 0; d < w; ++d) {
          an[d] = fast_exp(dt[d] * An[d]);
          hn[d] = an[d] * hpn[d] + dt[d] * uu[d] * bn;
        }
      }
    }
    // adjoint recurrence backwards over the segment
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0, pos = s.pos(t);
      const float* dt = DT + i * kBlock;
      const float* Hi = H + i * stride_i;
      const float* hp = i ? H + (i - 1) * stride_i : h0;
      load_row(u + pos * p.su.p, p.su.d, w, uu);
      bool has_dy = false;
      if (dyp || dy_sum) {
        if (dy_sum)
          load_row(dy_sum + pos * in.sdy.p, in.sdy.d, w, dy);
        else
          load_row(dyp + pos * in.sdy.p, in.sdy.d, w, dy);
        has_dy = true;
        if (zp) {  // y = y_pre * silu(z)
          load_row(zp + pos * p.sz.p, p.sz.d, w, zz);
#pragma omp simd
          for (int d = 0; d < w; ++d) tmp[d] = k.D[d] * uu[d];
          for (int n = 0; n < N; ++n) {
            const float cn = to_float(Cp[pos * p.sC.p + n * p.sC.d]);
            const float* hn = Hi + n * kBlock;
#pragma omp simd
            for (int d = 0; d < w; ++d) tmp[d] += cn * hn[d];
          }
#pragma omp simd
          for (int d = 0; d < w; ++d) {
            const float sz = fast_sigmoid(zz[d]);
            const float g = dy[d];
            tmp[d] = g * tmp[d] * sz * (1.0f + zz[d] * (1.0f - sz));  // dz
            dy[d] = g * zz[d] * sz;
          }
          store_row(static_cast<scalar_t*>(o.dz) + s.b * o.sdz.b + pos * o.sdz.p + s.k * o.sdz.k +
                        s.d0 * o.sdz.d, o.sdz.d, w, tmp);
        }
#pragma omp simd
        for (int d = 0; d < w; ++d) dD[d] += dy[d] * uu[d];
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
        const float* anx = a_next + n * kBlock;
        const float* an = Ad + i * stride_i + n * kBlock;
        const float* hpn = hp + n * kBlock;
        const float* An = k.A + n * kBlock;
        float* dAn = dA + n * kBlock;
        if (dstates) {
          const scalar_t* g = dstates + n * in.dst_n + t * in.dst_t;
          for (int d = 0; d < w; ++d) tmp[d] = to_float(g[d * in.dst_c]);
        } else {
          std::fill(tmp, tmp + w, 0.0f);
        }
        if (in.dlast && t == L - 1) {
          for (int d = 0; d < w; ++d) tmp[d] += in.dlast[(s.b * C_all + s.c0 + d) * N + n];
        }
        float sumB = 0.0f;
#pragma omp simd reduction(+ : sumB)
        for (int d = 0; d < w; ++d) {
          const float l = tmp[d] + dy[d] * cn + anx[d] * ln[d];
          ln[d] = l;
          const float wv = l * an[d] * hpn[d];  // d loss / d a_t, times a_t
          dAn[d] += wv * dt[d];
          ddt[d] += wv * An[d];
          lamB[d] += l * bn;
          sumB += l * dt[d] * uu[d];
        }
        o.dB[(part + pos) * N + n] = sumB;
      }
      // ddt += lamB * u (times softplus' = sigmoid of the raw step size); du = lamB * dt (+ dy * D)
#pragma omp simd
      for (int d = 0; d < w; ++d) ddt[d] += lamB[d] * uu[d];
      if (p.softplus) {
        load_row(delta + pos * p.sdt.p, p.sdt.d, w, raw);
#pragma omp simd
        for (int d = 0; d < w; ++d) ddt[d] *= fast_sigmoid(raw[d] + k.bias[d]);
      }
#pragma omp simd
      for (int d = 0; d < w; ++d) {
        dbias[d] += ddt[d];
        tmp[d] = lamB[d] * dt[d] + dy[d] * k.D[d];  // dy is 0 without a y gradient
      }
      if (p.sum_groups) {
        add_row(static_cast<float*>(o.du) + s.b * o.sdu.b + pos * o.sdu.p + s.d0 * o.sdu.d, o.sdu.d, w, tmp);
      } else {
        store_row(static_cast<scalar_t*>(o.du) + s.b * o.sdu.b + pos * o.sdu.p + s.k * o.sdu.k + s.d0 * o.sdu.d,
                  o.sdu.d, w, tmp);
      }
      store_row(static_cast<scalar_t*>(o.ddelta) + s.b * o.sddt.b + pos * o.sddt.p + s.k * o.sddt.k +
                    s.d0 * o.sddt.d, o.sddt.d, w, ddt);
      std::copy(Ad + i * stride_i, Ad + i * stride_i + N * kBlock, a_next);
    }
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
  for_each_block(p, [&](const Block& s, int64_t) { forward_block<scalar_t, weight_t, NS>(p, o, s); });
}

template <typename scalar_t, typename weight_t, int NS>
void run_backward(const Problem& p, const BackwardIn& in, const BackwardOut& o) {
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
