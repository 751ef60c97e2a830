// The selective scan on the CPU: forward and backward over any (batch, position, group, channel) strides,
// with an optional table of positions per step (the fused cross-scan entry).
//
// One task owns a batch element, a group (scan direction or B/C group) and a block of up to kBlock
// channels; it walks the sequence step by step with the state h (N x block) in registers/L1 and the inner
// loops running over the block's contiguous channels, so the compiler vectorises them. When the groups
// share their output (the cross-scan entry adds every direction's y onto one map), a task owns all groups of
// its channel block instead, so no two threads ever add to the same element.
//
// The forward saves the state entering every segment of seg_len steps. The backward walks the segments
// from the last: it recomputes the segment's step sizes, decays and states from the saved entry state into a
// small buffer, then runs the adjoint recurrence lambda_t = g_t + a_{t+1} lambda_{t+1} backwards over it.
// Per-channel gradients (dA, dD, d delta_bias) are summed per task and written per batch element; per-step
// sums over channels (dB, dC) are written per channel block; the binding reduces both partials.
#pragma once

#include <algorithm>
#include <cstdint>

namespace vssm_cpu {

// Channels per task at most (the inner loops' length). Wide: a task reads a row's channels at every step,
// and a strided row on a new page costs a TLB walk, so the fewer tasks share a row the fewer walks per byte
// (a whole VMamba-T stage-1 direction, 96 channels, is one task: backward 23 -> 14 ms against 48).
constexpr int kBlock = 256;
constexpr int kMaxState = 16;   // N

// Strides, in elements, of a tensor read as [batch][position][group][channel] (or [..][state] for B and C).
struct Strides {
  int64_t b = 0, p = 0, k = 0, d = 0;
};

struct Problem {
  int64_t batch = 0, groups = 0, dim = 0, n_state = 0, length = 0;  // dim: channels per group
  const int64_t* index = nullptr;  // position read at step t of group k of batch b; null: t
  int64_t index_b = 0, index_k = 0;
  const void* u = nullptr;
  Strides su;
  const void* delta = nullptr;
  Strides sdt;
  const void* B = nullptr;
  Strides sB;
  int64_t B_div = 1;  // kernel group k reads B group k / B_div
  const void* C = nullptr;
  Strides sC;
  int64_t C_div = 1;
  const void* z = nullptr;
  Strides sz;
  const float* A = nullptr;  // (groups * dim, N) contiguous
  const float* D = nullptr;  // (groups * dim)
  const float* bias = nullptr;
  // Step sizes from rank-R codes (the map entry's inference form, N = 1 kernels only): with rank > 0, delta is
  // unused and the step size of group k, channel d at a position is sum_r codes[r] * dt_weight[k][r][d].
  const void* codes = nullptr;    // scalar_t [b][p][k][r] at scodes (r at .d)
  Strides scodes;
  const float* dt_weight = nullptr;  // (groups, rank, dim) contiguous float32
  int64_t rank = 0;
  bool softplus = false;
  bool sum_groups = false;   // every group adds onto one output (y, du are float accumulators over [b][p][d])
  int64_t seg_len = 1;
  int block = kBlock;        // channels per task
  int64_t n_blocks() const { return (dim + block - 1) / block; }
  int64_t n_segments() const { return (length + seg_len - 1) / seg_len; }
  int64_t channels() const { return groups * dim; }
};

struct ForwardOut {
  void* y = nullptr;          // scalar_t [b][p][k][d] at sy, or float [b][p][d] (k stride 0) when sum_groups
  Strides sy;
  float* last = nullptr;      // (batch, channels, N)
  void* states = nullptr;     // scalar_t, time-major (batch, L, channels, N) contiguous
  float* seg = nullptr;       // (batch, n_segments, N, channels): the state entering each segment
};

struct BackwardIn {
  const float* seg = nullptr;
  const void* dy = nullptr;   // scalar_t at sdy (float [b][p][d] when sum_groups)
  Strides sdy;
  const float* dlast = nullptr;       // (batch, channels, N) contiguous
  const void* dstates = nullptr;      // scalar_t [b][c][n][t] at dst_b, dst_c, dst_n, dst_t
  int64_t dst_b = 0, dst_c = 0, dst_n = 0, dst_t = 0;
};

struct BackwardOut {
  void* du = nullptr;         // scalar_t at sdu, or float [b][p][d] accumulated when sum_groups
  Strides sdu;
  void* ddelta = nullptr;     // scalar_t at sddt
  Strides sddt;
  void* dz = nullptr;
  Strides sdz;
  float* dA = nullptr;        // (batch, channels, N) per batch element
  float* dD = nullptr;        // (batch, channels)
  float* dbias = nullptr;     // (batch, channels)
  float* dB = nullptr;        // (groups, n_blocks, batch, L, N) per channel block
  float* dC = nullptr;
};

// Defined in scan_cpu_kernels.h, instantiated per input dtype by scan_cpu_{fp32,fp16,bf16}.cpp.
// NS: the state size N when it is fixed at compile time (1), else 0 (read from the problem).
template <typename scalar_t, typename weight_t, int NS>
void run_forward(const Problem& p, const ForwardOut& o);

template <typename scalar_t, typename weight_t, int NS>
void run_backward(const Problem& p, const BackwardIn& in, const BackwardOut& o);

}  // namespace vssm_cpu
