// Instantiations of the selective-scan backward kernels for bf16 inputs (B and C in the input type or fp32).
#include "scan_kernels.cuh"

namespace vssm_scan {
template void launch_backward<c10::BFloat16, c10::BFloat16>(ScanParams&, void*);
template void launch_backward<c10::BFloat16, float>(ScanParams&, void*);
}  // namespace vssm_scan
