// Spatial-Mamba's state fusion and observation in one pass (inference); see state_fusion_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

namespace vssm_cpu {

at::Tensor state_fusion_fwd(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                            const at::Tensor& C, const at::Tensor& x, const at::Tensor& D);

}  // namespace vssm_cpu
