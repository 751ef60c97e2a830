// Python binding of the CPU selective scan (module vssm_selective_scan_cpu): checks, allocation, dispatch on
// (input dtype, B/C dtype, N == 1) to the kernels (scan_cpu_kernels.h, one file per dtype), and the reduction of their partials.
//
//   fwd(u, delta, A, B, C, D, z, delta_bias, softplus, return_last, return_states, save)
//       -> [y, last_state, states, segment_states]
//   bwd(u, delta, A, B, C, D, z, delta_bias, softplus, segment_states, dy, dlast, dstates)
//       -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]
//   cross_fwd(x, delta, A, B, C, D, delta_bias, softplus, orders, save) -> [y, segment_states]
//   cross_bwd(x, delta, A, B, C, D, delta_bias, softplus, orders, segment_states, dy)
//       -> [dx, ddelta, dA, dB, dC, dD, ddelta_bias]
//   cross_fwd_lowrank(x, codes, dt_weight, A, B, C, D, delta_bias, softplus, orders) -> y   (inference; step
//       sizes codes (batch, L, K, R) times dt_weight (K, D, R), summed in the kernel)
//   state_fusion_fwd(h, weight, offsets, C, x, D) -> y   (Spatial-Mamba's state fusion, state_fusion_cpu.cpp)
//   state_fusion_gated_fwd(h, weight, offsets, C, x, D, z, norm_weight, norm_bias, eps) -> LayerNorm(y) * silu(z)
//   state_fusion_bwd(h, weight, offsets, C, dy) -> [dh, dweight, dC]
//   depthwise3x3_fwd(x, weight, bias, silu, residual) -> y   (the blocks' depthwise convolutions, depthwise_cpu.cpp)
//   depthwise3x3_bwd_weight(x, grad) -> (dweight, dbias)      (their weight and bias gradients in training)
//
// Layouts are those of vssm.ops.selective_scan (u: (batch, channels, L), B/C: (batch, G, N, L) or (batch, N, L))
// and of its cross-scan entry (x: (batch, L, D) map tokens, delta: (batch, L, K, D), B/C: (batch, L, K, N),
// orders: (K, L) or (batch, K, L) positions, y: (batch, L, D) float32 sum over the K directions). Absent
// optional tensors are None; absent outputs come back as empty tensors. Any strides are accepted; the kernels
// are fastest when channels are contiguous (time-major sequences, channels-last maps).
//
// Every entry checks every argument before a kernel reads it (TORCH_CHECK: ValueError for shapes and values,
// TypeError for dtypes, RuntimeError for devices, each naming the argument and what was expected): shapes,
// dtypes, the device, N <= kMaxState, the residuals' shape, and that every row of an order table is a
// permutation of range(L) (the kernels index memory with it and write each position's gradient once).
//
// Test switch: with the environment variable VSSM_CPU_POISON=1 every output and partial-sum buffer this file
// allocates uninitialised starts as NaN, so an element a kernel forgets to write shows in the results.
#include <torch/extension.h>

#include <cstdlib>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "depthwise_cpu.h"
#include "scan_cpu_problem.h"
#include "state_fusion_cpu.h"

namespace {

using at::Tensor;
using c10::optional;
using vssm_cpu::Problem;
using vssm_cpu::Strides;

constexpr const char* kName = "selective_scan cpu";

int64_t segment_length(int64_t N) { return std::max<int64_t>(8, 128 / std::max<int64_t>(1, N)); }

// Channels per task: the group's channels cut into equal blocks of at most kBlock (a multiple of 16, the
// vector width), more of them when that would leave threads idle.
int block_size(int64_t tasks_per_block, int64_t dim) {
  const int64_t threads = at::get_num_threads();
  int64_t blocks = (dim + vssm_cpu::kBlock - 1) / vssm_cpu::kBlock;
  while (tasks_per_block * blocks < 2 * threads && dim / (blocks + 1) >= 16) ++blocks;
  const int64_t block = ((dim + blocks - 1) / blocks + 15) / 16 * 16;
  return static_cast<int>(std::min<int64_t>(block, vssm_cpu::kBlock));
}

bool present(const optional<Tensor>& t) { return t.has_value() && t->defined(); }

// A fresh uninitialised buffer, filled with NaN when VSSM_CPU_POISON=1 (tests).
Tensor fresh(Tensor t) {
  const char* poison = std::getenv("VSSM_CPU_POISON");
  if (poison && poison[0] == '1' && t.numel() > 0 && at::isFloatingType(t.scalar_type()))
    t.fill_(std::numeric_limits<float>::quiet_NaN());
  return t;
}

// ---- argument checks --------------------------------------------------------------------------------------

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), kName, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.device().is_cpu(), kName, ": ", name, " must be a CPU tensor, got ", t.device());
}

