// Depthwise 3 x 3 convolution on channels-last maps (inference), with SiLU and a residual; see depthwise_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

namespace vssm_cpu {

// x (batch, H, W, C) with contiguous channels, weight (C, 1, 3, 3), bias (C,) or None -> y (batch, H, W, C):
// zero padding 1, stride 1; silu applied to the convolution, then x added when `residual`.
at::Tensor depthwise3x3_fwd(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            bool silu, bool residual);

// x (batch, H, W, C) and the output's gradient grad (the same shape), contiguous channels -> (dweight (C, 1, 3, 3),
// dbias (C,)) of that convolution (the input's gradient is depthwise3x3_fwd of grad with the taps rotated 180 deg).
std::tuple<at::Tensor, at::Tensor> depthwise3x3_bwd_weight(const at::Tensor& x, const at::Tensor& grad);

}  // namespace vssm_cpu
