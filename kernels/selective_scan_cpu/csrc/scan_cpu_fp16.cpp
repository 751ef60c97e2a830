// Kernels for fp16 inputs (B and C in the input dtype or float32), compiled apart from the binding.
#include "scan_cpu_kernels.h"

namespace vssm_cpu {
VSSM_CPU_INSTANTIATE(c10::Half, c10::Half)
VSSM_CPU_INSTANTIATE(c10::Half, float)
}  // namespace vssm_cpu