void check_shape(const Tensor& t, const char* name, const char* layout, at::IntArrayRef shape) {
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.sizes() == shape, kName, ": ", name, " must be ", layout, " = ", shape, ", got ", t.sizes());
}

void check_dims(const Tensor& t, const char* name, const char* layout, int64_t dims) {
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.dim() == dims, kName, ": ", name, " must be ", layout, ", got shape ", t.sizes());
}

void check_input_dtype(const Tensor& t, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK_TYPE(d == at::kFloat || d == at::kHalf || d == at::kBFloat16, kName, ": ", name,
                   " must be float32, float16 or bfloat16, got ", d);
}

void check_dtype(const Tensor& t, const char* name, at::ScalarType dtype, const char* whose) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, kName, ": ", name, " must have ", whose, " dtype ", dtype, ", got ",
                   t.scalar_type());
}

void check_floating(const Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), kName, ": ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
}

// B or C's dtype: the inputs' or float32, the same for both.
void check_weight_dtype(const Tensor& t, const char* name, at::ScalarType input) {
  TORCH_CHECK_TYPE(t.scalar_type() == input || t.scalar_type() == at::kFloat, kName, ": ", name, " must be ", input,
                   " (the inputs' dtype) or float32, got ", t.scalar_type());
}

void check_state_size(int64_t N) {
  TORCH_CHECK_VALUE(N >= 1 && N <= vssm_cpu::kMaxState, kName, ": N = ", N, " states; the cpu backend supports 1 to ",
                    vssm_cpu::kMaxState, " (use backend='torch')");
}

// A per-channel vector (D, delta_bias): (channels,) floating.
void check_channel_vector(const optional<Tensor>& t, const char* name, int64_t channels) {
  if (!present(t)) return;
  check_shape(*t, name, "(channels,)", {channels});
  check_floating(*t, name);
}

// The forward's saved states, (batch, n_segments, N, channels) float32.
void check_segments(const Tensor& seg, const vssm_cpu::Problem& p) {
  check_shape(seg, "segment_states (residuals[0])", "(batch, segments, N, channels) as saved by the forward",
              {p.batch, p.n_segments(), p.n_state, p.channels()});
  TORCH_CHECK_TYPE(seg.scalar_type() == at::kFloat, kName, ": segment_states must be float32, got ",
                   seg.scalar_type());
}

// Every row of an order table (rows, L) is a permutation of range(L).
void check_orders(const Tensor& orders, int64_t L) {
  const int64_t* idx = orders.data_ptr<int64_t>();
  const int64_t rows = orders.numel() / L, K = orders.size(-2);
  std::vector<uint8_t> seen(static_cast<size_t>(L));
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t t = 0; t < L; ++t) {
      const int64_t v = idx[r * L + t];
      TORCH_CHECK_VALUE(v >= 0 && v < L, kName, ": orders must hold positions in [0, ", L, "), got ", v, " at orders[",
                        orders.dim() == 3 ? std::to_string(r / K) + ", " : std::string(), r % K, ", ", t, "]");
      TORCH_CHECK_VALUE(!seen[v], kName, ": orders[", orders.dim() == 3 ? std::to_string(r / K) + ", " : std::string(),
                        r % K, "] must be a permutation of range(", L, "): position ", v,
                        " is read twice (again at step ", t, ")");
      seen[v] = 1;
    }
  }
}

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
void dispatch(at::ScalarType input, at::ScalarType weight, int64_t N, F&& f) {
  auto with_n = [&](auto in_tag, auto w_tag) {
    if (N == 1)
      f(in_tag, w_tag, std::integral_constant<int, 1>{});
    else
      f(in_tag, w_tag, std::integral_constant<int, 0>{});
  };
  auto with_weight = [&](auto in_tag) {
    using in_t = typename decltype(in_tag)::type;
    if (weight == at::kFloat)
      with_n(in_tag, Tag<float>{});
    else
      with_n(in_tag, Tag<in_t>{});
  };
  switch (input) {
    case at::kFloat: return with_n(Tag<float>{}, Tag<float>{});
    case at::kHalf: return with_weight(Tag<c10::Half>{});
    case at::kBFloat16: return with_weight(Tag<c10::BFloat16>{});
    default: TORCH_CHECK(false, kName, ": u must be float32, float16 or bfloat16, got ", input);
  }
}

