"""The seeded faults of ``scripts/mutants.py``: small realistic edits the test suite must catch.

A fault is one edit of one file: ``old``, a short snippet that occurs exactly once in ``file`` (repository-
relative), replaced by ``new``; ``tests``, the pytest selection that should fail (node ids, or a file and
``-k EXPR``, as typed on a command line; kept small so each fault runs in about a minute or less); ``why``, the
bug it stands for. ``tests/test_mutants_list.py`` checks the list against the checkout (every ``old`` occurs
exactly once, Python edits still parse, every area present, the test files exist).

To add a fault: pick a bug that would matter (not an edit with no observable effect: a different block size or
segment length that every consumer agrees on is an equivalent mutant, not a fault), write the smallest edit that
makes it, name the tests that must catch it, and run ``python scripts/mutants.py --only NAME``. A fault the tests
miss is a gap in the suite: add a test that asserts the behaviour, do not drop the fault.

Equivalent edits found and left out (no observable change, so no test can catch them): skipping the scheduler's
``load_state_dict`` on resume (timm's schedules are a function of the update count the loop passes; their state
is only their configuration); the CPU backend's segment length and channel block size (every kernel agrees on
them); the order of ``x_proj.{k}`` keys when stacking per-direction weights (state dicts list them in order).
"""
from dataclasses import dataclass

AREAS = {
    "cpu": "compiled CPU scan kernels (kernels/selective_scan_cpu: generic and N = 1 vector kernels)",
    "triton": "Triton scan kernels (vssm/ops/selective_scan/fused_triton.py, interpreted)",
    "cuda": "CUDA scan sources (kernels/selective_scan/csrc) through the CPU emulator",
    "torch": "pure-PyTorch blocked scan (vssm/ops/selective_scan/blocked.py)",
    "ops": "the selective scan's entry points and operators (vssm/ops/selective_scan/__init__.py, op.py)",
    "scans": "scan orders: cross, Hilbert, quadtree, gather / merge (vssm/scans)",
    "models": "model blocks and families (vssm/models)",
    "checkpoint": "checkpoint conversion and loading (vssm/models/vss.py, vssm/checkpoint)",
    "export": "ONNX export (vssm/export.py, vssm/ops/selective_scan/onnx.py, vssm/scans/onnx.py)",
    "engine": "the trainers' resume (vssm/engine)",
}


@dataclass(frozen=True)
class Fault:
    name: str
    area: str
    file: str
    old: str
    new: str
    tests: str
    why: str


N1 = "kernels/selective_scan_cpu/csrc/scan_cpu_n1.h"
GENERIC = "kernels/selective_scan_cpu/csrc/scan_cpu_kernels.h"
FAST_MATH = "kernels/selective_scan_cpu/csrc/fast_math.h"
CPU_TESTS = "tests/ops/test_selective_scan.py -k 'test_cpu_channel_blocks or (test_matches_naive and cpu and 196)'"
CPU_GENERIC_TESTS = ("tests/ops/test_selective_scan.py "
                     "-k 'test_cpu_single_channel or (test_matches_naive and cpu and (49 or 196))'")
TRITON = "vssm/ops/selective_scan/fused_triton.py"
TRITON_TESTS = "tests/ops/test_selective_scan.py::test_triton_crosses_tiles"
CUDA = "kernels/selective_scan/csrc/scan_core.h"
CUDA_TESTS = ("tests/ops/test_cuda_extension.py "
              "-k 'test_segments_with_slow_decays or (test_kernels_match_naive and (196 or 300) and 4-2)'")
BLOCKED = "vssm/ops/selective_scan/blocked.py"
TORCH_TESTS = "tests/ops/test_selective_scan.py -k 'test_matches_naive and torch and (7 or 196)'"
RESUME_TESTS = "tests/engine/test_trainers.py -k 'test_killed_run_resumes_to_identical_weights and classification'"

