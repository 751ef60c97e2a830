// Instantiations of the selective-scan backward kernels for fp32 inputs (B and C in the input type or fp32).
#include "scan_kernels.cuh"

namespace vssm_scan {
template void launch_backward<float, float>(ScanParams&, void*);
}  // namespace vssm_scan
