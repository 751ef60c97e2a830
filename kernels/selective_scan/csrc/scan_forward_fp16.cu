// Instantiations of the selective-scan forward kernels for fp16 inputs (B and C in the input type or fp32).
#include "scan_kernels.cuh"

namespace vssm_scan {
template void launch_forward<c10::Half, c10::Half>(ScanParams&, void*);
template void launch_forward<c10::Half, float>(ScanParams&, void*);
}  // namespace vssm_scan