FAULTS = [
    # ---- compiled CPU backend: N = 1 vector kernels (scan_cpu_n1.h), forward and backward ----------------------
    Fault("cpu_n1_fwd_drops_D_skip", "cpu", N1,
          "Vec out = simd::fma(cn, h[v], Dv[v] * x);", "Vec out = cn * h[v];",
          CPU_TESTS, "N = 1 forward leaves out the D * u skip term"),
    Fault("cpu_n1_fwd_segment_off_by_one", "cpu", N1,
          "      seg += C_all;\n      to_next_segment = T - 1;", "      seg += C_all;\n      to_next_segment = T;",
          CPU_TESTS, "N = 1 forward saves each segment's entry state one step late (the backward recomputes from it)"),
    Fault("cpu_n1_bwd_drops_decay_in_dA", "cpu", N1,
          "const Vec wv = l * a * hp;", "const Vec wv = l * hp;",
          CPU_TESTS, "N = 1 backward: d loss / d a_t times a_t loses the factor a_t (dA, ddelta wrong)"),
    Fault("cpu_n1_bwd_overwrites_tile_sums", "cpu", N1,
          "sums[2 * t] = first_tile ? part_B : sums[2 * t] + part_B;", "sums[2 * t] = part_B;",
          CPU_TESTS, "N = 1 backward keeps only the last tile's share of dB (blocks wider than one tile)"),
    Fault("cpu_n1_bwd_dlast_wrong_step", "cpu", N1,
          "if (dlast && t == L - 1) l = l + tile.load(dlast, v);",
          "if (dlast && t == L - 2) l = l + tile.load(dlast, v);",
          CPU_TESTS, "N = 1 backward adds the last state's gradient one step early"),
    # ---- compiled CPU backend: generic kernels (scan_cpu_kernels.h) and fast math -------------------------------
    Fault("cpu_generic_fwd_ignores_B_state_stride", "cpu", GENERIC,
          "const float bn = to_float(Bp[pos * p.sB.p + n * p.sB.d]);\n        float* hn = h + n * kBlock;",
          "const float bn = to_float(Bp[pos * p.sB.p + n]);\n        float* hn = h + n * kBlock;",
          CPU_GENERIC_TESTS, "generic forward reads B's state n at offset n instead of n * stride"),
    Fault("cpu_generic_bwd_uses_current_decay", "cpu", GENERIC,
          "const float l = gdir[d] + g * cn + anx[d] * lam[d];", "const float l = gdir[d] + g * cn + an[d] * lam[d];",
          CPU_GENERIC_TESTS, "generic N = 1 adjoint step decays lambda by a_t instead of a_{t+1} (one channel)"),
    Fault("cpu_generic_bwd_forgets_decay_across_segments", "cpu", GENERIC,
          "std::copy(Ad, Ad + N * kBlock, a_next);", "std::fill(a_next, a_next + N * kBlock, 0.0f);",
          CPU_GENERIC_TESTS, "generic backward drops the adjoint carried from one segment into the previous one"),
    Fault("cpu_fast_sigmoid_wrong_for_negative", "cpu", FAST_MATH,
          "sigmoid = (x >= 0.0f ? 1.0f : t) / (1.0f + t);", "sigmoid = 1.0f / (1.0f + t);",
          CPU_GENERIC_TESTS, "softplus' derivative computed as sigmoid(|x|): wrong ddelta for negative raw steps"),
    Fault("cpu_state_fusion_gate_unbiased_variance", "cpu", "kernels/selective_scan_cpu/csrc/state_fusion_cpu.cpp",
          "std::sqrt(squares / static_cast<float>(E) + g.eps)",
          "std::sqrt(squares / static_cast<float>(E - 1) + g.eps)",
          "tests/models/test_spatial_mamba.py -k test_compiled_gate_equals_norm_then_gate",
          "Spatial-Mamba's gated state fusion kernel normalises by the unbiased variance (LayerNorm uses the biased)"),
    # ---- Triton kernels (interpreted) ---------------------------------------------------------------------------
    Fault("triton_combine_swapped_operands", "triton", TRITON,
          "return a_prev * a_next, a_next * x_prev + x_next", "return a_prev * a_next, a_prev * x_prev + x_next",
          TRITON_TESTS, "the associative scan composes two steps with the wrong step's decay"),
    Fault("triton_fwd_carry_not_decayed", "triton", TRITON,
          "h = a_cum * h_carry[:, :, None] + x_cum\n        h_carry",
          "h = h_carry[:, :, None] + x_cum\n        h_carry",
          TRITON_TESTS, "the forward adds the state carried from the previous tile without decaying it"),
    Fault("triton_fwd_carry_off_by_one", "triton", TRITON,
          "h_carry = tl.sum(tl.where((tl.arange(0, BLOCK_L) == BLOCK_L - 1)",
          "h_carry = tl.sum(tl.where((tl.arange(0, BLOCK_L) == BLOCK_L - 2)",
          TRITON_TESTS, "the forward carries the tile's second-to-last state into the next tile"),
    Fault("triton_bwd_lambda_carry_not_decayed", "triton", TRITON,
          "lam += alpha_cum * lam_carry[:, :, None]", "lam += lam_carry[:, :, None]",
          TRITON_TESTS, "the backward adds the adjoint of the next tile without its decay"),
    Fault("triton_bwd_softplus_derivative_at_output", "triton", TRITON,
          "ddt = ddt * tl.sigmoid(dt_raw)", "ddt = ddt * tl.sigmoid(dt)",
          TRITON_TESTS, "softplus' derivative evaluated at the step size instead of the raw input"),
    # ---- CUDA sources through the emulator ----------------------------------------------------------------------
    Fault("cuda_fwd_prefix_not_decayed", "cuda", CUDA,
          "h[n] = expf(p.A[c * p.n_state + n] * sum) * h[n] + end;", "h[n] = h[n] + end;",
          CUDA_TESTS, "parallel segments: the state entering a segment is not decayed over the previous segment"),
    Fault("cuda_bwd_segment_sum_off_by_one", "cuda", CUDA,
          "if (t > t0) sum += d_next;", "sum += d_next;",
          CUDA_TESTS, "parallel segments: the backward's decay between segments counts one step too many"),
    Fault("cuda_bwd_ddelta_drops_decay", "cuda", CUDA,
          "dd += g[n] * (A[n] * e * prev + Bv * uv);", "dd += g[n] * (A[n] * prev + Bv * uv);",
          CUDA_TESTS, "d delta' loses the decay factor e of d a_t / d delta'"),
    Fault("cuda_sigmoid_wrong_sign", "cuda", CUDA,
          "VSSM_HD float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }",
          "VSSM_HD float sigmoid(float x) { return 1.f / (1.f + expf(x)); }",
          CUDA_TESTS, "sigmoid with the wrong sign (the z gate and softplus' derivative)"),
    # ---- pure-PyTorch blocked backend ---------------------------------------------------------------------------
    Fault("torch_block_carry_not_decayed", "torch", BLOCKED,
          "torch.addcmul(end[:, prev], decay[:, prev], start[:, prev], out=start[:, cur])",
          "torch.add(end[:, prev], start[:, prev], out=start[:, cur])",
          TORCH_TESTS, "the state entering a block is not decayed over the previous block"),
    Fault("torch_bwd_uses_current_state", "torch", BLOCKED,
          "w[:, 1:].mul_(st.h[:, :L - 1])", "w[:, 1:].mul_(st.h[:, 1:L])",
          TORCH_TESTS, "the decay gradient multiplies by h_t instead of h_{t-1}"),
    Fault("torch_softplus_derivative_sign", "torch", BLOCKED,
          "ddt.mul_(torch.neg(st.dt).expm1_().neg_())", "ddt.mul_(torch.neg(st.dt).expm1_())",
          TORCH_TESTS, "softplus' derivative 1 - exp(-softplus) with the wrong sign"),
    Fault("torch_dlast_overwrites_gradient", "torch", BLOCKED,
          "g[:, L - 1] += dlast", "g[:, L - 1] = dlast",
          TORCH_TESTS, "the last state's gradient replaces, instead of adding to, the gradient from y there"),
    # ---- scan orders --------------------------------------------------------------------------------------------
    Fault("scans_cross_columns_swapped_sides", "scans", "vssm/scans/orders.py",
          "cols = rows.view(H, W).t().reshape(-1)", "cols = rows.view(W, H).t().reshape(-1)",
          "tests/scans/test_sequence.py -k test_gather_and_merge_match_the_authors_cross_scan",
          "column-major order built with H and W swapped (a permutation still, wrong on non-square maps)"),
    Fault("scans_merge_reverse_not_flipped", "scans", "vssm/scans/sequence.py",
          "y = y + ys[:, :, rev].flip(1)", "y = y + ys[:, :, rev]",
          "tests/scans/test_sequence.py -k 'test_gather_and_merge_match_the_authors_cross_scan or merge_plan'",
          "merging a reversed direction without flipping it back"),
    Fault("scans_merge_index_drops_direction", "scans", "vssm/scans/orders.py",
          "return (steps * K + torch.arange(K, device=orders.device)).reshape(-1).contiguous()",
          "return (steps * K).reshape(-1).contiguous()",
          "tests/scans/test_sequence.py -k test_gather_and_merge_are_adjoint_and_differentiable",
          "the per-direction merge index reads direction 0's token for every direction"),
    Fault("scans_hilbert_flip_off_by_one", "scans", "vssm/scans/hilbert.py",
          "h = H - 1 - h", "h = H - h",
          "tests/scans/test_hilbert.py -k test_variants_are_valid_curves",
          "the mirrored Hilbert variants flip rows to H - h (off by one, out of the grid)"),
    Fault("scans_hilbert_transposed_is_base", "scans", "vssm/scans/hilbert.py",
          "order = _curve_cpu(H, W, W < H)  # along the other side",
          "order = _curve_cpu(H, W, W >= H)  # along the other side",
          "tests/scans/test_hilbert.py -k test_variants_are_valid_curves",
          "the transposed variant runs along the same side as the base curve (two directions identical)"),
    Fault("scans_quadtree_fine_windows_transposed", "scans", "vssm/scans/quadtree.py",
          "fine = windows.permute(0, 3, 1, 4, 2, 5).reshape(-1)",
          "fine = windows.permute(0, 3, 4, 1, 2, 5).reshape(-1)",
          "tests/scans/test_quadtree.py -k test_nested_keeps_each_quadrant_in_its_slot",
          "the chosen quadrant's fine windows read column-first instead of raster"),
    Fault("scans_quadtree_merge_masks_swapped", "scans", "vssm/scans/quadtree.py",
          "return selected * mask + y.index_select(1, coarse_inv).view(batch, H, W, C) * (1 - mask)",
          "return selected * (1 - mask) + y.index_select(1, coarse_inv).view(batch, H, W, C) * mask",
          "tests/scans/test_quadtree.py -k test_nested_is_a_permutation_and_merge_inverts_it",
          "the quadtree merge puts fine tokens on the coarse quadrants and vice versa"),
    # ---- model blocks and families ------------------------------------------------------------------------------
    Fault("models_ss2d_drops_out_norm", "models", "vssm/models/blocks.py",
          "return fused.linear(self.out_norm(self.mix(x).to(x.dtype)), self.out_proj)",
          "return fused.linear(self.mix(x).to(x.dtype), self.out_proj)",
          "tests/models/test_vmamba.py -k 'test_logits_match_literal_channel_first_forward and nano'",
          "SS2D skips its output LayerNorm"),
    Fault("models_sliced_scan_reads_first_images_orders", "models", "vssm/models/blocks.py",
          "fn = self._scan_map if orders.dim() == 3 else lambda part: self._scan_map(part, orders)",
          "fn = lambda part, *o: self._scan_map(part, orders)",
          "tests/models/test_fused.py -k test_a_scan_in_slices_of_images_reads_each_images_orders",
          "a batch scanned in slices of images gives every slice the whole batch's per-image orders (QuadMamba)"),
    Fault("models_mixer_slices_a_batch_mixing_mix", "models", "vssm/models/blocks.py",
          "if (step_sizes > fused.LARGE_BYTES and self.images_independent and not self.training",
          "if (step_sizes > fused.LARGE_BYTES and not self.training",
          "tests/models/test_fused.py -k test_a_mixer_runs_in_slices",
          "a mixer whose mix combines images is run in slices of images, so each slice sees only its own images"),
    Fault("models_slices_out_of_order", "models", "vssm/models/fused.py",
          "return torch.cat([fn(*part) for part in parts])", "return torch.cat([fn(*part) for part in parts][::-1])",
          "tests/models/test_fused.py -k test_in_slices",
          "the slices of a large intermediate come back in the wrong order"),
    Fault("models_vssblock_mlp_wrong_norm", "models", "vssm/models/blocks.py",
          "return mlp_residual(self, x, self.norm2(x))", "return mlp_residual(self, x, self.norm(x))",
          "tests/models/test_vmamba.py -k 'test_logits_match_literal_channel_first_forward and nano'",
          "the block's MLP reads the first LayerNorm instead of norm2"),
    Fault("models_scan_map_drops_dt_bias", "models", "vssm/models/blocks.py",
          "proj[..., R + N:], orders, D=None if self.linearized else self.Ds.float(),\n"
          "                               delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,",
          "proj[..., R + N:], orders, D=None if self.linearized else self.Ds.float(),\n"
          "                               delta_bias=None, delta_softplus=True,",
          "tests/models/test_vmamba.py -k 'test_logits_match_literal_channel_first_forward and nano'",
          "the map scan forgets the step-size bias dt_projs_bias"),
    Fault("models_quadmamba_unroll_wrong_way", "models", "vssm/models/quadmamba.py",
          "y = torch.roll(y, shifts=(-self.shift[0] * (H // 8), -self.shift[1] * (W // 8)), dims=(1, 2))",
          "y = torch.roll(y, shifts=(self.shift[0] * (H // 8), self.shift[1] * (W // 8)), dims=(1, 2))",
          "tests/models/test_quadmamba.py -k test_mixer_matches_the_reference",
          "QuadMamba's shifted blocks roll the output back the wrong way"),
    Fault("models_both_ways_reads_forward_twice", "models", "vssm/models/blocks.py",
          "orders = cross_orders(1, L, seq.device)[0::2]", "orders = cross_orders(1, L, seq.device)[0:2]",
          "tests/models/test_quadmamba.py -k test_training_path_matches_the_reference_for_the_same_choice",
          "the bidirectional sequence scan reads the sequence forward in both directions (QuadMamba's training "
          "path; DirectionalScan.scan_both_ways, which FractalMamba's pathway shares)"),
    Fault("models_fractal_partial_run_count", "models", "vssm/models/fractal_mamba.py",
          "counts[-1] = run - pad", "counts[-1] = run",
          "tests/models/test_fractal_mamba.py -k 'pool_runs or test_logits_match_an_independent_reference'",
          "the pathway averages a partial last run over a whole run"),
    Fault("models_fractal_context_at_order_not_steps", "models", "vssm/models/fractal_mamba.py",
          "return inverse_orders(orders[:1])[0]", "return orders[0]",
          "tests/models/test_fractal_mamba.py -k test_logits_match_an_independent_reference",
          "the pathway's context is read at the Hilbert order's positions instead of each position's step"),
    Fault("models_fused_gelu_tanh", "models", "vssm/models/fused.py",
          'return "gelu", [], act.approximate', 'return "gelu", [], "tanh"',
          "tests/models/test_fused.py -k test_linear_matches_the_modules",
          "the fused inference path applies the tanh approximation of GELU where the model uses the exact one"),
    Fault("models_fused_batchnorm_without_shift", "models", "vssm/models/fused.py",
          "bias = bias + norm.bias", "bias = bias",
          "tests/models/test_fused.py -k test_conv_bn_act_folds_an_evaluating_batchnorm",
          "the folded BatchNorm loses its shift (beta)"),
    Fault("models_fused_packed_weights_ignore_edits", "models", "vssm/models/fused.py",
          "return tuple((-1, 0) if t is None else (t._version, t.data_ptr()) for t in tensors)", "return ()",
          "tests/models/test_fused.py -k test_packed_convolution_weights_follow_every_change",
          "the packed convolution weights are not rebuilt after an in-place change of the weights or statistics, or "
          "new data"),
    Fault("models_spatial_tap_mixing_transposed", "models", "vssm/models/spatial_mamba.py",
          "torch.tensor([(a * d, b * d) for d in dilations for a in (-1, 0, 1)",
          "torch.tensor([(b * d, a * d) for d in dilations for a in (-1, 0, 1)",
          "tests/models/test_spatial_mamba.py -k test_compiled_observation_equals_fusion_then_observation",
          "Spatial-Mamba's state-fusion taps take each kernel's entries transposed"),
    Fault("models_spatial_gate_ignores_norm_hooks", "models", "vssm/models/spatial_mamba.py",
          "and fused.eager_inference(x, self) and fused.hookless(norm))", "and fused.eager_inference(x, self))",
          "tests/models/test_spatial_mamba.py -k test_mixer_gate_in_the_kernel_only_where_nothing_observes_the_norm",
          "Spatial-Mamba's mixer skips a hooked out_norm's call in inference (its hooks never run)"),
    Fault("models_spatial_gate_bypasses_a_replaced_mix", "models", "vssm/models/spatial_mamba.py",
          'type(self).mix is StructureAwareSSM.mix and "mix" not in vars(self) and ', "",
          "tests/models/test_spatial_mamba.py -k test_mixer_gate_in_the_kernel_only_where_nothing_observes_the_norm",
          "Spatial-Mamba's mixer runs its own scan in inference where a subclass or an analysis replaced mix"),
    Fault("ops_direct_forward_under_dispatch_modes", "ops", "vssm/ops/selective_scan/op.py",
          "                or _get_current_dispatch_mode() is not None ", "                ",
          "tests/ops/test_operator.py -k test_inference_runs_the_operators_bodies_without_their_dispatch",
          "an inference scan skips the vssm:: operator under a dispatch mode (FLOP counters, fake tensors miss it)"),
    Fault("ops_direct_forward_while_tracing", "ops", "vssm/ops/selective_scan/op.py",
          "    return not (torch.jit.is_tracing() or ", "    return not (",
          "tests/ops/test_operator.py -k test_inference_runs_the_operators_bodies_without_their_dispatch",
          "an inference scan skips the vssm:: operator under torch.jit.trace (the traced graph has no scan)"),
    Fault("models_mlp_residual_inside_a_hooked_mlp", "models", "vssm/models/blocks.py",
          "            and fused.hookless(block.mlp)):", "            ):",
          "tests/models/test_fused.py -k test_a_blocks_mlp_residual_only_where_nothing_reads_the_mlps_output",
          "a block adds its residual inside an MLP whose output a hook reads (the hook sees the block's sum)"),
    Fault("models_mlp_residual_lost_when_strided", "models", "vssm/models/fused.py",
          "        return residual + mlp(x, fc1, act, fc2)\n", "        return mlp(x, fc1, act, fc2)\n",
          "tests/models/test_fused.py -k test_mlp_adds_the_residual_in_fc2s_kernel",
          "the fused MLP drops a residual it cannot read in its kernel (a strided one)"),
    Fault("models_fractal_bags_ignore_images", "models", "vssm/models/fractal_mamba.py",
          "    starts = torch.arange(batch, device=orders.device)[:, None] * L\n",
          "    starts = torch.zeros(batch, 1, dtype=torch.long, device=orders.device)\n",
          "tests/models/test_fractal_mamba.py -k test_inference_pathway_pools_from_the_map_and_adds_in_place",
          "FractalMamba's inference pathway pools every image's runs from the first image's map"),
    Fault("models_fractal_context_in_sequence_order", "models", "vssm/models/fractal_mamba.py",
          "    return _map_steps(orders) // run\n",
          "    return torch.arange(orders.shape[-1], device=orders.device) // run\n",
          "tests/models/test_fractal_mamba.py -k test_inference_pathway_pools_from_the_map_and_adds_in_place",
          "FractalMamba's inference pathway adds each coarse token's context at the sequence's steps, not at the "
          "map positions it pooled"),
    Fault("models_stem_convolution_writes_nchw", "models", "vssm/models/fused.py",
          "        return x.contiguous(memory_format=torch.channels_last)\n", "        return x\n",
          "tests/models/test_fused.py -k test_a_convolution_permuted_next_writes_channels_last",
          "a stem's convolution writes NCHW memory, which every LayerNorm after its permute copies first"),
    Fault("models_spatial_fusion_fp32_only", "models", "vssm/models/spatial_mamba.py",
          "compiled_dtypes = (torch.float32, torch.bfloat16, torch.float16)", "compiled_dtypes = (torch.float32,)",
          "tests/models/test_spatial_mamba.py -k test_state_fusion_kernels_run_under_bf16_autocast",
          "Spatial-Mamba under bf16 autocast falls back to the modules' convolutions (twice as slow in training)"),
    Fault("models_spatial_taps_under_autocast", "models", "vssm/models/spatial_mamba.py",
          'with torch.autocast("cpu", enabled=False):  # the taps in fp32', "if True:  # the taps in fp32",
          "tests/models/test_spatial_mamba.py -k test_state_fusion_kernels_run_under_bf16_autocast",
          "Spatial-Mamba's state-fusion taps computed (and kept) in bf16 under autocast"),
    Fault("models_spatial_folded_kernel_transposed", "models", "vssm/models/spatial_mamba.py",
          "kernel[:, :, taps[:, None], taps[None, :]] += a * k", "kernel[:, :, taps[None, :], taps[:, None]] += a * k",
          "tests/models/test_spatial_mamba.py -k 'test_folded_kernel_equals_the_three_dilated_ones or "
          "(test_logits_match_literal_forward_in_eval and nano)'",
          "Spatial-Mamba's folded 11 x 11 state-fusion kernel is the transpose of the dilated ones' sum"),
    # ---- checkpoint conversion and loading ----------------------------------------------------------------------
    Fault("ckpt_ln1_renamed_to_norm2", "checkpoint", "vssm/models/vss.py",
          r'''(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\.", r"\1.norm."),''',
          r'''(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\.", r"\1.norm2."),''',
          "tests/models/test_vmamba.py -k test_authors_layouts_load_strictly",
          "the authors' ln_1 is renamed to the block's second norm"),
    Fault("ckpt_grouped_dt_bias_named_weight", "checkpoint", "vssm/models/vss.py",
          'else f"{m.group(1)}.dt_projs_{m.group(3)}"', 'else f"{m.group(1)}.dt_projs_weight"',
          "tests/models/test_vmamba.py -k test_authors_layouts_load_strictly",
          "grouped-conv dt_projs.bias is converted to dt_projs_weight"),
    Fault("ckpt_prefers_ema_weights", "checkpoint", "vssm/checkpoint/loading.py",
          'WEIGHT_KEYS = ("model", "model_ema", "state_dict", "module")',
          'WEIGHT_KEYS = ("model_ema", "model", "state_dict", "module")',
          "tests/models/test_vmamba.py -k test_training_checkpoint_with_config_picks_model_or_ema",
          "a training checkpoint loads its EMA weights when the model's were asked for"),
    Fault("ckpt_backbone_prefix_off_by_one", "checkpoint", "vssm/checkpoint/loading.py",
          "inside = {k[len(prefix):]: v", "inside = {k[len(prefix) + 1:]: v",
          "tests/models/test_vmamba.py -k test_detector_checkpoint_loads_its_backbone_strictly",
          "a detector's backbone. prefix is cut one character too long"),
    # ---- ONNX export --------------------------------------------------------------------------------------------
    Fault("export_recurrence_carry_not_decayed", "export", "vssm/ops/selective_scan/onnx.py",
          "s_next = op.Add(op.Mul(decay, s), end)", "s_next = op.Add(s, end)",
          "tests/deploy/test_export_scan.py -k test_sequence_entry_matches_naive",
          "the exported (Scan loop) recurrence carries block states without their decay"),
    Fault("export_softplus_drops_relu", "export", "vssm/ops/selective_scan/onnx.py",
          "return op.Add(op.Add(op.Relu(x), op.Log(u)), rounding)", "return op.Add(op.Log(u), rounding)",
          "tests/deploy/test_export_scan.py -k test_sequence_entry_matches_naive",
          "the exported softplus leaves out max(x, 0)"),
    Fault("export_cross_columns_swapped_sides", "export", "vssm/scans/onnx.py",
          "columns = _flatten(op.Transpose(op.Reshape(positions, op.Concat(_dim(H), _dim(W), axis=0)), perm=[1, 0]))",
          "columns = _flatten(op.Transpose(op.Reshape(positions, op.Concat(_dim(W), _dim(H), axis=0)), perm=[1, 0]))",
          "tests/deploy/test_export_scan.py::test_cross_orders_computed_in_the_graph",
          "the in-graph cross orders (dynamic H x W) build the column order with H and W swapped"),
    # ---- the trainers' resume -----------------------------------------------------------------------------------
    Fault("engine_resume_does_not_reseed_epochs", "engine", "vssm/engine/trainer.py",
          "            seed_everything(c.SEED + 7919 * epoch + self.rank)", "            pass",
          RESUME_TESTS, "epochs draw from one random stream seeded at the start, so a resumed run's epochs see "
          "other random numbers (stochastic depth) than the uninterrupted run's"),
    Fault("engine_resume_forgets_optimizer", "engine", "vssm/engine/trainer.py",
          '            optimizer.load_state_dict(state["optimizer"])\n', "",
          RESUME_TESTS, "a resumed run starts with fresh optimizer moments"),
    Fault("engine_resume_forgets_ema", "engine", "vssm/engine/trainer.py",
          'ema.module.load_state_dict(state.get("model_ema", state["model"]))',
          'ema.module.load_state_dict(state["model"])',
          RESUME_TESTS, "a resumed run restarts the EMA from the model's weights"),
    Fault("engine_resume_repeats_an_epoch", "engine", "vssm/engine/trainer.py",
          'start_epoch = state["epoch"] + 1', 'start_epoch = state["epoch"]',
          RESUME_TESTS, "a resumed run trains the checkpoint's epoch again"),
    Fault("engine_bookkeeping_keeps_retrained_record", "engine", "vssm/engine/checkpoints.py",
          'kept = [r for r in records if r["epoch"] < start_epoch]',
          'kept = [r for r in records if r["epoch"] <= start_epoch]',
          "tests/engine/test_checkpoints.py::test_restore_bookkeeping_drops_epochs_to_be_trained_again",
          "resume keeps the log record of the epoch it is about to train again"),
]
