// Python binding of the selective-scan extension: input checks, output and carry allocation, dispatch
// on (input dtype, B/C dtype) to the CUDA launchers, or to the CPU emulator when built with VSSM_EMULATE.
//
//   fwd(u, delta, A, B, C, D, z, delta_bias, softplus, return_last, return_states, segments)
//       -> [out, last_state, states, tile_states]
//   bwd(u, delta, A, B, C, D, z, delta_bias, softplus, tile_states, dout, dlast, dstates, segments)
//       -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]
// Absent optional tensors are passed (and returned) as empty tensors; segments <= 0 picks the number of
// parallel segments per sequence automatically.
#include <torch/extension.h>

#include <algorithm>
#include <limits>

#ifndef VSSM_EMULATE
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "scan_launch.h"

namespace vssm_scan {
void throw_cuda_error(const char* what, const char* message) { TORCH_CHECK(false, what, ": CUDA error: ", message); }
}  // namespace vssm_scan

namespace {

using vssm_scan::ScanParams;

#ifdef VSSM_EMULATE
constexpr const char* kName = "selective_scan (cpu emulator of the cuda kernels)";
#else
constexpr const char* kName = "selective_scan cuda";
#endif
constexpr int64_t kMaxGrid = 65535;  // CUDA's limit on gridDim.y (segments) and gridDim.z (batch)

bool present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

// Fresh outputs: in the emulator they start as NaN, so an element the kernels forget to write fails the tests.
at::Tensor fresh(at::Tensor t) {
#ifdef VSSM_EMULATE
  if (t.numel() > 0) t.fill_(std::numeric_limits<float>::quiet_NaN());
#endif
  return t;
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like, at::IntArrayRef shape) {
#ifdef VSSM_EMULATE
  TORCH_CHECK(t.device().is_cpu(), kName, ": ", name, " must be a CPU tensor, got ", t.device());
#else
  TORCH_CHECK(t.is_cuda(), kName, ": ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), kName, ": ", name, " is on ", t.device(), ", u on ", like.device());
#endif
  TORCH_CHECK(t.sizes() == shape, kName, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

void check_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, kName, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
}

template <typename T>
struct Tag { using type = T; };

template <typename F>
void dispatch(at::ScalarType input, at::ScalarType weight, F&& f) {
  const bool fp32_weight = weight == at::kFloat;
  switch (input) {
    case at::kFloat: return f(Tag<float>{}, Tag<float>{});
    case at::kHalf:
      return fp32_weight ? f(Tag<c10::Half>{}, Tag<float>{}) : f(Tag<c10::Half>{}, Tag<c10::Half>{});
    case at::kBFloat16:
      return fp32_weight ? f(Tag<c10::BFloat16>{}, Tag<float>{}) : f(Tag<c10::BFloat16>{}, Tag<c10::BFloat16>{});
    default: TORCH_CHECK(false, kName, ": u must be float32, float16 or bfloat16, got ", input);
  }
}

// Checks shared by fwd and bwd; fills shapes, strides, pointers of the inputs and the tiling.
void describe_inputs(ScanParams& p, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                     const at::Tensor& B, const at::Tensor& C, const at::Tensor& D, const at::Tensor& z,
                     const at::Tensor& bias, bool softplus, int64_t segments) {
  TORCH_CHECK(u.dim() == 3, kName, ": u must be (batch, channels, L), got ", u.sizes());
  check_tensor(u, "u", u, u.sizes());  // on the device the build runs on
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  TORCH_CHECK(batch > 0 && dim > 0 && L > 0, kName, ": u must be non-empty, got ", u.sizes());
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim, kName, ": A must be (", dim, ", N), got ", A.sizes());
  const int64_t N = A.size(1);
  TORCH_CHECK(N >= 1 && N <= vssm_scan::kMaxState, kName, ": N = ", N, " states; the extension supports 1 to ",
              vssm_scan::kMaxState, " (use backend='triton' or 'torch')");
  const auto input = u.scalar_type();
  TORCH_CHECK(input == at::kFloat || input == at::kHalf || input == at::kBFloat16, kName,
              ": u must be float32, float16 or bfloat16, got ", input);
  check_tensor(delta, "delta", u, u.sizes());
  check_dtype(delta, "delta", input);
  check_tensor(A, "A", u, {dim, N});
  check_dtype(A, "A", at::kFloat);
  TORCH_CHECK(A.is_contiguous(), kName, ": A must be contiguous (the kernels read A[c * N + n])");
  TORCH_CHECK(B.dim() == 3 || B.dim() == 4, kName, ": B must be (batch, N, L) or (batch, K, N, L), got ", B.sizes());
  const int64_t groups = B.dim() == 4 ? B.size(1) : 1;
  TORCH_CHECK(groups > 0 && dim % groups == 0, kName, ": B's ", groups, " groups do not divide ", dim, " channels");
  const auto weight = B.scalar_type();
  TORCH_CHECK(weight == input || weight == at::kFloat, kName, ": B must be ", input, " or float32, got ", weight);
  std::vector<int64_t> bc_shape = B.dim() == 4 ? std::vector<int64_t>{batch, groups, N, L}
                                               : std::vector<int64_t>{batch, N, L};
  check_tensor(B, "B", u, bc_shape);
  p.has_C = present(C);
  if (p.has_C) {
    check_tensor(C, "C", u, bc_shape);
    check_dtype(C, "C", weight);
  }
  p.has_D = present(D);
  p.has_z = present(z);
  p.has_bias = present(bias);
  if (p.has_D) {
    check_tensor(D, "D", u, {dim});
    check_dtype(D, "D", at::kFloat);
    TORCH_CHECK(D.is_contiguous(), kName, ": D must be contiguous");
  }
  if (p.has_bias) {
    check_tensor(bias, "delta_bias", u, {dim});
    check_dtype(bias, "delta_bias", at::kFloat);
    TORCH_CHECK(bias.is_contiguous(), kName, ": delta_bias must be contiguous");
  }
  if (p.has_z) { check_tensor(z, "z", u, u.sizes()); check_dtype(z, "z", input); }
  TORCH_CHECK(p.has_C || !(p.has_D || p.has_z), kName, ": D and z need C");
  TORCH_CHECK(batch * dim * L < (int64_t(1) << 40), kName, ": input too large");
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();  // ScanParams counts in int
  TORCH_CHECK(dim <= kMaxInt && L <= kMaxInt, kName, ": ", dim, " channels of length ", L, " are over the kernels' ",
              kMaxInt, " limit");
  TORCH_CHECK(batch <= kMaxGrid, kName, ": batch ", batch, " is over the ", kMaxGrid, " the kernels' grid allows; "
              "split the batch");

  p.batch = batch; p.dim = dim; p.length = L; p.n_state = N; p.n_groups = groups; p.dim_per_group = dim / groups;
  p.softplus = softplus;
  p.u = u.data_ptr(); p.u_sb = u.stride(0); p.u_sc = u.stride(1); p.u_st = u.stride(2);
  p.delta = delta.data_ptr(); p.delta_sb = delta.stride(0); p.delta_sc = delta.stride(1); p.delta_st = delta.stride(2);
  p.A = A.data_ptr<float>();
  const int o = B.dim() == 4 ? 1 : 0;  // shared B/C: group stride 0
  p.B = B.data_ptr(); p.B_sb = B.stride(0); p.B_sg = o ? B.stride(1) : 0; p.B_sn = B.stride(1 + o); p.B_st = B.stride(2 + o);
  if (p.has_C) {
    p.C = C.data_ptr(); p.C_sb = C.stride(0); p.C_sg = o ? C.stride(1) : 0; p.C_sn = C.stride(1 + o); p.C_st = C.stride(2 + o);
  }
  if (p.has_D) p.D = D.data_ptr<float>();
  if (p.has_bias) p.bias = bias.data_ptr<float>();
  if (p.has_z) { p.z = z.data_ptr(); p.z_sb = z.stride(0); p.z_sc = z.stride(1); p.z_st = z.stride(2); }

  p.tile = vssm_scan::tile_for_states(static_cast<int>(N));
  p.n_tiles = static_cast<int>((L + p.tile - 1) / p.tile);
  int64_t wanted = segments;
  if (wanted <= 0) {
#ifdef VSSM_EMULATE
    wanted = 1;
#else
    // enough (batch, channel, segment) threads to fill the GPU several times over
    const int64_t target = int64_t(1) << 18;
    wanted = (target + batch * dim - 1) / (batch * dim);
#endif
  }
  wanted = std::max<int64_t>(1, std::min<int64_t>({wanted, int64_t(p.n_tiles), kMaxGrid}));
  p.seg_tiles = static_cast<int>((p.n_tiles + wanted - 1) / wanted);
  p.n_seg = (p.n_tiles + p.seg_tiles - 1) / p.seg_tiles;
}

// The carries between parallel segments of a sequence (each segment's end state and decay sum), when
// sequences are cut into more than one segment; the tensors must outlive the launch.
std::vector<at::Tensor> segment_carries(ScanParams& p, const at::TensorOptions& f32) {
  if (p.n_seg <= 1) return {};
  at::Tensor seg_h = fresh(at::empty({p.batch, p.dim, p.n_seg, p.n_state}, f32));
  at::Tensor seg_sum = fresh(at::empty({p.batch, p.dim, p.n_seg}, f32));
  p.seg_h = seg_h.data_ptr<float>();
  p.seg_sum = seg_sum.data_ptr<float>();
  return {seg_h, seg_sum};
}

void* current_stream(const at::Tensor& u) {
#ifdef VSSM_EMULATE
  (void)u;
  return nullptr;
#else
  return c10::cuda::getCurrentCUDAStream(u.device().index()).stream();
#endif
}

std::vector<at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias,
                            bool softplus, bool return_last, bool return_states, int64_t segments) {
  ScanParams p;
  describe_inputs(p, u, delta, A, B, C, D, z, bias, softplus, segments);
#ifndef VSSM_EMULATE
  c10::cuda::CUDAGuard guard(u.device());
#endif
  TORCH_CHECK(p.has_C || return_states, kName, ": a scan without C must return its states");
  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor out = fresh(p.has_C ? at::empty_like(u) : at::empty({0}, u.options()));
  at::Tensor states = fresh(return_states ? at::empty({p.batch, p.length, p.dim, p.n_state}, u.options()).permute({0, 2, 3, 1})
                                          : at::empty({0}, u.options()));
  at::Tensor last = fresh(return_last ? at::empty({p.batch, p.dim, p.n_state}, f32) : at::empty({0}, f32));
  at::Tensor tile_h = fresh(at::empty({p.batch, p.dim, p.n_tiles, p.n_state}, f32));
  const auto carries = segment_carries(p, f32);
  if (p.has_C) { p.out = out.data_ptr(); p.out_sb = out.stride(0); p.out_sc = out.stride(1); p.out_st = out.stride(2); }
  p.return_states = return_states;
  if (return_states) {
    p.states = states.data_ptr();
    p.states_sb = states.stride(0); p.states_sc = states.stride(1); p.states_sn = states.stride(2); p.states_st = states.stride(3);
  }
  p.return_last = return_last;
  if (return_last) p.last = last.data_ptr<float>();
  p.tile_h = tile_h.data_ptr<float>();
  void* stream = current_stream(u);
  dispatch(u.scalar_type(), B.scalar_type(), [&](auto in, auto w) {
    vssm_scan::launch_forward<typename decltype(in)::type, typename decltype(w)::type>(p, stream);
  });
  return {out, last, states, tile_h};
}

std::vector<at::Tensor> bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias,
                            bool softplus, const at::Tensor& tile_h, const at::Tensor& dout, const at::Tensor& dlast_in,
                            const at::Tensor& dstates, int64_t segments) {
  ScanParams p;
  describe_inputs(p, u, delta, A, B, C, D, z, bias, softplus, segments);
#ifndef VSSM_EMULATE
  c10::cuda::CUDAGuard guard(u.device());
#endif
  const auto f32 = u.options().dtype(at::kFloat);
  check_tensor(tile_h, "tile_states", u, {p.batch, p.dim, p.n_tiles, p.n_state});
  check_dtype(tile_h, "tile_states", at::kFloat);
  TORCH_CHECK(tile_h.is_contiguous(), kName, ": tile_states must be contiguous");
  p.tile_h = tile_h.data_ptr<float>();
  if (p.has_C) {
    check_tensor(dout, "dout", u, u.sizes());
    check_dtype(dout, "dout", u.scalar_type());
    p.dout = dout.data_ptr(); p.dout_sb = dout.stride(0); p.dout_sc = dout.stride(1); p.dout_st = dout.stride(2);
  }
  at::Tensor dlast;
  p.has_dlast = present(dlast_in);
  if (p.has_dlast) {
    check_tensor(dlast_in, "dlast", u, {p.batch, p.dim, p.n_state});
    dlast = dlast_in.to(at::kFloat).contiguous();
    p.dlast = dlast.data_ptr<float>();
  }
  p.has_dstates = present(dstates);
  if (p.has_dstates) {
    check_tensor(dstates, "dstates", u, {p.batch, p.dim, p.n_state, p.length});
    check_dtype(dstates, "dstates", u.scalar_type());
    p.dstates = dstates.data_ptr();
    p.dstates_sb = dstates.stride(0); p.dstates_sc = dstates.stride(1);
    p.dstates_sn = dstates.stride(2); p.dstates_st = dstates.stride(3);
  }
  at::Tensor du = fresh(at::empty_like(u)), ddelta = fresh(at::empty_like(delta));
  at::Tensor dz = fresh(p.has_z ? at::empty_like(z) : at::empty({0}, u.options()));
  at::Tensor dA = at::zeros({p.dim, p.n_state}, f32);
  at::Tensor dB = at::zeros({p.batch, p.n_groups, p.n_state, p.length}, f32);
  at::Tensor dC = p.has_C ? at::zeros({p.batch, p.n_groups, p.n_state, p.length}, f32) : at::empty({0}, f32);
  at::Tensor dD = p.has_D ? at::zeros({p.dim}, f32) : at::empty({0}, f32);
  at::Tensor dbias = p.has_bias ? at::zeros({p.dim}, f32) : at::empty({0}, f32);
  const auto carries = segment_carries(p, f32);
  p.du = du.data_ptr(); p.du_sb = du.stride(0); p.du_sc = du.stride(1); p.du_st = du.stride(2);
  p.ddelta = ddelta.data_ptr(); p.ddelta_sb = ddelta.stride(0); p.ddelta_sc = ddelta.stride(1); p.ddelta_st = ddelta.stride(2);
  if (p.has_z) { p.dz = dz.data_ptr(); p.dz_sb = dz.stride(0); p.dz_sc = dz.stride(1); p.dz_st = dz.stride(2); }
  p.dA = dA.data_ptr<float>();
  p.dB = dB.data_ptr<float>();
  if (p.has_C) p.dC = dC.data_ptr<float>();
  if (p.has_D) p.dD = dD.data_ptr<float>();
  if (p.has_bias) p.dbias = dbias.data_ptr<float>();
  void* stream = current_stream(u);
  dispatch(u.scalar_type(), B.scalar_type(), [&](auto in, auto w) {
    vssm_scan::launch_backward<typename decltype(in)::type, typename decltype(w)::type>(p, stream);
  });
  dB = dB.view(B.sizes()).to(B.scalar_type());
  if (p.has_C) dC = dC.view(C.sizes()).to(C.scalar_type());
  return {du, ddelta, dA, dB, dC, dD, dz, dbias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vssm selective scan: fwd and bwd (see selective_scan.cpp)";
  m.def("fwd", &fwd, "selective scan forward");
  m.def("bwd", &bwd, "selective scan backward");
#ifdef VSSM_EMULATE
  m.def("set_seed", &vssm_scan::set_emulator_seed, "seed the emulator's shuffled thread and atomic orders");
#endif
}
