"""Every family compiles as one graph (torch.compile(fullgraph=True)) and exports (torch.export), with the
outputs and gradients of eager mode.

Dynamo's tracing (where graph breaks happen) does not depend on the compiler backend, so most tests use
``aot_eager`` (trace + AOT autograd, no code generation) to stay within the CI budget; one test runs the
inductor backend end to end.
"""
import pytest
import torch

import vssm
from vssm.ops.selective_scan.cpu import load_extension

NANO = ["vmamba_nano", "spatialmamba_nano", "quadmamba_nano", "fractalmamba_nano"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (compiled code of earlier tests counts toward dynamo's recompile limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(name, train=False):
    torch.manual_seed(0)
    model = vssm.create_model(name, num_classes=5)
    return model.train(train)


@pytest.mark.parametrize("name", NANO)
def test_fullgraph_inference_matches_eager(name):
    model = _model(name)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vmamba_nano", "spatialmamba_nano"])
def test_fullgraph_training_step_matches_eager(name):
    """Forward and backward through the registered autograd of both scan operators (map: VMamba; sequence with
    every state: Spatial-Mamba)."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grads = []
    for compiled in (False, True):
        model = _model(name, train=True)
        run = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
        run(x).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    # without the compiled CPU extension, eager Spatial-Mamba runs its state fusion in PyTorch's convolutions and
    # the graph too, but inductor's fusions reorder the sums (amplified back to the stem): differences are judged
    # against the largest gradient entry of the model (entries) and each tensor's norm (over four inputs at most
    # 2.3e-5 and 2.8e-5; a wrong gradient formula is off by order 1)
    scale = max(float(g.abs().max()) for g in grads[0].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=5e-5 * scale, msg=lambda m: f"{n}: {m}")
        norm = float(grads[0][n].norm())
        if norm > 1e-3 * scale:
            assert float((grads[1][n] - grads[0][n]).norm()) <= 1e-4 * norm, n


def test_quadmamba_training_compiles_as_one_graph():
    """QuadMamba trains through the mask arithmetic (Gumbel-Softmax with straight-through gradients): the compiled
    step draws the same noise from the same seed and gives eager's outputs and gradients, the quadrant predictor's
    included."""
    x = torch.randn(2, 3, 32, 32)
    outs, grads = [], []
    for compiled in (False, True):
        model = _model("quadmamba_nano", train=True)
        run = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
        torch.manual_seed(1)
        out = run(x)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    # stage 0 (8x8 maps); on stage 1's 4x4 maps the fine windows are single tokens, and the choice changes nothing
    predictor = [n for n in grads[0] if n.startswith("layers.0.") and ".score_predictor." in n]
    assert predictor and all(grads[0][n].abs().sum() > 0 for n in predictor), "gradients reach the quadrant predictor"
    for n in grads[0]:
        assert grads[1][n] is not None, n
        scale = float(grads[0][n].abs().max())  # the predictor's gradients are ~1e-7 .. 1e-5
        atol = 1e-4 * scale
        if ".score_predictor." in n:  # its last biases' gradients nearly cancel (~1e-8 against its weights' ~1e-6):
            # float32 rounding (eager's depthwise kernels, compiled's convolutions) reaches 6e-4 of the predictor's
            # largest gradient there; a wrong gradient is off by the bias's own size, 2e-2 of it
            predictor = n.split(".score_predictor.")[0] + ".score_predictor."
            atol = 2e-3 * max(float(grads[0][m].abs().max()) for m in grads[0] if m.startswith(predictor))
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=atol, msg=lambda m: f"{n}: {m}")


@pytest.mark.skipif(not hasattr(load_extension() or object(), "state_fusion_bwd"),
                    reason="the compiled CPU extension (with the state fusion kernels) is not built")
@pytest.mark.parametrize("train", [False, True])
def test_spatial_mamba_graph_calls_the_state_fusion_kernels(train):
    """Compiled, Spatial-Mamba's state fusion is the operator ``vssm::state_fusion_fwd`` (its backward
    ``vssm::state_fusion_bwd``; in inference ``vssm::state_fusion_gated_fwd``, with the mixer's out_norm and
    SiLU gate), one call per block, as in eager mode: not three dilated convolutions of replicate
    padded states in their place, which made compiled training several times slower than eager (the kernels
    take 141 ms of a Spatial-Mamba-T training step at batch 8, the convolutions 662 ms). Values and gradients:
    the tests above."""
    from torch._dynamo.backends.common import aot_autograd
    graphs = {"forward": [], "backward": []}

    def recorder(kind):
        def compiler(gm, example_inputs):
            graphs[kind].extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
            return gm.forward
        return compiler

    model = _model("spatialmamba_nano", train=train)
    x = torch.randn(2, 3, 32, 32)
    with torch.set_grad_enabled(train):
        out = torch.compile(model, fullgraph=True,
                            backend=aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward")))(x)
        if train:
            out.sum().backward()
    blocks = sum(len(stage.blocks) for stage in model.layers)
    # in inference the kernel that also applies the mixer's out_norm and gate
    forward = "vssm.state_fusion_fwd.default" if train else "vssm.state_fusion_gated_fwd.default"
    assert graphs["forward"].count(forward) == blocks
    # LayerNorms: each block's two and the head's, and in training each mixer's out_norm
    norms = sum("layer_norm" in op for op in graphs["forward"])
    assert norms == 2 * blocks + 1 + (blocks if train else 0)
    assert graphs["backward"].count("vssm.state_fusion_bwd.default") == (blocks if train else 0)
    # the convolutions left: the stem's, the downsamplings' and the blocks' two position encodings and depthwise
    # one (each once more in the backward: input and weight gradients in one convolution_backward)
    convolutions = sum("convolution" in op for op in graphs["forward"])
    assert convolutions == 5 + 3 * (len(model.layers) - 1) + 3 * blocks


@pytest.mark.skipif(not hasattr(load_extension() or object(), "cross_fwd_lowrank"),
                    reason="the compiled CPU extension (with the scan from step-size codes) is not built")
@pytest.mark.parametrize("name", ["vmamba_nano", "quadmamba_nano", "fractalmamba_nano"])
def test_compiled_inference_sums_the_step_sizes_in_the_scan(name):
    """Compiled inference scans from the step-size codes (``vssm::selective_scan_map_codes_fwd``, the kernel eager
    inference calls), not a product and the plain map entry; a training graph, or an export, keeps those."""
    from torch._dynamo.backends.common import aot_autograd
    ops = []

    def compiler(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    model = _model(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model, fullgraph=True, backend=aot_autograd(fw_compiler=compiler))(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert "vssm.selective_scan_map_codes_fwd.default" in ops and "vssm.selective_scan_map_fwd.default" not in ops
    ops.clear()
    torch._dynamo.reset()
    model.train()(x).sum()  # eager training, then its compiled graph
    torch.compile(model, fullgraph=True, backend=aot_autograd(fw_compiler=compiler))(x).sum().backward()
    assert "vssm.selective_scan_map_codes_fwd.default" not in ops and "vssm.selective_scan_map_fwd.default" in ops
    with torch.no_grad():  # (with gradients wanted, the models do not hand over codes)
        program = torch.export.export(model.eval(), (x,))
    exported = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert "vssm.selective_scan_map_codes_fwd.default" not in exported


def test_inductor_training_step_matches_eager():
    """Inductor's code and stride rules, not only dynamo's trace: Spatial-Mamba's state fusion (replicate
    padding of channels-last states) once failed a stride check in the compiled backward."""
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for compiled in (False, True):
        model = _model("spatialmamba_nano", train=True)
        run = torch.compile(model, fullgraph=True) if compiled else model
        run(x).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-3, atol=1e-5, msg=lambda m: f"{n}: {m}")


def test_inductor_matches_eager():
    model = _model("vmamba_nano")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NANO)
def test_export_matches_eager(name):
    model = _model(name)
    x = torch.randn(1, 3, 64, 64)
    program = torch.export.export(model, (x,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("vssm." in op for op in ops), "the scan stays one operator in the exported graph"
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)
