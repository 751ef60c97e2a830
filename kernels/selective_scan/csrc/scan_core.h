// The selective scan, one (batch, channel, segment) at a time: the per-thread work of the CUDA kernels,
// compiled unchanged for the GPU (nvcc) and for the CPU emulator the tests run (any C++17 compiler).
//
//   delta'_t = softplus(delta_t + bias) (or delta_t + bias)
//   h_t = exp(delta'_t A) h_{t-1} + delta'_t B_t u_t,   y_t = (C_t . h_t + D u_t) * silu(z_t)
//
// Work is split into tiles of kTile steps (the forward saves the state entering each tile, which the
// backward recomputes the tile's states from) and segments of whole tiles, scanned in parallel:
//   forward:  segment_end (each segment's end state from zero and its sum of delta')
//             -> segment_prefix (the state entering each segment) -> segment (outputs, from its true start)
//   backward: the same in reverse time for the gradient g_t = dL/dh_t, then per tile a forward
//             recomputation of h and a reverse sweep producing every gradient.
// With one segment the first two passes are skipped.
#pragma once
#include <cmath>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "scan_params.h"

#ifdef __CUDACC__
#define VSSM_HD __host__ __device__ __forceinline__
#else
#define VSSM_HD inline
#endif

namespace vssm_scan {

template <typename T>
VSSM_HD float load(const void* base, int64_t offset) {
  return static_cast<float>(static_cast<const T*>(base)[offset]);
}

template <typename T>
VSSM_HD void store(void* base, int64_t offset, float value) {
  static_cast<T*>(base)[offset] = static_cast<T>(value);
}

VSSM_HD float softplus(float x) { return x <= 20.f ? log1pf(expf(x)) : x; }  // torch's threshold
VSSM_HD float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// Segment s covers tiles [s * seg_tiles, (s + 1) * seg_tiles), i.e. steps [t0, t1).
VSSM_HD void segment_bounds(const ScanParams& p, int s, int& t0, int& t1) {
  t0 = s * p.seg_tiles * p.tile;
  t1 = t0 + p.seg_tiles * p.tile;
  if (t1 > p.length) t1 = p.length;
}

// Reads of one (batch, channel): the step size and input of step t, B and C of state n at step t.
template <typename input_t, typename weight_t>
struct Channel {
  const ScanParams& p;
  int b, c, group;
  float bias, D;

