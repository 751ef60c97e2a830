// CPU emulator of the CUDA launchers: the same per-thread code (scan_core.h) with the freedoms a GPU takes made
// explicit, so that the tests exercise them. Built only by the tests (VSSM_EMULATE), so that the kernels'
// arithmetic, segment and tile bookkeeping and reductions are checked against the naive scan without a GPU.
//
// - Every launch runs its threads in a shuffled order (a kernel whose result depends on the order its threads
//   run in, e.g. one reading what another thread of the same launch writes, fails the tests).
// - The backward's reductions are done as scan_kernels.cuh does them on the GPU: the 32 lanes of a warp run the
//   same sequence of WarpReduce::add calls; for a warp whose channels share one B/C group the lanes' values of
//   each call are summed by the xor-shuffle butterfly (lane l adds lane l ^ 16, ^ 8, ^ 4, ^ 2, ^ 1, in that
//   order) and lane 0 adds the sum atomically; a warp straddling groups adds lane by lane (non-zero values
//   only), and dA, dD, d delta_bias are added per thread. The atomic additions of a launch land in a shuffled
//   order, as the GPU's do in an order nobody chooses.
// The order is drawn from a generator seeded by set_emulator_seed (the tests seed it per test).
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include <c10/util/Exception.h>

#include "scan_core.h"
#include "scan_launch.h"