// (batch, channels, L) with channels split into `groups` of `dim`, as [b][p][k][d] strides.
Strides sequence_strides(const Tensor& t, int64_t dim) {
  return {t.stride(0), t.stride(2), dim * t.stride(1), t.stride(1)};
}

// A (batch, channels, L) tensor whose channels are contiguous: a view when it already is one.
Tensor time_major(const Tensor& t) {
  if (t.stride(1) == 1 || t.size(1) == 1) return t;
  return t.transpose(1, 2).contiguous().transpose(1, 2);
}

// B or C, (batch, G, N, L) grouped or (batch, N, L) shared, as [b][p][k][n] strides and its group count.
Strides group_strides(const Tensor& t, int64_t& groups) {
  if (t.dim() == 3) {
    groups = 1;
    return {t.stride(0), t.stride(2), 0, t.stride(1)};
  }
  groups = t.size(1);
  return {t.stride(0), t.stride(3), t.stride(1), t.stride(2)};
}

struct Constants {  // A, D, delta_bias as contiguous float32
  Tensor A, D, bias;
};

Constants constants(const Tensor& A, const optional<Tensor>& D, const optional<Tensor>& bias) {
  Constants c;
  c.A = A.to(at::kFloat).contiguous();
  c.D = present(D) ? D->to(at::kFloat).contiguous() : Tensor();
  c.bias = present(bias) ? bias->to(at::kFloat).contiguous() : Tensor();
  return c;
}

void fill_constants(Problem& p, const Constants& c, bool softplus) {
  p.A = c.A.data_ptr<float>();
  p.D = c.D.defined() ? c.D.data_ptr<float>() : nullptr;
  p.bias = c.bias.defined() ? c.bias.data_ptr<float>() : nullptr;
  p.softplus = softplus;
  p.seg_len = segment_length(p.n_state);
}

// ---- the standard entry: (batch, channels, L) sequences ----------------------------------------------------

// B or C of the standard entry: (batch, N, L) shared or (batch, G, N, L) grouped, G dividing the channels.
void check_bc(const Tensor& t, const char* name, int64_t batch, int64_t channels, int64_t N, int64_t L) {
  check_cpu(t, name);
  if (t.dim() == 3) {
    check_shape(t, name, "(batch, N, L)", {batch, N, L});
    return;
  }
  TORCH_CHECK_VALUE(t.dim() == 4, kName, ": ", name, " must be (batch, N, L) = ", at::IntArrayRef({batch, N, L}),
                    " or (batch, G, N, L) = [", batch, ", G, ", N, ", ", L, "], got shape ", t.sizes());
  const int64_t G = t.size(1);
  TORCH_CHECK_VALUE(t.size(0) == batch && t.size(2) == N && t.size(3) == L && G > 0, kName, ": ", name,
                    " must be (batch, G, N, L) = [", batch, ", G, ", N, ", ", L, "], got ", t.sizes());
  TORCH_CHECK_VALUE(channels % G == 0, kName, ": ", name, " has G = ", G, " groups, which does not divide the ",
                    channels, " channels");
}

struct Standard {
  Problem p;
  Tensor u, delta, z;
  Constants c;
  int64_t groups_B = 1, groups_C = 1;
};

