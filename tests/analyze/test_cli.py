"""The analyze/ command-line tools, each run once on nano models at small sizes."""
import importlib
import importlib.util
import json
import os

import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tool(name):
    spec = importlib.util.spec_from_file_location(f"analyze_{name}", os.path.join(ROOT, "analyze", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png(path, min_side=100):
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > min_side, img.size


def png_title(path):
    with Image.open(path) as img:
        return img.text.get("Title", "")


@pytest.mark.parametrize("name", ["erf", "attnmap", "throughput", "flops", "compare", "breakdown"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_erf(tmp_path, capsys):
    out = tmp_path / "erf.png"
    assert tool("erf").main(["--model", "vmamba_nano", "fractalmamba_nano", "--images", "2", "--size", "48",
                             "--out", str(out), "--save-maps", str(tmp_path / "maps.pt")]) == 0
    text = capsys.readouterr().out
    assert "| vmamba_nano | random weights (no --checkpoint) |" in text and "| fractalmamba_nano | random weights (no --checkpoint) |" \
        in text and "erf: 2/2 images" in text
    assert "random weights (no --checkpoint): the ERF of the initialised architectures" in text
    assert_png(out, min_side=250)
    assert png_title(out) == ("Effective receptive field of the central output (RepLKNet method): "
                              "random weights (no --checkpoint)")
    import torch
    maps = torch.load(tmp_path / "maps.pt", weights_only=True)
    assert maps["vmamba_nano"].shape == (48, 48)


def test_erf_checkpoint_count_is_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool("erf").main(["--model", "vmamba_nano", "--checkpoint", "a.pth", "b.pth"])
    assert exit_info.value.code == 2
    assert "error: --checkpoint needs one file per model (1), got 2" in capsys.readouterr().err


def test_erf_loads_a_checkpoint_strictly(tmp_path, capsys):
    import torch
    import vssm
    path = tmp_path / "w.pth"
    torch.save({"model": vssm.create_model("vmamba_nano").state_dict()}, path)
    assert tool("erf").main(["--model", "vmamba_nano", "--checkpoint", str(path), "--images", "1", "--size", "32",
                             "--random", "--out", str(tmp_path / "e.png")]) == 0
    text = capsys.readouterr().out
    assert f"loaded checkpoint {path}" in text and "| vmamba_nano | w.pth |" in text and "random" not in text
    assert png_title(tmp_path / "e.png") == "Effective receptive field of the central output (RepLKNet method)"
    torch.save({"model": {"stray": torch.zeros(1)}}, path)
    assert tool("erf").main(["--model", "vmamba_nano", "--checkpoint", str(path),
                             "--out", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: VMamba (vmamba_nano) does not match the checkpoint")
    assert "unexpected in checkpoint (1): stray" in err
    # the quickstart's digits: 10 classes (before: refused for the 1000-class head the ERF does not use)
    torch.save({"model": vssm.create_model("vmamba_nano", num_classes=10).state_dict()}, path)
    assert tool("erf").main(["--model", "vmamba_nano", "--checkpoint", str(path), "--images", "1", "--size", "32",
                             "--random", "--out", str(tmp_path / "e.png")]) == 0
    assert f"loaded checkpoint {path}" in capsys.readouterr().out


def test_attnmap(tmp_path, capsys):
    out = tmp_path / "attn.png"
    assert tool("attnmap").main(["--model", "spatialmamba_nano", "--size", "64", "--matrix", "--max-tokens", "64",
                                 "--position", "0.25", "0.75", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for block in ("block 0.0: 16x16", "block 1.0: 8x8", "block 2.0: 4x4", "block 3.0: 2x2"):
        assert block in text
    assert_png(out)
    assert png_title(out) == ("Implicit attention of the scans of spatialmamba_nano, query at (0.25, 0.75) of the "
                              "image: random weights (no --checkpoint)")
    # block 0.0 (256 tokens) is too large for --max-tokens 64: said in the printout and under the figure
    assert "no matrix drawn for block 0.0: 16x16 = 256 tokens > --max-tokens 64" in text
    assert_png(tmp_path / "attn_matrix.png")
    assert png_title(tmp_path / "attn_matrix.png") == (
        "Implicit attention matrices of spatialmamba_nano: random weights (no --checkpoint). Not drawn (more tokens "
        "than --max-tokens 64): block 0.0: 16x16 = 256 tokens.")


def panel_gaps(fig) -> list:
    """Horizontal gaps in pixels between neighbouring panels' extents (labels, ticks and titles included)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = sorted((ax.get_tightbbox(renderer) for ax in fig.axes if ax.axison and ax.get_label() != "<colorbar>"),
                   key=lambda b: (round(b.y0), b.x0))
    return [b.x0 - a.x1 for a, b in zip(boxes, boxes[1:]) if abs(a.y0 - b.y0) < 5]


def test_attention_figures_keep_labels_off_their_neighbours():
    """Before: panels 1 pixel apart, a matrix's 'query' label against its neighbour's tick labels."""
    import torch
    from vssm.analysis.plots import attention_plot, matrix_plot, plt
    matrices = {f"block {i}.0": torch.rand(n, n) + 0.01 for i, n in enumerate((1024, 256, 64, 16))}
    fig = matrix_plot(matrices, left_out=["Not drawn: block 0.0 (3136 tokens)."])
    gaps = panel_gaps(fig)
    assert len(gaps) == 2 and min(gaps) >= 5, gaps  # three panels a row, then one
    plt.close(fig)
    rows = {f"block {i}.0": torch.rand(n, n) + 0.01 for i, n in enumerate((56, 28, 14, 7, 7))}
    fig = attention_plot(torch.rand(224, 224, 3), (0.5, 0.5), rows)
    gaps = panel_gaps(fig)
    assert len(gaps) == 4 and min(gaps) >= 5, gaps
    plt.close(fig)


def test_attnmap_rejects_unknown_blocks(capsys):
    """Before: SystemExit("error: ...") from inside main, which a shell sees as exit status 1."""
    assert tool("attnmap").main(["--model", "vmamba_nano", "--blocks", "0.9"]) == 2
    assert capsys.readouterr().err == "error: vmamba_nano has no block 0.9; blocks: 0.0, 1.0, 2.0, 2.1, 3.0\n"
    assert tool("attnmap").main(["--model", "vmamba_nano", "--blocks", "first"]) == 2
    assert capsys.readouterr().err == "error: block 'first' is not stage.block (e.g. 2.3)\n"


def test_throughput(tmp_path, capsys):
    out = tmp_path / "tp.json"
    assert tool("throughput").main(["--model", "vmamba_nano", "--reference", "none", "--size", "32", "24x40",
                                    "--batch-size", "2", "--train", "--warmup", "1", "--iters", "1",
                                    "--json", str(out), "--out", str(tmp_path / "tp.png")]) == 0
    text = capsys.readouterr().out
    assert "| vmamba_nano | 24x40 | 2 |" in text and "[4/4] vmamba_nano 24x40 train" in text
    results = json.loads(out.read_text())["results"]
    assert [r["size"] for r in results] == [[32, 32], [24, 40]]
    assert all(r["inference"]["images_per_s"] > 0 and r["train"]["images_per_s"] > 0 for r in results)
    assert f"wrote {tmp_path / 'tp.png'}" in text
    assert_png(tmp_path / "tp.png", min_side=400)  # four panels: images/s and peak MB, inference and training
    assert png_title(tmp_path / "tp.png").startswith("Throughput and peak memory: cpu (")


def test_bar_figure_labels_every_value_and_failures(tmp_path, monkeypatch):
    from vssm.analysis.plots import bar_figure, plt
    texts = []
    original = plt.Axes.text
    monkeypatch.setattr(plt.Axes, "text", lambda ax, x, y, s, **kw: texts.append(s) or original(ax, x, y, s, **kw))
    path = bar_figure(["a", "b"], {"x": {"s1": [1.5, None], "s2": [2.25, 3.0]}, "y": {"s1": [4.0, 5.0], "s2": [6.0, 7.0]}},
                      str(tmp_path / "bars.png"), "two panels")
    assert texts == ["1.5", "failed", "2.25", "3", "4", "5", "6", "7"]
    assert png_title(path) == "two panels"


def test_throughput_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool("throughput").main(["--model", "vmamba_nano", "--size", "224x"])
    assert exit_info.value.code == 2
    assert "error: argument --size: size must be S or HxW (e.g. 224 or 256x384), got '224x'" in capsys.readouterr().err


def test_flops_classifiers(tmp_path, capsys):
    import vssm
    out = tmp_path / "flops.png"
    assert tool("flops").main(["--model", "vmamba_nano", "quadmamba_nano", "--size", "64", "96",
                               "--out", str(out)]) == 0
    text = capsys.readouterr().out
    model = vssm.create_model("vmamba_nano")
    expected = vssm.count_flops(model, (3, 64, 96)) / 1e9
    assert f"| vmamba_nano | {sum(p.numel() for p in model.parameters()) / 1e6:.3f} | {expected:.4f} |" in text
    assert f"wrote {out}" in text
    assert_png(out, min_side=150)
    assert png_title(out) == ("Classifiers: FLOPs (fvcore, 1 per multiply-add) at 64x96, batch 1, and parameters")
    from vssm.analysis.commands import flops
    assert flops.parse_args(["--task", "det"]).out == os.path.join("output", "flops_det.png")


@pytest.mark.parametrize("task", ["det", "seg"])
def test_flops_of_detector_and_segmentor(task, tmp_path, capsys):
    pytest.importorskip("mmdet" if task == "det" else "mmseg")
    out = tmp_path / "flops.png"
    assert tool("flops").main(["--model", "vmamba_nano", "--task", task, "--size", "64", "96",
                               "--out", str(out)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if "_nano.py |" in line)
    params, gflops, backbone_params, backbone_gflops = (float(v) for v in row.split("|")[2:6])
    assert params > backbone_params > 1 and gflops > backbone_gflops > 0
    assert_png(out, min_side=150)
    assert png_title(out).endswith("at 64x96: FLOPs (fvcore, 1 per multiply-add) and parameters")


def test_flops_without_a_config(tmp_path, capsys):
    assert tool("flops").main(["--model", "quadmamba_lite", "--task", "det"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no det config for quadmamba_lite (looked for configs/detection/quadmamba/")
    assert err.endswith("pass --config\n") and err.count("\n") == 1
    missing = tmp_path / "absent.py"
    assert tool("flops").main(["--task", "det", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: config file not found: {missing}\n"


def test_compare_quick(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert tool("compare").main(["--quick", "--models", "vmamba_nano", "spatialmamba_nano", "--reference", "none",
                                 "--sizes", "32", "48", "--out", str(out)]) == 0
    report = (out / "compare.md").read_text()
    assert "| vmamba_nano |" in report and "| spatialmamba_nano |" in report and "48x48" in report
    for png in ("erf.png", "resolution_time.png", "resolution_memory.png"):
        assert_png(out / png)
    results = json.loads((out / "compare.json").read_text())["results"]
    assert set(results["vmamba_nano"]["resolution"]) == {"32", "48"}
    assert 0 < results["vmamba_nano"]["erf"]["area_50"] <= results["vmamba_nano"]["erf"]["area_99"] <= 1


@pytest.mark.parametrize("name,argv,message", [
    ("erf", ["--model", "vmamba_nan"], "unknown model 'vmamba_nan': not a vssm model"),
    ("erf", ["--model", "vmamba_nano", "--size", "0"], "argument --size: must be at least 1, got 0"),
    ("erf", ["--model", "vmamba_nano", "--images", "0"], "argument --images: must be at least 1, got 0"),
    ("attnmap", ["--model", "convnext_tinyy"], "unknown model 'convnext_tinyy'"),
    ("attnmap", ["--model", "vmamba_nano", "--size", "32", "0"], "argument --size: must be at least 1, got 0"),
    ("throughput", ["--model", "vmamba_nano", "--reference", "resnet_9000"], "unknown model 'resnet_9000'"),
    ("throughput", ["--model", "vmamba_nano", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    ("throughput", ["--model", "vmamba_nano", "--iters", "0"], "argument --iters: must be at least 1, got 0"),
    ("flops", ["--model", "nope", "--task", "det"], "unknown model 'nope'"),
    ("flops", ["--size", "0"], "argument --size: must be at least 1, got 0"),
    ("compare", ["--quick", "--models", "vmamba_nano", "nope"], "unknown model 'nope'"),
    ("compare", ["--quick", "--sizes", "32", "0"], "argument --sizes: must be at least 1, got 0"),
])
def test_bad_arguments_are_named_before_any_work(name, argv, message, capsys):
    """Before: tracebacks from deep inside (PIL, conv2d, the model registry), or erf blaming the data folder."""
    with pytest.raises(SystemExit) as exit_info:
        tool(name).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err, err


def test_missing_image_folder_is_one_line(tmp_path, capsys):
    assert tool("erf").main(["--model", "vmamba_nano", "--data-path", str(tmp_path / "nowhere"), "--size", "32",
                             "--out", str(tmp_path / "e.png")]) == 2
    assert capsys.readouterr().err == f"error: image folder not found: {tmp_path / 'nowhere'}\n"


def test_throughput_exits_non_zero_when_a_measurement_failed(tmp_path, capsys, monkeypatch):
    """Before: exit 0 with 'failed' in the table."""
    from vssm.analysis.commands import throughput as module

    def measure_isolated(name, **kwargs):
        if kwargs["train"]:
            raise RuntimeError("measuring vmamba_nano failed:\nRuntimeError: CUDA out of memory")
        return {"images_per_s": 10.0, "peak_memory_mb": 1.0}
    monkeypatch.setattr(module, "measure_isolated", measure_isolated)
    assert module.main(["--model", "vmamba_nano", "--reference", "none", "--size", "32", "--train",
                        "--out", str(tmp_path / "tp.png")]) == 1
    captured = capsys.readouterr()
    assert "| vmamba_nano | 32x32 | 8 | 10.00 | 1 | failed | - |" in captured.out
    assert "error: 1 of 2 measurements failed: vmamba_nano 32x32 train" in captured.err


def test_breakdown_attributes_time_to_kinds_operators_and_blocks(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert tool("breakdown").main(["--model", "quadmamba_nano", "--train", "--batch-size", "1", "--size", "64",
                                   "--iters", "1", "--warmup", "1", "--json", str(out), "--products",
                                   "--threads", "1", "--out", str(tmp_path / "b.png")]) == 0
    text = capsys.readouterr().out
    assert_png(tmp_path / "b.png", min_side=300)
    assert png_title(tmp_path / "b.png") == "Profiled time by kind: batch 1 at 64x64, 1 thread, fp32"
    assert "## quadmamba_nano: inference" in text and "## quadmamba_nano: training step" in text
    figures = json.loads(out.read_text())
    assert [f["mode"] for f in figures] == ["inference", "training step"]
    inference, training = figures
    assert any(k.endswith("/scan") for k in inference["kind"]), inference["kind"]
    assert any("score_predictor" in k for k in inference["block"]), "QuadMamba's own part is not named"
    assert any(k.startswith("backward/") for k in training["kind"]) and any(
        k.startswith("optimizer/") for k in training["kind"]), training["kind"]
    total = sum(inference["kind"].values())
    assert total > 0 and abs(sum(inference["operator"].values()) - total) < 0.05 * total
    assert "| product | phase | calls/step | ms | GFLOP/s |" in text
    # inference: the fused products (oneDNN's linear with its activation); training: autograd's mm and addmm
    for figure, phases, product in ((inference, {"forward"}, "linear"), (training, {"forward", "backward"}, "mm")):
        products = figure["products"]
        assert {k.split("/")[0] for k in products} == phases, products
        for phase in phases:
            assert any(k.startswith(f"{phase}/{product} ") for k in products), products
            assert any(k.startswith(f"{phase}/conv ") for k in products), products
        assert all(v["calls"] > 0 and v["ms"] > 0 and v["gflop"] > 0 for v in products.values()), products


def test_breakdown_products_count_the_flops_of_each_shape():
    """The products table's FLOPs and labels, from kernels of known size: a fused linear with its GELU, one with
    a residual added in the kernel, a strided grouped convolution, and the mm / addmm / bmm of autograd's path."""
    from torch.profiler import profile

    from vssm.analysis.commands.breakdown import product_rates, product_table
    from vssm.models import fused
    torch.manual_seed(0)
    fc, conv = torch.nn.Linear(16, 32), torch.nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2)
    x, image = torch.randn(2, 5, 16), torch.randn(3, 8, 9, 9)
    with profile(record_shapes=True) as prof:
        with torch.no_grad():
            fused.linear(x, fc, torch.nn.GELU())  # fused: 10 rows x 16 -> 32
            fused.mlp(x, fc, torch.nn.GELU(), torch.nn.Linear(32, 16), residual=torch.randn(2, 5, 16))
            fused.conv2d(image, conv)
        a = torch.randn(4, 6, requires_grad=True)
        (a @ torch.randn(6, 7)).sum().backward()  # mm forward, one in the backward (a's gradient)
        torch.nn.functional.linear(torch.randn(2, 5, 6), torch.randn(3, 6), torch.randn(3))  # addmm, bias first
        torch.bmm(torch.randn(2, 3, 4), torch.randn(2, 4, 5))
        image.requires_grad_()
        conv(image).sum().backward()  # aten::convolution, whichever kernel; its backward: two products
    rates = product_rates(prof.events(), steps=1)
    flops = {key: round(v[2] * 1e9) for key, v in rates.items()}
    with torch.no_grad():
        fusable = fused.eager_inference(x, fc)  # oneDNN's fused kernels ran (the CPU build has them)
    if fusable:
        assert flops[("forward", "linear 10x16 -> 32")] == 2 * 2 * 10 * 16 * 32  # and the mlp's fc1
        assert flops[("forward", "linear 10x32 -> 16 + residual")] == 2 * 10 * 32 * 16  # fc2
    conv_flops = 2 * 3 * 12 * 5 * 5 * 4 * 9
    assert flops[("forward", "mm 4x6 @ 6x7")] == 2 * 4 * 6 * 7
    assert flops[("backward", "conv 3x8x9x9 3x3/2 g2 -> 12")] == 2 * conv_flops
    assert sum(v for (phase, _), v in flops.items() if phase == "backward") == 2 * 4 * 6 * 7 + 2 * conv_flops
    assert flops[("forward", "conv 3x8x9x9 3x3/2 g2 -> 12")] == conv_flops * 2  # fused and autograd's
    assert flops[("forward", "bmm 2x3x4 @ 4x5")] == 2 * 2 * 3 * 4 * 5
    assert flops[("forward", "mm 10x6 @ 6x3")] == 2 * 10 * 6 * 3
    text = product_table(rates)
    assert "| mm 4x6 @ 6x7 | forward | 1 |" in text and text.splitlines()[-1].startswith("| (all) |")


@pytest.mark.parametrize("name,argv", [("erf", ["--model", "vmamba_nano"]), ("attnmap", ["--model", "vmamba_nano"]),
                                       ("throughput", ["--model", "vmamba_nano"]), ("flops", []),
                                       ("breakdown", ["--model", "vmamba_nano"])])
@pytest.mark.parametrize("out,problem", [("", "no file named"), ("FOLDER", "is a folder"),
                                         ("maps.txt", "must end in .png"),
                                         ("FILE/sub/x.png", "is a file, so the folder")])
def test_pictures_that_cannot_be_written_are_refused_before_any_work(name, argv, out, problem, tmp_path, capsys):
    """Before: erf wrote FOLDER.png while saying it wrote FOLDER, and a .txt name or a folder for --save-maps ended
    in a traceback after the whole computation."""
    (tmp_path / "FILE").write_text("x")
    out = out.replace("FOLDER", str(tmp_path)).replace("FILE", str(tmp_path / "FILE"))
    if out and not os.path.isabs(out):
        out = str(tmp_path / out)
    module = importlib.import_module(f"vssm.analysis.commands.{name}")
    with pytest.raises(SystemExit) as stop:
        module.parse_args(argv + ["--out", out])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --out" in err and problem in err, err
    if name == "erf":
        with pytest.raises(SystemExit):
            module.parse_args(argv + ["--save-maps", str(tmp_path)])
        assert "argument --save-maps" in capsys.readouterr().err


@pytest.mark.parametrize("name,argv,default", [
    ("erf", ["--model", "vmamba_nano"], "erf.png"),
    ("attnmap", ["--model", "vmamba_nano"], "attention.png"),
    ("throughput", ["--model", "vmamba_nano"], "throughput.png"),
    ("flops", [], "flops.png"),
    ("breakdown", ["--model", "vmamba_nano"], "breakdown.png"),
])
def test_pictures_default_to_the_output_folder(name, argv, default):
    """Before: erf.png and attention.png in the current folder (the repository root in the README)."""
    module = importlib.import_module(f"vssm.analysis.commands.{name}")
    assert module.parse_args(argv).out == os.path.join("output", default)