  VSSM_HD Channel(const ScanParams& params, int b_, int c_) : p(params), b(b_), c(c_) {
    group = c / p.dim_per_group;
    bias = p.has_bias ? p.bias[c] : 0.f;
    D = p.has_D ? p.D[c] : 0.f;
  }
  VSSM_HD float raw_delta(int t) const {
    return load<input_t>(p.delta, b * p.delta_sb + c * p.delta_sc + t * p.delta_st) + bias;
  }
  VSSM_HD float step(float raw) const { return p.softplus ? softplus(raw) : raw; }
  VSSM_HD float u(int t) const { return load<input_t>(p.u, b * p.u_sb + c * p.u_sc + t * p.u_st); }
  VSSM_HD float z(int t) const { return load<input_t>(p.z, b * p.z_sb + c * p.z_sc + t * p.z_st); }
  VSSM_HD float B(int n, int t) const {
    return load<weight_t>(p.B, b * p.B_sb + group * p.B_sg + n * p.B_sn + t * p.B_st);
  }
  VSSM_HD float C(int n, int t) const {
    return load<weight_t>(p.C, b * p.C_sb + group * p.C_sg + n * p.C_sn + t * p.C_st);
  }
  VSSM_HD float A(int n) const { return p.A[c * p.n_state + n]; }
  VSSM_HD int64_t carry(int s) const { return (static_cast<int64_t>(b) * p.dim + c) * p.n_seg + s; }
  VSSM_HD int64_t tile_state(int k) const { return ((static_cast<int64_t>(b) * p.dim + c) * p.n_tiles + k) * p.n_state; }
};

// ---- forward -------------------------------------------------------------------------------------------

// Pass 1: the state at the end of segment s starting from zero, and the segment's sum of delta'.
template <typename input_t, typename weight_t, int kN>
VSSM_HD void forward_segment_end(const ScanParams& p, int b, int c, int s) {
  Channel<input_t, weight_t> ch(p, b, c);
  int t0, t1;
  segment_bounds(p, s, t0, t1);
  float h[kN], A[kN];
  for (int n = 0; n < kN; ++n) { h[n] = 0.f; A[n] = n < p.n_state ? ch.A(n) : 0.f; }
  float sum = 0.f;
  for (int t = t0; t < t1; ++t) {
    const float d = ch.step(ch.raw_delta(t)), du = d * ch.u(t);
    sum += d;
    for (int n = 0; n < kN; ++n)
      if (n < p.n_state) h[n] = expf(d * A[n]) * h[n] + du * ch.B(n, t);
  }
  for (int n = 0; n < p.n_state; ++n) p.seg_h[ch.carry(s) * p.n_state + n] = h[n];
  p.seg_sum[ch.carry(s)] = sum;
}

// Pass 2: replace each segment's end state by the true state entering it.
template <int kN>
VSSM_HD void forward_segment_prefix(const ScanParams& p, int b, int c) {
  const int64_t base = (static_cast<int64_t>(b) * p.dim + c) * p.n_seg;
  float h[kN];
  for (int n = 0; n < kN; ++n) h[n] = 0.f;
  for (int s = 0; s < p.n_seg; ++s) {
    const float sum = p.seg_sum[base + s];
    for (int n = 0; n < p.n_state; ++n) {
      const float end = p.seg_h[(base + s) * p.n_state + n];
      p.seg_h[(base + s) * p.n_state + n] = h[n];
      h[n] = expf(p.A[c * p.n_state + n] * sum) * h[n] + end;
    }
  }
}

// Pass 3: outputs of segment s from the state entering it; saves the state entering each tile.
template <typename input_t, typename weight_t, int kN>
VSSM_HD void forward_segment(const ScanParams& p, int b, int c, int s) {
  Channel<input_t, weight_t> ch(p, b, c);
  int t0, t1;
  segment_bounds(p, s, t0, t1);
  float h[kN], A[kN];
  for (int n = 0; n < kN; ++n) {
    A[n] = n < p.n_state ? ch.A(n) : 0.f;
    h[n] = (p.n_seg > 1 && n < p.n_state) ? p.seg_h[ch.carry(s) * p.n_state + n] : 0.f;
  }
  for (int t = t0; t < t1; ++t) {
    if (t % p.tile == 0)  // over kN (unrolled, h stays in registers), not the runtime n_state
      for (int n = 0; n < kN; ++n)
        if (n < p.n_state) p.tile_h[ch.tile_state(t / p.tile) + n] = h[n];
    const float uv = ch.u(t), d = ch.step(ch.raw_delta(t)), du = d * uv;
    float y = 0.f;
    for (int n = 0; n < kN; ++n) {
      if (n < p.n_state) {
        h[n] = expf(d * A[n]) * h[n] + du * ch.B(n, t);
        if (p.has_C) y += ch.C(n, t) * h[n];
        if (p.return_states)
          store<input_t>(p.states, b * p.states_sb + c * p.states_sc + n * p.states_sn + t * p.states_st, h[n]);
      }
    }
    if (p.has_C) {
      if (p.has_D) y += ch.D * uv;
      if (p.has_z) {
        const float zv = ch.z(t);
        y *= zv * sigmoid(zv);
      }
      store<input_t>(p.out, b * p.out_sb + c * p.out_sc + t * p.out_st, y);
    }
  }
  if (p.return_last && t1 == p.length)
    for (int n = 0; n < kN; ++n)
      if (n < p.n_state) p.last[(static_cast<int64_t>(b) * p.dim + c) * p.n_state + n] = h[n];
}

// ---- backward ------------------------------------------------------------------------------------------
//
// g_t = dL/dh_t = q_t + exp(delta'_{t+1} A) g_{t+1},  q_t = C_t dy'_t + dstates_t (+ dlast at t = L - 1),
// dy'_t = dy_t silu(z_t). Per step: du = D dy' + sum_n g delta' B; d delta' = sum_n g (A e h_{t-1} + B u)
// with e = exp(delta' A); dA += g delta' e h_{t-1}; dB += g delta' u; dC += dy' h_t; dD += dy' u;
// dz = dy (C.h + D u) silu'(z); d delta = d delta' sigmoid(delta + bias) under softplus; dbias += d delta.

template <typename input_t, typename weight_t>
struct Gradients {  // the upstream gradient of one (batch, channel)
  const ScanParams& p;
  const Channel<input_t, weight_t>& ch;
  VSSM_HD Gradients(const ScanParams& params, const Channel<input_t, weight_t>& channel) : p(params), ch(channel) {}
  VSSM_HD float dout(int t) const {
    return p.has_C ? load<input_t>(p.dout, ch.b * p.dout_sb + ch.c * p.dout_sc + t * p.dout_st) : 0.f;
  }
  // q_t[n] given the gated output gradient dy'_t
  VSSM_HD float q(int n, int t, float dy_gated) const {
    float v = p.has_C ? dy_gated * ch.C(n, t) : 0.f;
    if (p.has_dstates)
      v += load<input_t>(p.dstates, ch.b * p.dstates_sb + ch.c * p.dstates_sc + n * p.dstates_sn + t * p.dstates_st);
    if (p.has_dlast && t == p.length - 1) v += p.dlast[(static_cast<int64_t>(ch.b) * p.dim + ch.c) * p.n_state + n];
    return v;
  }
  VSSM_HD float gated(int t, float dy) const {
    if (!p.has_z) return dy;
    const float zv = ch.z(t);
    return dy * zv * sigmoid(zv);
  }
};

// Pass 1: g at the first step of segment s with zero gradient entering from later steps, and the sum of
// delta' over steps (t0, t1] (the decay from the segment's first step to the next segment's first step).
template <typename input_t, typename weight_t, int kN>
VSSM_HD void backward_segment_end(const ScanParams& p, int b, int c, int s) {
  Channel<input_t, weight_t> ch(p, b, c);
  Gradients<input_t, weight_t> grad(p, ch);
  int t0, t1;
  segment_bounds(p, s, t0, t1);
  float g[kN], A[kN];
  for (int n = 0; n < kN; ++n) { g[n] = 0.f; A[n] = n < p.n_state ? ch.A(n) : 0.f; }
  float sum = t1 < p.length ? ch.step(ch.raw_delta(t1)) : 0.f, d_next = 0.f;
  for (int t = t1 - 1; t >= t0; --t) {
    const float dy = grad.gated(t, grad.dout(t));
    for (int n = 0; n < kN; ++n)
      if (n < p.n_state) g[n] = grad.q(n, t, dy) + expf(d_next * A[n]) * g[n];
    d_next = ch.step(ch.raw_delta(t));
    if (t > t0) sum += d_next;
  }
  for (int n = 0; n < p.n_state; ++n) p.seg_h[ch.carry(s) * p.n_state + n] = g[n];
  p.seg_sum[ch.carry(s)] = sum;
}

// Pass 2: replace each segment's local g by the true g at the first step of the NEXT segment
// (zero for the last), the gradient that enters the segment from later steps.
template <int kN>
VSSM_HD void backward_segment_suffix(const ScanParams& p, int b, int c) {
  const int64_t base = (static_cast<int64_t>(b) * p.dim + c) * p.n_seg;
  float g[kN];
  for (int n = 0; n < kN; ++n) g[n] = 0.f;
  for (int s = p.n_seg - 1; s >= 0; --s) {
    const float sum = p.seg_sum[base + s];
    for (int n = 0; n < p.n_state; ++n) {
      const float local = p.seg_h[(base + s) * p.n_state + n];
      p.seg_h[(base + s) * p.n_state + n] = g[n];
      g[n] = local + expf(p.A[c * p.n_state + n] * sum) * g[n];
    }
  }
}

// Pass 3: every gradient of segment s. `Reduce` sums dB and dC over the channels of a group
// (reduce.add(buffer, offset, value)) and dA, dD, dbias over batch and time (reduce.add_channel).
template <typename input_t, typename weight_t, int kN, int kTile, typename Reduce>
VSSM_HD void backward_segment(const ScanParams& p, int b, int c, int s, bool valid, Reduce& reduce) {
  Channel<input_t, weight_t> ch(p, b, c);
  Gradients<input_t, weight_t> grad(p, ch);
  int t0, t1;
  segment_bounds(p, s, t0, t1);
  float g[kN], A[kN], dA[kN], hs[kTile][kN], h_in[kN];
  for (int n = 0; n < kN; ++n) {
    A[n] = n < p.n_state ? ch.A(n) : 0.f;
    g[n] = (p.n_seg > 1 && n < p.n_state) ? p.seg_h[ch.carry(s) * p.n_state + n] : 0.f;
    dA[n] = 0.f;
  }
  float dD = 0.f, dbias = 0.f;
  float d_next = t1 < p.length ? ch.step(ch.raw_delta(t1)) : 0.f;
  const int64_t bc_base = (static_cast<int64_t>(b) * p.n_groups + ch.group) * p.n_state;
  const int first_tile = t0 / kTile, last_tile = (t1 - 1) / kTile;
  for (int k = last_tile; k >= first_tile; --k) {
    const int ta = k * kTile, tb = (ta + kTile < t1) ? ta + kTile : t1;
    // the tile's states h_t, recomputed from the saved state entering it
    for (int n = 0; n < kN; ++n) h_in[n] = n < p.n_state ? p.tile_h[ch.tile_state(k) + n] : 0.f;
    for (int t = ta; t < tb; ++t) {
      const float d = ch.step(ch.raw_delta(t)), du = d * ch.u(t);
      for (int n = 0; n < kN; ++n) {
        const float prev = t == ta ? h_in[n] : hs[t - ta - 1][n];
        hs[t - ta][n] = n < p.n_state ? expf(d * A[n]) * prev + du * ch.B(n, t) : 0.f;
      }
    }
    for (int t = tb - 1; t >= ta; --t) {
      const int i = t - ta;
      const float uv = ch.u(t), raw = ch.raw_delta(t), d = ch.step(raw);
      const float dy = grad.dout(t);
      float dy_gated = dy;
      if (p.has_z) {
        const float zv = ch.z(t), sg = sigmoid(zv);
        float y_pre = p.has_D ? ch.D * uv : 0.f;
        for (int n = 0; n < kN; ++n)
          if (n < p.n_state) y_pre += ch.C(n, t) * hs[i][n];
        if (valid) store<input_t>(p.dz, b * p.dz_sb + c * p.dz_sc + t * p.dz_st, dy * y_pre * sg * (1.f + zv * (1.f - sg)));
        dy_gated = dy * zv * sg;
      }
      float du = p.has_D ? ch.D * dy_gated : 0.f, dd = 0.f;
      for (int n = 0; n < kN; ++n) {
        if (n < p.n_state) {
          g[n] = grad.q(n, t, dy_gated) + expf(d_next * A[n]) * g[n];
          const float e = expf(d * A[n]), Bv = ch.B(n, t), prev = i > 0 ? hs[i - 1][n] : h_in[n];
          du += g[n] * d * Bv;
          dd += g[n] * (A[n] * e * prev + Bv * uv);
          dA[n] += g[n] * d * e * prev;
          reduce.add(p.dB, (bc_base + n) * p.length + t, valid ? g[n] * d * uv : 0.f);
          if (p.has_C) reduce.add(p.dC, (bc_base + n) * p.length + t, valid ? dy_gated * hs[i][n] : 0.f);
        }
      }
      const float d_raw = p.softplus ? dd * sigmoid(raw) : dd;
      if (p.has_D) dD += dy_gated * uv;
      dbias += d_raw;
      if (valid) {
        store<input_t>(p.du, b * p.du_sb + c * p.du_sc + t * p.du_st, du);
        store<input_t>(p.ddelta, b * p.ddelta_sb + c * p.ddelta_sc + t * p.ddelta_st, d_raw);
      }
      d_next = d;
    }
  }
  if (valid) {
    for (int n = 0; n < p.n_state; ++n) reduce.add_channel(p.dA + c * p.n_state + n, dA[n]);
    if (p.has_D) reduce.add_channel(p.dD + c, dD);
    if (p.has_bias) reduce.add_channel(p.dbias + c, dbias);
  }
}

}  // namespace vssm_scan