Standard describe(const Tensor& u_in, const Tensor& delta_in, const Tensor& A, const Tensor& B,
                  const optional<Tensor>& C, const optional<Tensor>& D, const optional<Tensor>& z_in,
                  const optional<Tensor>& bias, bool softplus) {
  check_dims(u_in, "u", "(batch, channels, L)", 3);
  TORCH_CHECK_VALUE(u_in.numel() > 0, kName, ": u must be a non-empty (batch, channels, L) tensor, got ", u_in.sizes());
  check_input_dtype(u_in, "u");
  check_shape(delta_in, "delta", "(batch, channels, L) like u", u_in.sizes());
  check_dtype(delta_in, "delta", u_in.scalar_type(), "u's");
  Standard s;
  Problem& p = s.p;
  p.batch = u_in.size(0);
  const int64_t channels = u_in.size(1);
  p.length = u_in.size(2);
  check_dims(A, "A", "(channels, N)", 2);
  TORCH_CHECK_VALUE(A.size(0) == channels, kName, ": A must be (channels, N) = (", channels, ", N), got ", A.sizes());
  check_floating(A, "A");
  p.n_state = A.size(1);
  check_state_size(p.n_state);
  check_bc(B, "B", p.batch, channels, p.n_state, p.length);
  check_weight_dtype(B, "B", u_in.scalar_type());
  Strides sB = group_strides(B, s.groups_B), sC;
  if (present(C)) {
    check_bc(*C, "C", p.batch, channels, p.n_state, p.length);
    check_dtype(*C, "C", B.scalar_type(), "B's");
    sC = group_strides(*C, s.groups_C);
  } else {
    TORCH_CHECK_VALUE(!present(D) && !present(z_in), kName,
                      ": D and z act on y, which a states-only scan (C=None) does not compute");
  }
  check_channel_vector(D, "D", channels);
  check_channel_vector(bias, "delta_bias", channels);
  if (present(z_in)) {
    check_shape(*z_in, "z", "(batch, channels, L) like u", u_in.sizes());
    check_dtype(*z_in, "z", u_in.scalar_type(), "u's");
  }
  p.groups = std::lcm(s.groups_B, s.groups_C);
  TORCH_CHECK_VALUE(channels % p.groups == 0, kName, ": the groups of B and C do not divide ", channels, " channels");
  p.dim = channels / p.groups;
  p.B_div = p.groups / s.groups_B;
  p.C_div = p.groups / s.groups_C;
  s.u = time_major(u_in);
  s.delta = time_major(delta_in);
  p.u = s.u.data_ptr();
  p.su = sequence_strides(s.u, p.dim);
  p.delta = s.delta.data_ptr();
  p.sdt = sequence_strides(s.delta, p.dim);
  p.B = B.data_ptr();
  p.sB = sB;
  if (present(C)) {
    p.C = C->data_ptr();
    p.sC = sC;
  }
  if (present(z_in)) {
    s.z = time_major(*z_in);
    p.z = s.z.data_ptr();
    p.sz = sequence_strides(s.z, p.dim);
  }
  s.c = constants(A, D, bias);
  fill_constants(p, s.c, softplus);
  p.block = block_size(p.batch * p.groups, p.dim);
  return s;
}

std::vector<Tensor> fwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                        const optional<Tensor>& C, const optional<Tensor>& D, const optional<Tensor>& z,
                        const optional<Tensor>& bias, bool softplus, bool return_last, bool return_states, bool save) {
  Standard s = describe(u, delta, A, B, C, D, z, bias, softplus);
  Problem& p = s.p;
  TORCH_CHECK_VALUE(present(C) || return_states, kName, ": C=None is a states-only scan; pass return_states=True");
  const int64_t channels = p.channels(), N = p.n_state;
  vssm_cpu::ForwardOut o;
  Tensor y = present(C) ? fresh(at::empty_like(s.u)) : u.new_empty({0});
  if (present(C)) {
    o.y = y.data_ptr();
    o.sy = sequence_strides(y, p.dim);
  }
  Tensor last = fresh(at::empty({p.batch, channels, N}, u.options().dtype(at::kFloat)));
  o.last = last.data_ptr<float>();
  Tensor states_tm =
      return_states ? fresh(at::empty({p.batch, p.length, channels, N}, u.options())) : u.new_empty({0});
  if (return_states) o.states = states_tm.data_ptr();
  Tensor seg = save ? fresh(at::empty({p.batch, p.n_segments(), N, channels}, u.options().dtype(at::kFloat)))
                    : u.new_empty({0}, u.options().dtype(at::kFloat));
  if (save) o.seg = seg.data_ptr<float>();
  dispatch(u.scalar_type(), B.scalar_type(), N, [&](auto in_tag, auto w_tag, auto ns) {
    vssm_cpu::run_forward<typename decltype(in_tag)::type, typename decltype(w_tag)::type, decltype(ns)::value>(p, o);
  });
  Tensor states = return_states ? states_tm.permute({0, 2, 3, 1}) : states_tm;
  return {y, last, states, seg};
}

