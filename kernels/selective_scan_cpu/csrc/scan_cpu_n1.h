// The N = 1 kernels with explicit vectors (simd.h): what every vssm model runs (VMamba, FractalMamba and QuadMamba
// through the map entry or gathered sequences, Spatial-Mamba's states-only scan).
//
// A task's channel block is cut into tiles of up to V vectors; each tile walks the whole sequence with its
// state, constants and gradient sums in registers, reading only its own cache lines of every row. Step sizes
// come from softplus as exp2 and a log1p polynomial, decays as exp2 with A pre-scaled by log2(e).
//
// The backward walks the segments from the last: the recompute pass writes the segment's states, decays, step
// sizes and softplus' derivatives into a small buffer, and the adjoint pass runs backwards over it. The
// per-step sums over channels (dB, dC) are added across the tiles of a block as vectors, one per step, and
// summed across lanes once per block.
//
// Taken when every row the kernel reads or writes has contiguous channels (the layouts the entries make);
// other layouts and N > 1 use the kernels of scan_cpu_kernels.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "scan_cpu_block.h"
#include "simd.h"

// GCC 12 warns, once inlined here, that the AVX-512 intrinsics' own undefined-vector idiom (`__m512 __Y = __Y;`)
// may be uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace vssm_cpu {
namespace n1 {

using simd::Vec;
using simd::kLanes;

// Vectors per tile: the forward keeps 4 per vector in registers (state, decay rate, bias, D), the backward 7.
#if defined(VSSM_BACKWARD_TILE)
constexpr int kForwardTile = 4, kBackwardTile = VSSM_BACKWARD_TILE;
#elif defined(VSSM_SIMD_AVX512)
constexpr int kForwardTile = 4, kBackwardTile = 2;
#elif defined(VSSM_SIMD_AVX2)
constexpr int kForwardTile = 2, kBackwardTile = 1;
#else
constexpr int kForwardTile = 4, kBackwardTile = 2;
#endif
constexpr int64_t kAhead = 8;  // steps between a row's prefetch and its use

// The loops over a tile's vectors are unrolled, so that its arrays of vectors live in registers.
#define VSSM_UNROLL _Pragma("GCC unroll 8")

inline bool unit(int64_t stride) { return stride == 1; }

inline bool forward_supported(const Problem& p, const ForwardOut& o) {
  return p.n_state == 1 && unit(p.su.d) && (p.rank > 0 || unit(p.sdt.d)) && (!p.z || unit(p.sz.d)) &&
         (!o.y || unit(o.sy.d));
}

inline bool backward_supported(const Problem& p, const BackwardIn& in, const BackwardOut& o) {
  return p.n_state == 1 && p.rank == 0 && unit(p.su.d) && unit(p.sdt.d) &&
         (!p.z || (unit(p.sz.d) && unit(o.sdz.d))) && (!in.dy || unit(in.sdy.d)) && unit(o.sdu.d) && unit(o.sddt.d);
}

// The channels [first, first + V * kLanes) of a block, the last vector holding `tail` of them; FULL: tail ==
// kLanes, no masks.
template <int V, bool FULL>
struct Tile {
  static constexpr int kV = V;
  static constexpr bool kFull = FULL;
  int first, tail;
  template <typename T>
  Vec load(const T* row, int v) const {
    return FULL || v < V - 1 ? simd::load(row + v * kLanes) : simd::load(row + v * kLanes, tail);
  }
  template <typename T>
  void store(T* row, int v, Vec a) const {
    if (FULL || v < V - 1)
      simd::store(row + v * kLanes, a);
    else
      simd::store(row + v * kLanes, a, tail);
  }
  template <typename T>  // an output row nothing reads soon: past the caches where full and aligned
  void stream(T* row, int v, Vec a) const {
    if (FULL || v < V - 1)
      simd::stream(row + v * kLanes, a);
    else
      simd::store(row + v * kLanes, a, tail);
  }
  template <typename T>
  void prefetch(const T* row) const {
    const char* b = reinterpret_cast<const char*>(row);
    for (int off = 0; off < V * kLanes * static_cast<int>(sizeof(T)); off += 64) simd::prefetch(b + off);
  }
};

template <typename T>
inline const T* at(const void* base, int64_t offset) {
  return static_cast<const T*>(base) + offset;
}

template <typename T>
inline T* at(void* base, int64_t offset) {
  return static_cast<T*>(base) + offset;
}

template <typename T>
inline float scalar(const T* p) {
  return static_cast<float>(*p);
}

// ---- forward ----------------------------------------------------------------------------------------------

// LR: the step sizes are the products of rank-R codes and dt_weight (Problem::rank), summed here per step; the
// tile's R weight rows stay in L1.
template <typename scalar_t, typename weight_t, int V, bool FULL, bool SP, bool LR>
void forward_tile(const Problem& p, const ForwardOut& o, const Block& s, const Tile<V, FULL>& tile) {
  const int64_t C_all = p.channels(), L = p.length, T = p.seg_len;
  const int64_t d0 = s.d0 + tile.first, c0 = s.c0 + tile.first;
  Vec A2[V], bias[V], Dv[V], h[V];
  VSSM_UNROLL for (int v = 0; v < V; ++v) {
    A2[v] = tile.load(p.A + c0, v) * simd::bcast(simd::kLog2e);
    bias[v] = p.bias ? tile.load(p.bias + c0, v) : simd::zero();
    Dv[v] = p.D ? tile.load(p.D + c0, v) : simd::zero();
    h[v] = simd::zero();
  }
  const scalar_t* u = at<scalar_t>(p.u, s.b * p.su.b + s.k * p.su.k + d0);
  const scalar_t* delta = LR ? nullptr : at<scalar_t>(p.delta, s.b * p.sdt.b + s.k * p.sdt.k + d0);
  const scalar_t* codes = LR ? at<scalar_t>(p.codes, s.b * p.scodes.b + s.k * p.scodes.k) : nullptr;
  const float* dt_w = LR ? p.dt_weight + s.k * p.rank * p.dim + d0 : nullptr;  // row r at dt_w + r * p.dim
  const int64_t R = p.rank;
  const scalar_t* z = p.z ? at<scalar_t>(p.z, s.b * p.sz.b + s.k * p.sz.k + d0) : nullptr;
  const weight_t* Bp = at<weight_t>(p.B, s.b * p.sB.b + (s.k / p.B_div) * p.sB.k);
  const weight_t* Cp = p.C ? at<weight_t>(p.C, s.b * p.sC.b + (s.k / p.C_div) * p.sC.k) : nullptr;
  float* y_sum = p.sum_groups && Cp ? at<float>(o.y, s.b * o.sy.b + d0) : nullptr;
  scalar_t* y_own = !p.sum_groups && Cp ? at<scalar_t>(o.y, s.b * o.sy.b + s.k * o.sy.k + d0) : nullptr;
  scalar_t* states = o.states ? at<scalar_t>(o.states, s.b * L * C_all + c0) : nullptr;
  float* seg = o.seg ? o.seg + s.b * p.n_segments() * C_all + c0 : nullptr;
  int64_t to_next_segment = 0;
  for (int64_t t = 0; t < L; ++t) {
    const int64_t pos = s.pos(t);
    if (t + kAhead < L) {
      const int64_t ahead = s.pos(t + kAhead);
      tile.prefetch(u + ahead * p.su.p);
      if constexpr (LR)
        simd::prefetch(reinterpret_cast<const char*>(codes + ahead * p.scodes.p));
      else
        tile.prefetch(delta + ahead * p.sdt.p);
      if (z) tile.prefetch(z + ahead * p.sz.p);
      if (y_sum) tile.prefetch(y_sum + ahead * o.sy.p);
    }
    if (seg && to_next_segment-- == 0) {  // the state entering this segment, for the backward
      VSSM_UNROLL for (int v = 0; v < V; ++v) tile.store(seg, v, h[v]);
      seg += C_all;
      to_next_segment = T - 1;
    }
    const Vec bn = simd::bcast(scalar(Bp + pos * p.sB.p));
    const Vec cn = simd::bcast(Cp ? scalar(Cp + pos * p.sC.p) : 0.0f);
    const scalar_t* ur = u + pos * p.su.p;
    Vec raw[V];
    if constexpr (LR) {  // two sums per vector (even and odd ranks): twice the chains in flight
      const scalar_t* cr = codes + pos * p.scodes.p;
      Vec odd[V];
      VSSM_UNROLL for (int v = 0; v < V; ++v) {
        raw[v] = bias[v];
        odd[v] = simd::zero();
      }
      int64_t r = 0;
      for (; r + 1 < R; r += 2) {
        const Vec c0 = simd::bcast(scalar(cr + r * p.scodes.d)), c1 = simd::bcast(scalar(cr + (r + 1) * p.scodes.d));
        const float* w0 = dt_w + r * p.dim;
        VSSM_UNROLL for (int v = 0; v < V; ++v) {
          raw[v] = simd::fma(c0, tile.load(w0, v), raw[v]);
          odd[v] = simd::fma(c1, tile.load(w0 + p.dim, v), odd[v]);
        }
      }
      if (r < R) {
        const Vec c0 = simd::bcast(scalar(cr + r * p.scodes.d));
        VSSM_UNROLL for (int v = 0; v < V; ++v) raw[v] = simd::fma(c0, tile.load(dt_w + r * p.dim, v), raw[v]);
      }
      VSSM_UNROLL for (int v = 0; v < V; ++v) raw[v] = raw[v] + odd[v];
    } else {
      const scalar_t* dr = delta + pos * p.sdt.p;
      VSSM_UNROLL for (int v = 0; v < V; ++v) raw[v] = tile.load(dr, v) + bias[v];
    }
    VSSM_UNROLL for (int v = 0; v < V; ++v) {
      const Vec x = tile.load(ur, v);
      const Vec dt = SP ? simd::softplus(raw[v]) : raw[v];
      h[v] = simd::fma(simd::exp2(dt * A2[v]), h[v], dt * (x * bn));
      if (states) tile.store(states + t * C_all, v, h[v]);
      if (!Cp) continue;
      Vec out = simd::fma(cn, h[v], Dv[v] * x);
      if (z) {
        const Vec zv = tile.load(z + pos * p.sz.p, v);
        out = out * zv * simd::sigmoid(zv);
      }
      if (y_sum) {
        float* yr = y_sum + pos * o.sy.p;
        tile.store(yr, v, tile.load(yr, v) + out);
      } else {
        tile.store(y_own + pos * o.sy.p, v, out);
      }
    }
  }
  if (o.last) {
    VSSM_UNROLL for (int v = 0; v < V; ++v) tile.store(o.last + s.b * C_all + c0, v, h[v]);
  }
}

// Tiles of V, V - 1, ..., 1 full vectors for the rest of a block (fewer than V + 1 vectors), at most one of each.
template <int V, typename F>
inline void rest_tiles(int& first, int& vectors, F& fn) {
  if (vectors >= V) {
    fn(Tile<V, true>{first, kLanes});
    first += V * kLanes;
    vectors -= V;
  }
  if constexpr (V > 1) rest_tiles<V - 1>(first, vectors, fn);
}

// Calls fn(tile) over a block of `width` channels: tiles of MaxV full vectors, fewer for the rest, then the
// partial vector.
template <int MaxV, typename F>
inline void for_each_tile(int width, F&& fn) {
  int first = 0, vectors = width / kLanes;
  for (; vectors >= MaxV; vectors -= MaxV, first += MaxV * kLanes) fn(Tile<MaxV, true>{first, kLanes});
  if constexpr (MaxV > 1) rest_tiles<MaxV - 1>(first, vectors, fn);
  if (first < width) fn(Tile<1, false>{first, width - first});
}

template <typename scalar_t, typename weight_t>
void forward_block(const Problem& p, const ForwardOut& o, const Block& s) {
  for_each_tile<kForwardTile>(s.w, [&](auto tile) {
    using Tl = decltype(tile);
    if (p.rank > 0) {
      if (p.softplus)
        forward_tile<scalar_t, weight_t, Tl::kV, Tl::kFull, true, true>(p, o, s, tile);
      else
        forward_tile<scalar_t, weight_t, Tl::kV, Tl::kFull, false, true>(p, o, s, tile);
    } else if (p.softplus) {
      forward_tile<scalar_t, weight_t, Tl::kV, Tl::kFull, true, false>(p, o, s, tile);
    } else {
      forward_tile<scalar_t, weight_t, Tl::kV, Tl::kFull, false, false>(p, o, s, tile);
    }
  });
}

// ---- backward ---------------------------------------------------------------------------------------------

// A task's buffers: one segment of a tile (per step: state, decay, step size, softplus' derivative) and the
// per-step sums over the block's channels of the dB and dC terms, as vectors.
struct Scratch {
  std::vector<Vec> segment, sums;  // sums: [t][dB term, dC term]
};

template <typename T>
inline Vec load_strided(const T* p, int64_t stride, int n) {
  alignas(64) float buf[kLanes] = {};
  for (int j = 0; j < n; ++j) buf[j] = static_cast<float>(p[j * stride]);
  return simd::load(static_cast<const float*>(buf));
}

template <typename scalar_t, typename weight_t, int V, bool FULL, bool SP>
void backward_tile(const Problem& p, const BackwardIn& in, const BackwardOut& o, const Block& s,
                   const Tile<V, FULL>& tile, Scratch& scratch, bool first_tile) {
  const int64_t C_all = p.channels(), L = p.length, T = p.seg_len, n_seg = p.n_segments();
  const int64_t d0 = s.d0 + tile.first, c0 = s.c0 + tile.first;
  Vec A[V], A2[V], bias[V], Dv[V], lam[V], dA[V], dD[V], dbias[V], a_next[V];
  VSSM_UNROLL for (int v = 0; v < V; ++v) {
    A[v] = tile.load(p.A + c0, v);
    A2[v] = A[v] * simd::bcast(simd::kLog2e);
    bias[v] = p.bias ? tile.load(p.bias + c0, v) : simd::zero();
    Dv[v] = p.D ? tile.load(p.D + c0, v) : simd::zero();
    lam[v] = dA[v] = dD[v] = dbias[v] = a_next[v] = simd::zero();  // a_next: decay of the step after (0 at the end)
  }
  const scalar_t* u = at<scalar_t>(p.u, s.b * p.su.b + s.k * p.su.k + d0);
  const scalar_t* delta = at<scalar_t>(p.delta, s.b * p.sdt.b + s.k * p.sdt.k + d0);
  const scalar_t* z = p.z ? at<scalar_t>(p.z, s.b * p.sz.b + s.k * p.sz.k + d0) : nullptr;
  const weight_t* Bp = at<weight_t>(p.B, s.b * p.sB.b + (s.k / p.B_div) * p.sB.k);
  const weight_t* Cp = p.C ? at<weight_t>(p.C, s.b * p.sC.b + (s.k / p.C_div) * p.sC.k) : nullptr;
  const bool has_dy = in.dy && Cp;
  const float* dy_sum = has_dy && p.sum_groups ? at<float>(in.dy, s.b * in.sdy.b + d0) : nullptr;
  const scalar_t* dy_own = has_dy && !p.sum_groups ? at<scalar_t>(in.dy, s.b * in.sdy.b + s.k * in.sdy.k + d0) : nullptr;
  const scalar_t* dstates = in.dstates ? at<scalar_t>(in.dstates, s.b * in.dst_b + c0 * in.dst_c) : nullptr;
  const float* dlast = in.dlast ? in.dlast + s.b * C_all + c0 : nullptr;
  float* du_sum = p.sum_groups ? at<float>(o.du, s.b * o.sdu.b + d0) : nullptr;
  scalar_t* du_own = p.sum_groups ? nullptr : at<scalar_t>(o.du, s.b * o.sdu.b + s.k * o.sdu.k + d0);
  scalar_t* ddelta = at<scalar_t>(o.ddelta, s.b * o.sddt.b + s.k * o.sddt.k + d0);
  scalar_t* dz = z && has_dy ? at<scalar_t>(o.dz, s.b * o.sdz.b + s.k * o.sdz.k + d0) : nullptr;
  Vec* const work = scratch.segment.data();  // [i][H, Ad, DT, SG][v]
  Vec* const sums = scratch.sums.data();
  constexpr int kRow = 4 * V;

  for (int64_t sg_i = n_seg - 1; sg_i >= 0; --sg_i) {
    const int64_t t0 = sg_i * T, t1 = std::min(L, t0 + T);
    Vec h0[V], h[V];
    const float* saved = in.seg + (s.b * n_seg + sg_i) * C_all + c0;
    VSSM_UNROLL for (int v = 0; v < V; ++v) h[v] = h0[v] = tile.load(saved, v);
    // recompute the segment's states, decays, step sizes and softplus' derivatives
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t pos = s.pos(t);
      if (t + kAhead < t1) {
        const int64_t ahead = s.pos(t + kAhead);
        tile.prefetch(u + ahead * p.su.p);
        tile.prefetch(delta + ahead * p.sdt.p);
      }
      const Vec bn = simd::bcast(scalar(Bp + pos * p.sB.p));
      const scalar_t* ur = u + pos * p.su.p;
      const scalar_t* dr = delta + pos * p.sdt.p;
      Vec* w = work + (t - t0) * kRow;
      VSSM_UNROLL for (int v = 0; v < V; ++v) {
        const Vec x = tile.load(ur, v);
        const Vec raw = tile.load(dr, v) + bias[v];
        Vec dt = raw, sg;
        if constexpr (SP) simd::softplus_sigmoid(raw, dt, sg);
        const Vec a = simd::exp2(dt * A2[v]);
        h[v] = simd::fma(a, h[v], dt * (x * bn));
        w[v] = h[v];
        w[V + v] = a;
        w[2 * V + v] = dt;
        if constexpr (SP) w[3 * V + v] = sg;
      }
    }
    // the adjoint recurrence lambda_t = g_t + a_{t+1} lambda_{t+1}, backwards over the segment
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0, pos = s.pos(t);
      if (t - kAhead >= t0) {
        const int64_t ahead = s.pos(t - kAhead);
        tile.prefetch(u + ahead * p.su.p);
        if (dy_sum) tile.prefetch(dy_sum + ahead * in.sdy.p);
        if (dy_own) tile.prefetch(dy_own + ahead * in.sdy.p);
        if (du_sum) tile.prefetch(du_sum + ahead * o.sdu.p);
        if (z) tile.prefetch(z + ahead * p.sz.p);
      }
      const Vec bn = simd::bcast(scalar(Bp + pos * p.sB.p));
      const Vec cn = simd::bcast(has_dy ? scalar(Cp + pos * p.sC.p) : 0.0f);
      const scalar_t* ur = u + pos * p.su.p;
      const Vec* w = work + i * kRow;
      const Vec* w_prev = i ? w - kRow : h0;  // the state before this step
      Vec part_B = simd::zero(), part_C = simd::zero();
      VSSM_UNROLL for (int v = 0; v < V; ++v) {
        const Vec hi = w[v], a = w[V + v], dt = w[2 * V + v], hp = w_prev[v];
        const Vec x = tile.load(ur, v);
        Vec g = simd::zero();  // the gradient reaching y before the gate
        if (has_dy) {
          g = dy_sum ? tile.load(dy_sum + pos * in.sdy.p, v) : tile.load(dy_own + pos * in.sdy.p, v);
          if (z) {  // y = y_pre * silu(z)
            const Vec zv = tile.load(z + pos * p.sz.p, v);
            const Vec sz = simd::sigmoid(zv);
            const Vec y_pre = simd::fma(cn, hi, Dv[v] * x);
            const Vec one = simd::bcast(1.0f);
            tile.store(dz + pos * o.sdz.p, v, g * y_pre * sz * simd::fma(zv, one - sz, one));
            g = g * zv * sz;
          }
        }
        Vec l = simd::fma(a_next[v], lam[v], g * cn);  // + the gradient reaching h_t directly
        if (dstates) {
          const scalar_t* gs = dstates + t * in.dst_t + v * kLanes * in.dst_c;
          const int n = FULL || v < V - 1 ? kLanes : tile.tail;
          l = l + (in.dst_c == 1 ? tile.load(dstates + t * in.dst_t, v) : load_strided(gs, in.dst_c, n));
        }
        if (dlast && t == L - 1) l = l + tile.load(dlast, v);
        lam[v] = l;
        const Vec wv = l * a * hp;  // d loss / d a_t, times a_t
        dA[v] = simd::fma(wv, dt, dA[v]);
        const Vec lb = l * bn;
        part_B = simd::fma(l, dt * x, part_B);
        part_C = simd::fma(g, hi, part_C);
        dD[v] = simd::fma(g, x, dD[v]);
        Vec ddt = simd::fma(wv, A[v], lb * x);
        if constexpr (SP) ddt = ddt * w[3 * V + v];
        dbias[v] = dbias[v] + ddt;
        tile.stream(ddelta + pos * o.sddt.p, v, ddt);
        const Vec du = simd::fma(lb, dt, g * Dv[v]);
        if (du_sum) {
          float* row = du_sum + pos * o.sdu.p;
          tile.store(row, v, tile.load(row, v) + du);
        } else {
          tile.stream(du_own + pos * o.sdu.p, v, du);
        }
        a_next[v] = a;
      }
      sums[2 * t] = first_tile ? part_B : sums[2 * t] + part_B;
      if (has_dy) sums[2 * t + 1] = first_tile ? part_C : sums[2 * t + 1] + part_C;
    }
  }
  VSSM_UNROLL for (int v = 0; v < V; ++v) {
    tile.store(o.dA + s.b * C_all + c0, v, dA[v]);
    if (o.dD) tile.store(o.dD + s.b * C_all + c0, v, dD[v]);
    if (o.dbias) tile.store(o.dbias + s.b * C_all + c0, v, dbias[v]);
  }
}

