// CPU emulator of the CUDA launchers: the same per-thread code (scan_core.h), run thread by thread in
// launch order. Built only by the tests (VSSM_EMULATE), so that the kernels' arithmetic, segment and
// tile bookkeeping are checked against the naive scan on machines without a GPU.
#include "scan_core.h"
#include "scan_launch.h"

namespace vssm_scan {

struct SerialReduce {
  void add(float* buffer, int64_t offset, float value) const { buffer[offset] += value; }
  void add_channel(float* target, float value) const { *target += value; }
};

template <typename input_t, typename weight_t, int kN>
void emulate_forward(ScanParams& p) {
  for (int b = 0; b < p.batch; ++b) {
    if (p.n_seg > 1) {
      for (int s = 0; s < p.n_seg; ++s)
        for (int c = 0; c < p.dim; ++c) forward_segment_end<input_t, weight_t, kN>(p, b, c, s);
      for (int c = 0; c < p.dim; ++c) forward_segment_prefix<kN>(p, b, c);
    }
    for (int s = 0; s < p.n_seg; ++s)
      for (int c = 0; c < p.dim; ++c) forward_segment<input_t, weight_t, kN>(p, b, c, s);
  }
}

template <typename input_t, typename weight_t, int kN>
void emulate_backward(ScanParams& p) {
  SerialReduce reduce;
  for (int b = 0; b < p.batch; ++b) {
    if (p.n_seg > 1) {
      for (int s = 0; s < p.n_seg; ++s)
        for (int c = 0; c < p.dim; ++c) backward_segment_end<input_t, weight_t, kN>(p, b, c, s);
      for (int c = 0; c < p.dim; ++c) backward_segment_suffix<kN>(p, b, c);
    }
    for (int s = 0; s < p.n_seg; ++s)
      for (int c = 0; c < p.dim; ++c)
        backward_segment<input_t, weight_t, kN, tile_for_states(kN)>(p, b, c, s, true, reduce);
  }
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
