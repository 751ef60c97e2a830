// Spatial-Mamba's state fusion and observation in one pass, and its gradients; see state_fusion_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace vssm_cpu {

at::Tensor state_fusion_fwd(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                            const at::Tensor& C, const at::Tensor& x, const at::Tensor& D);

// LayerNorm(state_fusion_fwd(...)) * silu(z): the mixer's norm (weight, bias (E,), eps) and gate z (batch, H, W, E).
at::Tensor state_fusion_gated_fwd(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                                  const at::Tensor& C, const at::Tensor& x, const at::Tensor& D, const at::Tensor& z,
                                  const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps);

// -> [dh (batch, H, W, E), dweight (T, E), dC (batch, H, W)] for dy (batch, H, W, E); the skip D * x is the caller's.
std::vector<at::Tensor> state_fusion_bwd(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& offsets,
                                         const at::Tensor& C, const at::Tensor& dy);

}  // namespace vssm_cpu