namespace vssm_scan {

namespace {

constexpr int kWarp = 32;

std::mt19937_64& generator() {
  static std::mt19937_64 gen(0x5eed);
  return gen;
}

struct Thread {
  int b, s, c;
};

// Calls fn(b, s, c) for every thread of a (dim, n_seg, batch) launch, in a shuffled order.
template <typename F>
void run_shuffled(const ScanParams& p, int n_seg, F&& fn) {
  std::vector<Thread> threads;
  threads.reserve(static_cast<size_t>(p.batch) * n_seg * p.dim);
  for (int b = 0; b < p.batch; ++b)
    for (int s = 0; s < n_seg; ++s)
      for (int c = 0; c < p.dim; ++c) threads.push_back({b, s, c});
  std::shuffle(threads.begin(), threads.end(), generator());
  for (const Thread& t : threads) fn(t.b, t.s, t.c);
}

struct Atomic {  // one atomicAdd
  float* target;
  float value;
};

// The Reduce of one lane: records its calls; the warp's reductions are applied after all lanes ran.
struct LaneRecorder {
  struct Call {
    float* buffer;
    int64_t offset;
    float value;
  };
  std::vector<Call> calls;            // WarpReduce::add (dB, dC), in call order
  std::vector<Atomic> channel_adds;   // WarpReduce::add_channel (dA, dD, dbias)
  void add(float* buffer, int64_t offset, float value) { calls.push_back({buffer, offset, value}); }
  void add_channel(float* target, float value) { channel_adds.push_back({target, value}); }
};

// What the warp's lanes hand to the memory system: WarpReduce's shuffles, then its atomics.
void reduce_warp(std::vector<LaneRecorder>& lanes, bool uniform, std::vector<Atomic>& atomics) {
  if (uniform) {
    const size_t n_calls = lanes[0].calls.size();
    for (const LaneRecorder& lane : lanes)
      TORCH_CHECK(lane.calls.size() == n_calls, "cuda emulator: the lanes of a warp made different numbers of "
                  "shuffle reductions (", lane.calls.size(), " and ", n_calls, "): divergent __shfl_xor_sync");
    float v[kWarp], next[kWarp];
    for (size_t i = 0; i < n_calls; ++i) {
      const LaneRecorder::Call& first = lanes[0].calls[i];
      for (int l = 0; l < kWarp; ++l) {
        const LaneRecorder::Call& call = lanes[l].calls[i];
        TORCH_CHECK(call.buffer == first.buffer && call.offset == first.offset, "cuda emulator: the lanes of a "
                    "uniform warp reduce into different elements (", first.offset, " and ", call.offset, ")");
        v[l] = call.value;
      }
      for (int delta = kWarp / 2; delta > 0; delta >>= 1) {  // value += __shfl_xor_sync(mask, value, delta)
        for (int l = 0; l < kWarp; ++l) next[l] = v[l] + v[l ^ delta];
        std::copy(next, next + kWarp, v);
      }
      atomics.push_back({first.buffer + first.offset, v[0]});  // lane 0's atomicAdd
    }
  } else {
    for (const LaneRecorder& lane : lanes)
      for (const LaneRecorder::Call& call : lane.calls)
        if (call.value != 0.f) atomics.push_back({call.buffer + call.offset, call.value});
  }
  for (const LaneRecorder& lane : lanes)
    atomics.insert(atomics.end(), lane.channel_adds.begin(), lane.channel_adds.end());
}

}  // namespace

void set_emulator_seed(uint64_t seed) { generator().seed(seed); }

template <typename input_t, typename weight_t, int kN>
void emulate_forward(ScanParams& p) {
  if (p.n_seg > 1) {
    run_shuffled(p, p.n_seg, [&](int b, int s, int c) { forward_segment_end<input_t, weight_t, kN>(p, b, c, s); });
    run_shuffled(p, 1, [&](int b, int, int c) { forward_segment_prefix<kN>(p, b, c); });
  }
  run_shuffled(p, p.n_seg, [&](int b, int s, int c) { forward_segment<input_t, weight_t, kN>(p, b, c, s); });
}

template <typename input_t, typename weight_t, int kN>
void emulate_backward(ScanParams& p) {
  if (p.n_seg > 1) {
    run_shuffled(p, p.n_seg, [&](int b, int s, int c) { backward_segment_end<input_t, weight_t, kN>(p, b, c, s); });
    run_shuffled(p, 1, [&](int b, int, int c) { backward_segment_suffix<kN>(p, b, c); });
  }
  // the gradient kernel: every lane of a launched warp runs (lanes past the last channel read the last
  // channel and contribute nothing), as backward_kernel does
  struct Warp {
    int b, s, first;
  };
  std::vector<Warp> warps;
  const int blocks = (p.dim + kThreads - 1) / kThreads;
  for (int b = 0; b < p.batch; ++b)
    for (int s = 0; s < p.n_seg; ++s)
      for (int first = 0; first < blocks * kThreads; first += kWarp) warps.push_back({b, s, first});
  std::shuffle(warps.begin(), warps.end(), generator());
  std::vector<Atomic> atomics;
  std::vector<LaneRecorder> lanes(kWarp);
  int lane_order[kWarp];
  for (int l = 0; l < kWarp; ++l) lane_order[l] = l;
  for (const Warp& w : warps) {
    const int last = std::min(w.first + kWarp - 1, p.dim - 1);
    const bool uniform = w.first / p.dim_per_group == last / p.dim_per_group;
    std::shuffle(lane_order, lane_order + kWarp, generator());
    for (int l : lane_order) {
      const int c = w.first + l;
      const bool valid = c < p.dim;
      lanes[l].calls.clear();
      lanes[l].channel_adds.clear();
      backward_segment<input_t, weight_t, kN, tile_for_states(kN)>(p, w.b, valid ? c : p.dim - 1, w.s, valid,
                                                                   lanes[l]);
    }
    reduce_warp(lanes, uniform, atomics);
  }
  std::shuffle(atomics.begin(), atomics.end(), generator());
  for (const Atomic& a : atomics) *a.target += a.value;
}

template <typename input_t, typename weight_t>
void launch_forward(ScanParams& p, void*) {
  if (p.n_state == 1) emulate_forward<input_t, weight_t, 1>(p);
  else if (p.n_state <= 4) emulate_forward<input_t, weight_t, 4>(p);
  else emulate_forward<input_t, weight_t, 16>(p);
}

template <typename input_t, typename weight_t>
void launch_backward(ScanParams& p, void*) {
  if (p.n_state == 1) emulate_backward<input_t, weight_t, 1>(p);
  else if (p.n_state <= 4) emulate_backward<input_t, weight_t, 4>(p);
  else emulate_backward<input_t, weight_t, 16>(p);
}

template void launch_forward<float, float>(ScanParams&, void*);
template void launch_forward<c10::Half, c10::Half>(ScanParams&, void*);
template void launch_forward<c10::Half, float>(ScanParams&, void*);
template void launch_forward<c10::BFloat16, c10::BFloat16>(ScanParams&, void*);
template void launch_forward<c10::BFloat16, float>(ScanParams&, void*);
template void launch_backward<float, float>(ScanParams&, void*);
template void launch_backward<c10::Half, c10::Half>(ScanParams&, void*);
template void launch_backward<c10::Half, float>(ScanParams&, void*);
template void launch_backward<c10::BFloat16, c10::BFloat16>(ScanParams&, void*);
template void launch_backward<c10::BFloat16, float>(ScanParams&, void*);

}  // namespace vssm_scan
