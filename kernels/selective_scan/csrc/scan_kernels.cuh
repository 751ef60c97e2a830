// CUDA kernels and launchers of the selective scan: one thread per (batch, channel, segment), channels
// of a block consecutive (so time-major inputs, the layout vssm's models feed, are read coalesced).
// Included by one .cu file per (direction, dtype) so that the instantiations compile in parallel.
#pragma once
#include <cuda_runtime.h>

#include "scan_core.h"
#include "scan_launch.h"

namespace vssm_scan {

// dB and dC: summed over the channels of a group. A warp whose channels all belong to one group adds its
// lanes with shuffles and makes one atomic; a warp straddling groups adds lane by lane.
struct WarpReduce {
  bool uniform;
  __device__ void add(float* buffer, int64_t offset, float value) const {
    if (uniform) {
      for (int delta = 16; delta > 0; delta >>= 1) value += __shfl_xor_sync(0xffffffffu, value, delta);
      if ((threadIdx.x & 31) == 0) atomicAdd(buffer + offset, value);
    } else if (value != 0.f) {
      atomicAdd(buffer + offset, value);
    }
  }
  __device__ void add_channel(float* target, float value) const { atomicAdd(target, value); }
};

template <typename input_t, typename weight_t, int kN>
__global__ void __launch_bounds__(kThreads) forward_end_kernel(ScanParams p) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c < p.dim) forward_segment_end<input_t, weight_t, kN>(p, blockIdx.z, c, blockIdx.y);
}

template <int kN>
__global__ void __launch_bounds__(kThreads) forward_prefix_kernel(ScanParams p) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c < p.dim) forward_segment_prefix<kN>(p, blockIdx.z, c);
}

template <typename input_t, typename weight_t, int kN>
__global__ void __launch_bounds__(kThreads) forward_kernel(ScanParams p) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c < p.dim) forward_segment<input_t, weight_t, kN>(p, blockIdx.z, c, blockIdx.y);
}

template <typename input_t, typename weight_t, int kN>
__global__ void __launch_bounds__(kThreads) backward_end_kernel(ScanParams p) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c < p.dim) backward_segment_end<input_t, weight_t, kN>(p, blockIdx.z, c, blockIdx.y);
}

template <int kN>
__global__ void __launch_bounds__(kThreads) backward_suffix_kernel(ScanParams p) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c < p.dim) backward_segment_suffix<kN>(p, blockIdx.z, c);
}

template <typename input_t, typename weight_t, int kN, int kTile>
__global__ void __launch_bounds__(kThreads) backward_kernel(ScanParams p) {
  // every lane runs (the shuffles of WarpReduce need the whole warp); lanes past the last channel
  // read the last channel and contribute nothing
  const int c = blockIdx.x * kThreads + threadIdx.x;
  const bool valid = c < p.dim;
  const int warp_first = c & ~31, warp_last = min(warp_first + 31, p.dim - 1);
  WarpReduce reduce{warp_first / p.dim_per_group == warp_last / p.dim_per_group};
  backward_segment<input_t, weight_t, kN, kTile>(p, blockIdx.z, valid ? c : p.dim - 1, blockIdx.y, valid, reduce);
}

inline void check_launch(const char* what) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw_cuda_error(what, cudaGetErrorString(error));
}

template <typename input_t, typename weight_t, int kN>
void forward_n(ScanParams& p, cudaStream_t stream) {
  const dim3 grid((p.dim + kThreads - 1) / kThreads, p.n_seg, p.batch);
  if (p.n_seg > 1) {
    forward_end_kernel<input_t, weight_t, kN><<<grid, kThreads, 0, stream>>>(p);
    forward_prefix_kernel<kN><<<dim3(grid.x, 1, p.batch), kThreads, 0, stream>>>(p);
  }
  forward_kernel<input_t, weight_t, kN><<<grid, kThreads, 0, stream>>>(p);
  check_launch("selective_scan forward");
}

template <typename input_t, typename weight_t, int kN>
void backward_n(ScanParams& p, cudaStream_t stream) {
  const dim3 grid((p.dim + kThreads - 1) / kThreads, p.n_seg, p.batch);
  if (p.n_seg > 1) {
    backward_end_kernel<input_t, weight_t, kN><<<grid, kThreads, 0, stream>>>(p);
    backward_suffix_kernel<kN><<<dim3(grid.x, 1, p.batch), kThreads, 0, stream>>>(p);
  }
  backward_kernel<input_t, weight_t, kN, tile_for_states(kN)><<<grid, kThreads, 0, stream>>>(p);
  check_launch("selective_scan backward");
}

template <typename input_t, typename weight_t>
void launch_forward(ScanParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.n_state == 1) forward_n<input_t, weight_t, 1>(p, s);
  else if (p.n_state <= 4) forward_n<input_t, weight_t, 4>(p, s);
  else forward_n<input_t, weight_t, 16>(p, s);
}

template <typename input_t, typename weight_t>
void launch_backward(ScanParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.n_state == 1) backward_n<input_t, weight_t, 1>(p, s);
  else if (p.n_state <= 4) backward_n<input_t, weight_t, 4>(p, s);
  else backward_n<input_t, weight_t, 16>(p, s);
}

}  // namespace vssm_scan
