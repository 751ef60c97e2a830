// Parameters of one selective-scan call, shared by the CUDA kernels and their CPU emulator.
//
// Shapes (strides are in elements, any layout):
//   u, delta, z, out, du, ddelta, dz: (batch, dim, length)          dim = K * D channels
//   A: (dim, n_state) fp32 contiguous;  D, delta_bias: (dim,) fp32 contiguous
//   B, C: (batch, n_groups, n_state, length); group g serves channels [g * dim_per_group, (g + 1) * dim_per_group)
//   states, dstates: (batch, dim, n_state, length);  last, dlast: (batch, dim, n_state) fp32 contiguous
//   tile_h: (batch, dim, n_tiles, n_state) fp32: the state entering each tile (saved by the forward)
//   seg_h, seg_sum: (batch, dim, n_seg, n_state) and (batch, dim, n_seg) fp32: segment carries
//   dA: (dim, n_state), dD, dbias: (dim,), dB, dC: (batch, n_groups, n_state, length), fp32 contiguous, zeroed
#pragma once
#include <cstdint>

namespace vssm_scan {

struct ScanParams {
  int batch = 0, dim = 0, length = 0, n_state = 0, n_groups = 1, dim_per_group = 0;
  int tile = 0, n_tiles = 0, seg_tiles = 0, n_seg = 0;  // tiles of `tile` steps, segments of `seg_tiles` tiles
  bool softplus = false, has_C = false, has_D = false, has_z = false, has_bias = false;
  bool return_states = false, return_last = false, has_dstates = false, has_dlast = false;

  int64_t u_sb = 0, u_sc = 0, u_st = 0, delta_sb = 0, delta_sc = 0, delta_st = 0, z_sb = 0, z_sc = 0, z_st = 0;
  int64_t B_sb = 0, B_sg = 0, B_sn = 0, B_st = 0, C_sb = 0, C_sg = 0, C_sn = 0, C_st = 0;
  int64_t out_sb = 0, out_sc = 0, out_st = 0, dout_sb = 0, dout_sc = 0, dout_st = 0;
  int64_t states_sb = 0, states_sc = 0, states_sn = 0, states_st = 0;
  int64_t dstates_sb = 0, dstates_sc = 0, dstates_sn = 0, dstates_st = 0;
  int64_t du_sb = 0, du_sc = 0, du_st = 0, ddelta_sb = 0, ddelta_sc = 0, ddelta_st = 0, dz_sb = 0, dz_sc = 0, dz_st = 0;

  // inputs (typed by the kernels' input_t / weight_t)
  const void *u = nullptr, *delta = nullptr, *B = nullptr, *C = nullptr, *z = nullptr;
  const void *dout = nullptr, *dstates = nullptr;
  const float *A = nullptr, *D = nullptr, *bias = nullptr, *dlast = nullptr;
  // forward outputs and carries
  void *out = nullptr, *states = nullptr;
  float *last = nullptr, *tile_h = nullptr, *seg_h = nullptr, *seg_sum = nullptr;
  // backward outputs
  void *du = nullptr, *ddelta = nullptr, *dz = nullptr;
  float *dA = nullptr, *dB = nullptr, *dC = nullptr, *dD = nullptr, *dbias = nullptr;
};

}  // namespace vssm_scan
