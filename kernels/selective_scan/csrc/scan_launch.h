// What the binding needs from the kernels: the tile length per state size, and the launchers
// (CUDA kernels, or the CPU emulator when built with VSSM_EMULATE).
#pragma once
#include <cstdint>

#include "scan_params.h"

namespace vssm_scan {

constexpr int kMaxState = 16;
constexpr int kThreads = 64;  // threads per block of every kernel (two warps)

// Steps per tile: the backward keeps a tile's states (tile x N floats) per thread.
constexpr int tile_for_states(int n_state) { return n_state <= 1 ? 64 : (n_state <= 4 ? 32 : 16); }

[[noreturn]] void throw_cuda_error(const char* what, const char* message);

template <typename input_t, typename weight_t>
void launch_forward(ScanParams& p, void* stream);

template <typename input_t, typename weight_t>
void launch_backward(ScanParams& p, void* stream);

#ifdef VSSM_EMULATE
// The emulator's thread and atomic orders are shuffled by a generator with this seed (scan_emulate.cpp).
void set_emulator_seed(uint64_t seed);
#endif

}  // namespace vssm_scan