// dB or dC from the per-block partials (groups, n_blocks, batch, L, N), in the layout of B or C.
Tensor reduce_groups(const Tensor& part, int64_t groups_out, const Tensor& like) {
  const auto sizes = part.sizes();  // (G, nb, batch, L, N)
  Tensor r = part.view({groups_out, -1, sizes[2], sizes[3], sizes[4]}).sum(1);  // (G', batch, L, N)
  r = r.permute({1, 0, 3, 2});  // (batch, G', N, L)
  if (like.dim() == 3) r = r.select(1, 0);
  return r.to(like.scalar_type());
}

std::vector<Tensor> bwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                        const optional<Tensor>& C, const optional<Tensor>& D, const optional<Tensor>& z,
                        const optional<Tensor>& bias, bool softplus, const Tensor& seg, const optional<Tensor>& dy,
                        const optional<Tensor>& dlast, const optional<Tensor>& dstates) {
  Standard s = describe(u, delta, A, B, C, D, z, bias, softplus);
  Problem& p = s.p;
  const int64_t channels = p.channels(), N = p.n_state;
  check_segments(seg, p);
  if (present(dy)) {
    TORCH_CHECK_VALUE(present(C), kName, ": dy must be None for a states-only scan (C=None), which has no y");
    check_shape(*dy, "dy", "(batch, channels, L) like u", u.sizes());
    check_floating(*dy, "dy");
  }
  if (present(dlast)) {
    check_shape(*dlast, "dlast", "(batch, channels, N)", {p.batch, channels, N});
    check_floating(*dlast, "dlast");
  }
  if (present(dstates)) {
    check_shape(*dstates, "dstates", "(batch, channels, N, L)", {p.batch, channels, N, p.length});
    check_floating(*dstates, "dstates");
  }
  vssm_cpu::BackwardIn in;
  Tensor seg_c = seg.contiguous();
  in.seg = seg_c.data_ptr<float>();
  Tensor dy_tm, dlast_c, dstates_c;
  if (present(dy) && present(C)) {
    dy_tm = time_major(dy->to(u.scalar_type()));
    in.dy = dy_tm.data_ptr();
    in.sdy = sequence_strides(dy_tm, p.dim);
  }
  if (present(dlast)) {
    dlast_c = dlast->to(at::kFloat).contiguous();
    in.dlast = dlast_c.data_ptr<float>();
  }
  if (present(dstates)) {
    dstates_c = dstates->to(u.scalar_type());
    in.dstates = dstates_c.data_ptr();
    in.dst_b = dstates_c.stride(0);
    in.dst_c = dstates_c.stride(1);
    in.dst_n = dstates_c.stride(2);
    in.dst_t = dstates_c.stride(3);
  }
  const auto f32 = u.options().dtype(at::kFloat);
  vssm_cpu::BackwardOut o;
  Tensor du = fresh(at::empty_like(s.u)), ddelta = fresh(at::empty_like(s.delta));
  o.du = du.data_ptr();
  o.sdu = sequence_strides(du, p.dim);
  o.ddelta = ddelta.data_ptr();
  o.sddt = sequence_strides(ddelta, p.dim);
  Tensor dz;
  if (present(z)) {
    dz = in.dy ? fresh(at::empty_like(s.z)) : at::zeros_like(s.z);
    o.dz = dz.data_ptr();
    o.sdz = sequence_strides(dz, p.dim);
  }
  Tensor dA = fresh(at::empty({p.batch, channels, N}, f32)), dD = fresh(at::empty({p.batch, channels}, f32));
  Tensor dbias = fresh(at::empty({p.batch, channels}, f32));
  o.dA = dA.data_ptr<float>();
  o.dD = dD.data_ptr<float>();
  o.dbias = dbias.data_ptr<float>();
  Tensor dB = fresh(at::empty({p.groups, p.n_blocks(), p.batch, p.length, N}, f32));
  o.dB = dB.data_ptr<float>();
  Tensor dC;
  if (present(C)) {
    dC = fresh(at::empty_like(dB));
    o.dC = dC.data_ptr<float>();
  }
  dispatch(u.scalar_type(), B.scalar_type(), N, [&](auto in_tag, auto w_tag, auto ns) {
    vssm_cpu::run_backward<typename decltype(in_tag)::type, typename decltype(w_tag)::type, decltype(ns)::value>(
        p, in, o);
  });
  Tensor none = u.new_empty({0});
  return {du,
          ddelta,
          dA.sum(0),
          reduce_groups(dB, s.groups_B, B),
          present(C) ? reduce_groups(dC, s.groups_C, *C) : none,
          present(D) ? dD.sum(0) : none,
          present(z) ? dz : none,
          present(bias) ? dbias.sum(0) : none};
}