template <typename scalar_t, typename weight_t>
void backward_block(const Problem& p, const BackwardIn& in, const BackwardOut& o, const Block& s, int64_t blk,
                    Scratch& scratch) {
  const int64_t L = p.length;
  scratch.segment.resize(p.seg_len * 4 * kBackwardTile);
  scratch.sums.resize(2 * L);
  bool first = true;
  for_each_tile<kBackwardTile>(s.w, [&](auto tile) {
    using Tl = decltype(tile);
    if (p.softplus)
      backward_tile<scalar_t, weight_t, Tl::kV, Tl::kFull, true>(p, in, o, s, tile, scratch, first);
    else
      backward_tile<scalar_t, weight_t, Tl::kV, Tl::kFull, false>(p, in, o, s, tile, scratch, first);
    first = false;
  });
  simd::fence();
  // this block's sums over channels, per step (rows of dB / dC partials, reduced by the binding)
  const int64_t part = ((s.k * p.n_blocks() + blk) * p.batch + s.b) * L;
  const bool has_dy = in.dy && p.C;
  const Vec* sums = scratch.sums.data();
  int64_t t = 0;
  for (; t + kLanes <= L; t += kLanes) {  // kLanes steps at once: lane j holds step t + j's sum
    alignas(64) float sum_B[kLanes], sum_C[kLanes];
    simd::store(sum_B, simd::sum_each(sums + 2 * t, 2));
    if (has_dy) simd::store(sum_C, simd::sum_each(sums + 2 * t + 1, 2));
    for (int j = 0; j < kLanes; ++j) {
      const int64_t pos = s.pos(t + j);
      o.dB[part + pos] = sum_B[j];
      if (has_dy)
        o.dC[part + pos] = sum_C[j];
      else if (p.C && o.dC)
        o.dC[part + pos] = 0.0f;
    }
  }
  for (; t < L; ++t) {
    const int64_t pos = s.pos(t);
    o.dB[part + pos] = simd::sum(sums[2 * t]);
    if (has_dy)
      o.dC[part + pos] = simd::sum(sums[2 * t + 1]);
    else if (p.C && o.dC)
      o.dC[part + pos] = 0.0f;
  }
}

}  // namespace n1
}  // namespace vssm_cpu

#pragma GCC diagnostic pop