// ---- the fused cross-scan entry: K directions read one map through position tables ------------------------

struct Cross {
  Problem p;
  Constants c;
  Tensor orders, dt_weight;
};

// Step-size codes (batch, L, K, R) of the map x (batch, L, D), R >= 1, x's dtype, and their weight (K, D, R).
void check_codes(const Tensor& x, const Tensor& codes, const Tensor& dt_weight) {
  check_dims(codes, "codes", "(batch, L, K, R)", 4);
  TORCH_CHECK_VALUE(codes.size(0) == x.size(0) && codes.size(1) == x.size(1) && codes.size(2) > 0 &&
                        codes.size(3) > 0,
                    kName, ": codes must be (batch, L, K, R) = [", x.size(0), ", ", x.size(1),
                    ", K, R] with K, R >= 1, got ", codes.sizes());
  check_dtype(codes, "codes", x.scalar_type(), "x's");
  check_shape(dt_weight, "dt_weight", "(K, D, R)", {codes.size(2), x.size(2), codes.size(3)});
  check_floating(dt_weight, "dt_weight");
}

// With dt_weight (K, D, R), `delta` holds the rank-R codes (batch, L, K, R) of the step sizes instead.
Cross describe_cross(const Tensor& x, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                     const optional<Tensor>& D, const optional<Tensor>& bias, bool softplus, const Tensor& orders,
                     const optional<Tensor>& dt_weight = c10::nullopt) {
  check_dims(x, "x", "(batch, L, D)", 3);
  TORCH_CHECK_VALUE(x.numel() > 0, kName, ": x must be a non-empty (batch, L, D) map, got ", x.sizes());
  check_input_dtype(x, "x");
  Cross s;
  Problem& p = s.p;
  p.batch = x.size(0);
  p.length = x.size(1);
  p.dim = x.size(2);
  if (present(dt_weight)) {
    check_codes(x, delta, *dt_weight);
    s.dt_weight = dt_weight->to(at::kFloat).transpose(1, 2).contiguous();  // (K, R, D): a row per rank
    p.codes = delta.data_ptr();
    p.scodes = {delta.stride(0), delta.stride(1), delta.stride(2), delta.stride(3)};
    p.dt_weight = s.dt_weight.data_ptr<float>();
    p.rank = delta.size(3);
  } else {
    check_dims(delta, "delta", "(batch, L, K, D)", 4);
    TORCH_CHECK_VALUE(delta.size(0) == p.batch && delta.size(1) == p.length && delta.size(3) == p.dim &&
                          delta.size(2) > 0,
                      kName, ": delta must be (batch, L, K, D) = [", p.batch, ", ", p.length, ", K, ", p.dim,
                      "] with K >= 1, got ", delta.sizes());
    check_dtype(delta, "delta", x.scalar_type(), "x's");
  }
  p.groups = delta.size(2);
  check_dims(A, "A", "(K*D, N)", 2);
  TORCH_CHECK_VALUE(A.size(0) == p.groups * p.dim, kName, ": A must be (K*D, N) = (", p.groups * p.dim,
                    ", N), got ", A.sizes());
  check_floating(A, "A");
  p.n_state = A.size(1);
  check_state_size(p.n_state);
  check_shape(B, "B", "(batch, L, K, N)", {p.batch, p.length, p.groups, p.n_state});
  check_shape(C, "C", "(batch, L, K, N)", {p.batch, p.length, p.groups, p.n_state});
  check_weight_dtype(B, "B", x.scalar_type());
  check_dtype(C, "C", B.scalar_type(), "B's");
  check_channel_vector(D, "D", p.groups * p.dim);
  check_channel_vector(bias, "delta_bias", p.groups * p.dim);
  check_cpu(orders, "orders");
  TORCH_CHECK_TYPE(orders.scalar_type() == at::kLong, kName, ": orders must be int64, got ", orders.scalar_type());
  if (orders.dim() == 2) {
    check_shape(orders, "orders", "(K, L)", {p.groups, p.length});
    p.index_b = 0;
  } else {
    check_shape(orders, "orders", "(batch, K, L)", {p.batch, p.groups, p.length});
    p.index_b = p.groups * p.length;
  }
  s.orders = orders.contiguous();
  check_orders(s.orders, p.length);
  p.index = s.orders.data_ptr<int64_t>();
  p.index_k = p.length;
  p.u = x.data_ptr();
  p.su = {x.stride(0), x.stride(1), 0, x.stride(2)};
  if (!present(dt_weight)) {
    p.delta = delta.data_ptr();
    p.sdt = {delta.stride(0), delta.stride(1), delta.stride(2), delta.stride(3)};
  }
  p.B = B.data_ptr();
  p.sB = {B.stride(0), B.stride(1), B.stride(2), B.stride(3)};
  p.C = C.data_ptr();
  p.sC = {C.stride(0), C.stride(1), C.stride(2), C.stride(3)};
  p.sum_groups = true;
  s.c = constants(A, D, bias);
  fill_constants(p, s.c, softplus);
  p.block = block_size(p.batch, p.dim);  // a task owns every direction of its block
  return s;
}

Strides map_strides(const Tensor& t) { return {t.stride(0), t.stride(1), 0, t.stride(2)}; }

std::vector<Tensor> cross_fwd(const Tensor& x, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                              const optional<Tensor>& D, const optional<Tensor>& bias, bool softplus,
                              const Tensor& orders, bool save) {
  Cross s = describe_cross(x, delta, A, B, C, D, bias, softplus, orders);
  Problem& p = s.p;
  const auto f32 = x.options().dtype(at::kFloat);
  Tensor y = at::zeros({p.batch, p.length, p.dim}, f32);
  vssm_cpu::ForwardOut o;
  o.y = y.data_ptr();
  o.sy = map_strides(y);
  Tensor seg = save ? fresh(at::empty({p.batch, p.n_segments(), p.n_state, p.channels()}, f32)) : at::empty({0}, f32);
  if (save) o.seg = seg.data_ptr<float>();
  dispatch(x.scalar_type(), B.scalar_type(), p.n_state, [&](auto in_tag, auto w_tag, auto ns) {
    vssm_cpu::run_forward<typename decltype(in_tag)::type, typename decltype(w_tag)::type, decltype(ns)::value>(p, o);
  });
  return {y, seg};
}

// The map entry's inference forward with the step sizes computed in the kernel from rank-R codes:
// delta[b, p, k, d] = sum_r codes[b, p, k, r] * dt_weight[k, d, r] (VMamba's dt_projs), never written out.
// N = 1 kernels only; other N (or a generic build) get the product computed first and the plain entry.
Tensor cross_fwd_lowrank(const Tensor& x_in, const Tensor& codes, const Tensor& dt_weight, const Tensor& A,
                         const Tensor& B, const Tensor& C, const optional<Tensor>& D, const optional<Tensor>& bias,
                         bool softplus, const Tensor& orders) {
  check_dims(x_in, "x", "(batch, L, D)", 3);
  check_input_dtype(x_in, "x");
  check_codes(x_in, codes, dt_weight);
  check_dims(A, "A", "(K*D, N)", 2);
  if (A.size(1) != 1) {  // the kernels that take codes are the N = 1 ones
    const Tensor delta = at::einsum("blkr,kdr->blkd", {codes, dt_weight.to(codes.scalar_type())});
    return cross_fwd(x_in, delta, A, B, C, D, bias, softplus, orders, false)[0];
  }
  // the N = 1 kernels' layout, contiguous channels (a clone: contiguous() keeps a single channel's stride)
  const Tensor x = x_in.stride(2) == 1 ? x_in : x_in.clone(at::MemoryFormat::Contiguous);
  Cross s = describe_cross(x, codes, A, B, C, D, bias, softplus, orders, dt_weight);
  Problem& p = s.p;
  Tensor y = at::zeros({p.batch, p.length, p.dim}, x.options().dtype(at::kFloat));
  vssm_cpu::ForwardOut o;
  o.y = y.data_ptr();
  o.sy = map_strides(y);
  dispatch(x.scalar_type(), B.scalar_type(), p.n_state, [&](auto in_tag, auto w_tag, auto ns) {
    vssm_cpu::run_forward<typename decltype(in_tag)::type, typename decltype(w_tag)::type, decltype(ns)::value>(p, o);
  });
  return y;
}

std::vector<Tensor> cross_bwd(const Tensor& x, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                              const optional<Tensor>& D, const optional<Tensor>& bias, bool softplus,
                              const Tensor& orders, const Tensor& seg, const Tensor& dy) {
  Cross s = describe_cross(x, delta, A, B, C, D, bias, softplus, orders);
  Problem& p = s.p;
  const int64_t N = p.n_state, channels = p.channels();
  check_segments(seg, p);
  check_shape(dy, "dy", "(batch, L, D) like x", x.sizes());
  check_floating(dy, "dy");
  const auto f32 = x.options().dtype(at::kFloat);
  Tensor seg_c = seg.contiguous(), dy_f = dy.to(at::kFloat);
  vssm_cpu::BackwardIn in;
  in.seg = seg_c.data_ptr<float>();
  in.dy = dy_f.data_ptr();
  in.sdy = map_strides(dy_f);
  vssm_cpu::BackwardOut o;
  Tensor dx = at::zeros({p.batch, p.length, p.dim}, f32);
  o.du = dx.data_ptr();
  o.sdu = map_strides(dx);
  Tensor ddelta = fresh(at::empty(delta.sizes(), delta.options()));
  o.ddelta = ddelta.data_ptr();
  o.sddt = {ddelta.stride(0), ddelta.stride(1), ddelta.stride(2), ddelta.stride(3)};
  Tensor dA = fresh(at::empty({p.batch, channels, N}, f32)), dD = fresh(at::empty({p.batch, channels}, f32));
  Tensor dbias = fresh(at::empty({p.batch, channels}, f32));
  o.dA = dA.data_ptr<float>();
  o.dD = dD.data_ptr<float>();
  o.dbias = dbias.data_ptr<float>();
  Tensor dB = fresh(at::empty({p.groups, p.n_blocks(), p.batch, p.length, N}, f32)), dC = fresh(at::empty_like(dB));
  o.dB = dB.data_ptr<float>();
  o.dC = dC.data_ptr<float>();
  dispatch(x.scalar_type(), B.scalar_type(), N, [&](auto in_tag, auto w_tag, auto ns) {
    vssm_cpu::run_backward<typename decltype(in_tag)::type, typename decltype(w_tag)::type, decltype(ns)::value>(
        p, in, o);
  });
  // (K, nb, batch, L, N) -> (batch, L, K, N)
  auto to_map = [&](const Tensor& part, const Tensor& like) {
    return part.sum(1).permute({1, 2, 0, 3}).to(like.scalar_type());
  };
  Tensor none = x.new_empty({0});
  return {dx.to(x.scalar_type()), ddelta, dA.sum(0), to_map(dB, B), to_map(dC, C),
          present(D) ? dD.sum(0) : none, present(bias) ? dbias.sum(0) : none};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vssm selective scan: compiled CPU kernels (see kernels/selective_scan_cpu)";
  m.attr("max_state") = vssm_cpu::kMaxState;
  m.def("segment_length", &segment_length, "steps between the states the forward saves for the backward, given N");
  m.def("fwd", &fwd, "selective scan forward");
  m.def("bwd", &bwd, "selective scan backward");
  m.def("cross_fwd", &cross_fwd, "fused cross-scan forward");
  m.def("cross_bwd", &cross_bwd, "fused cross-scan backward");
  m.def("cross_fwd_lowrank", &cross_fwd_lowrank,
        "fused cross-scan forward (inference) with the step sizes computed from rank-R codes and dt_weight");
  m.def("state_fusion_fwd", &vssm_cpu::state_fusion_fwd,
        "Spatial-Mamba's state fusion and observation, y = C * taps(h) + D * x");
  m.def("state_fusion_gated_fwd", &vssm_cpu::state_fusion_gated_fwd,
        "the state fusion and observation, then the mixer's norm and gate: LayerNorm(y) * silu(z) (inference)");
  m.def("state_fusion_bwd", &vssm_cpu::state_fusion_bwd,
        "gradients of the state fusion and observation but the skip: [dh, dweight, dC]");
  m.def("depthwise3x3_fwd", &vssm_cpu::depthwise3x3_fwd,
        "depthwise 3x3 convolution of a channels-last map (zero padding 1, stride 1), SiLU and residual optional");
  m.def("depthwise3x3_bwd_weight", &vssm_cpu::depthwise3x3_bwd_weight,
        "weight and bias gradients of depthwise3x3_fwd's convolution: (x, grad) -> (dweight, dbias)");
  m.def("fresh_buffer", [](int64_t n) { return fresh(at::empty({n}, at::kFloat)); },
        "n uninitialised float32 values allocated as the entry points allocate their outputs (NaN under "
        "VSSM_CPU_POISON=1): for the tests of the poisoning");
}
