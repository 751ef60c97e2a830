"""Export a vssm classifier or dense backbone to ONNX, run by a stock ONNX Runtime (no custom operators).

    python -m vssm.export --model vmamba_tiny_s1l8 --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth --out vmamba.onnx
    python -m vssm.export --model spatialmamba_nano --backbone --size 512 512 --out backbone.onnx

The model is traced with ``torch.export`` and converted by ``torch.onnx.export(dynamo=True)``; the selective
scan and the scan-order tables are PyTorch operators (``vssm::selective_scan_fwd``, ``selective_scan_map_fwd``,
``scan_orders``) that the converter writes in standard ONNX operators through ``custom_translation_table``
(``vssm.ops.selective_scan.onnx``, ``vssm.scans.onnx``). The batch dimension is always dynamic; H and W are
dynamic where the family's scan orders can be computed in the graph (its family's ``export`` policy), with the
recurrence in ONNX ``Scan`` loops, else (and with ``--static``) the file is for the ``--size`` it was exported at
and the recurrence is plain operators (chunks of steps, no loops).

``--openvino`` also checks the file in OpenVINO's CPU plugin (f32); ``--int8 --calibration FOLDER`` writes a
statically quantized int8 file (``vssm.deploy.quantize``) beside the fp32 one, encoded for ONNX Runtime or, with
``--int8-runtime openvino``, for OpenVINO.

The file is checked before the command returns: ONNX Runtime (CPU) and PyTorch run the same random images
(the export's size at two batch sizes, and a second, non-square size where H and W are dynamic), and the
largest difference of every output is printed, absolute and relative to the output's largest value. Exit
status 1 when one exceeds ``TOLERANCE`` (the file is kept for inspection), 2 on unusable arguments.

Inputs are the images as the model takes them (resized and normalised, ``(batch, in_chans, H, W)`` float32);
the file's metadata (``vssm.*``) holds the model name, the mean, std and interpolation of its preprocessing
and, for classifiers, the class names.
"""
import argparse
import json
import os
import sys
import time
import warnings

import torch

from .checkpoint import CheckpointMismatchError, read_checkpoint
from .cli import UsageError, unwritable
from .models import ExportPolicy, family_of

TOLERANCE = 1e-4  # max |onnxruntime - torch| / max |torch|, per output
INPUT_NAME = "images"
EXAMPLE_BATCH = 2  # traced batch size (torch.export specialises sizes 0 and 1)
MIN_DYNAMIC_SIDE = 33  # traced H, W of a dynamic export: the last stage's map must be at least 2 x 2


class ExportError(UsageError):
    """Arguments that cannot be exported (unknown model, bad size, missing packages)."""


def size_policy(name: str) -> ExportPolicy:
    """Whether a registered model's export has a dynamic H x W, and why (its family's ``export``)."""
    return family_of(name).export


def translation_table(static: bool = False) -> dict:
    """``custom_translation_table`` for torch.onnx.export: the vssm operators in standard ONNX operators;
    ``static``: the scan's recurrence in plain operators where the sequence length is fixed (else Scan loops)."""
    from .ops.selective_scan.onnx import translations
    from .scans.onnx import TRANSLATIONS as orders
    return {**translations(static), **orders}


def require_packages(verify: bool = True):
    """A clear error when the packages of the export (onnx, onnxscript) or of its check (onnxruntime) are missing."""
    import importlib.util
    needed = ("onnx", "onnxscript") + (("onnxruntime",) if verify else ())
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"the ONNX export needs {', '.join(missing)}: pip install {' '.join(missing)} "
                          f"(requirements.txt pins the tested versions)")


# ---- the model ---------------------------------------------------------------------------------------------
def load_backbone(name: str = None, checkpoint: str = None, trust_checkpoint: bool = False, before_build=None):
    """The dense backbone of a registered size with a checkpoint's weights (strict; a classification checkpoint
    leaves its output norms initialised, reported), in eval mode, and the load report (None without one).

    Built for the checkpoint's input channels and stored model options, on the meta device first and checked
    against the weights (:func:`vssm.checkpoint.load_fitted`); ``before_build(meta_model)`` may refuse it.
    ``checkpoint``: a path, or what ``read_checkpoint`` returned for one."""
    from .checkpoint import checkpoint_info, load_fitted
    from .models.meta import on_meta_device
    if checkpoint is None:
        family = family_of(name)
        if before_build is not None:
            with on_meta_device():
                before_build(family.dense_backbone(name))
        return family.dense_backbone(name).eval(), None
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else ""
    saved = read_checkpoint(source, trust_checkpoint=trust_checkpoint) if source else checkpoint
    info = checkpoint_info(saved, source)
    name = name or info.model
    if name is None:
        raise ExportError(f"{source or 'the checkpoint'} does not say which model it holds: give --model")
    family = family_of(name)
    try:
        model, report = load_fitted(name, saved, info, source=source, before_build=before_build,
                                    build=family.dense_backbone, drop=("num_classes", "global_pool", "in_chans"),
                                    from_weights=("in_chans",))
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"--checkpoint {source} does not fit the backbone of {name}:\n{e}") from None
    return model.eval(), report


def input_channels(model) -> int:
    return model.get_submodule(model.first_conv).in_channels


def output_names(model) -> list:
    """``logits`` (``features`` without a classifier) for a classifier, ``stage{i}`` per output of a backbone."""
    indices = getattr(model, "out_indices", None)
    if indices is not None:
        return [f"stage{i}" for i in sorted(set(indices))]
    return ["logits" if model.num_classes else "features"]


# ---- export ------------------------------------------------------------------------------------------------
def check_size(size, dynamic: bool, source: str = None):
    """The traced size: two integers >= 1, and >= MIN_DYNAMIC_SIDE for a dynamic-size export. ``source`` names
    where the size came from in the error (default ``--size H W``)."""
    H, W = size
    source = source or f"--size {H} {W}"
    if H < 1 or W < 1:
        raise ExportError(f"{source}: the size must be two positive integers H W, got {H} {W}")
    if dynamic and min(H, W) < MIN_DYNAMIC_SIDE:
        raise ExportError(f"{source}: a dynamic-size export is traced at H, W >= {MIN_DYNAMIC_SIDE} (the last "
                          f"stage's map must be at least 2 x 2 to stay symbolic; got {H}x{W}); the file then runs at "
                          f"any size, smaller ones included (give --size); --static exports a file of this fixed size")


def check_output(path: str, inputs=(), also=()):
    """``--out`` must name a file whose folder exists or can be made and takes new files, before any work is done;
    neither it nor the other files the export writes (``also``, e.g. the fp32 file beside an int8 one) may be one
    of the ``inputs`` (the checkpoint: a file, or a hub folder's files), which the export would replace."""
    if not path:
        raise ExportError("--out is empty; name the ONNX file to write, e.g. model.onnx")
    if os.path.isdir(path):
        raise ExportError(f"--out {path} is a folder; name the ONNX file to write, e.g. "
                          f"{os.path.join(path, 'model.onnx')}")
    for written in (path, *also):
        for given in inputs:
            if given and _same_or_inside(written, given):
                raise ExportError(f"--out {path}: the export would write {written}, which is "
                                  f"{'in ' if os.path.isdir(given) else ''}the checkpoint {given} it reads; "
                                  f"choose another --out")
    problem = unwritable(path)
    if problem:
        raise ExportError(f"--out {problem}")


def _same_or_inside(written: str, given: str) -> bool:
    """Whether writing the file ``written`` would replace ``given`` (the same file) or a file of the folder
    ``given``. The file is written by renaming onto its path, so a link there is replaced, not followed."""
    target = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(written))), os.path.basename(written))
    source = os.path.realpath(given)
    if os.path.isdir(source):
        return os.path.dirname(target) == source and os.path.exists(target)
    return target == source


def to_onnx(module: torch.nn.Module, args: tuple, dynamic_shapes=None, input_names=None, output_names=None,
            static: bool = False):
    """``module(*args)`` as a ``torch.onnx.ONNXProgram`` in standard ONNX operators (inference, under no_grad),
    and the ``torch.export`` program it was converted from. ``dynamic_shapes`` as for ``torch.export.export``;
    ``static`` as for :func:`translation_table`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch-internal notice
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
        onnx_program = torch.onnx.export(program, args, dynamo=True, verbose=False, optimize=not static,
                                         custom_translation_table=translation_table(static), input_names=input_names,
                                         output_names=output_names)
    if static:
        optimize_without_rewrites(onnx_program.model)
    faster_operators(onnx_program.model)
    return onnx_program, program


def faster_operators(model):
    """The rewrites of :mod:`vssm.deploy.rewrites` (same arithmetic, operators runtimes compute faster), then
    the constants they left unused removed."""
    import onnx_ir.passes.common as common

    from .deploy.rewrites import batched_directional_products
    if batched_directional_products(model):
        common.RemoveUnusedNodesPass()(model)


def optimize_without_rewrites(model):
    """onnxscript's optimisation of an exported graph (inlining, constant folding, unused and duplicate
    nodes), less its pattern rewrites: their matcher's time grows with the square of the node count, minutes
    for the thousands of nodes of a static scan, and they find nothing to rewrite in its plain operators."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import _constant_folding
    fold = _constant_folding.FoldConstantsPass(
        shape_inference=True, input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
        output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT)
    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager([fold, common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
                               common.RemoveUnusedOpsetsPass()], steps=2, early_stop=True),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def export_onnx(model: torch.nn.Module, path: str, size=(224, 224), dynamic_size: bool = False,
                metadata: dict = None, progress=None, unrolled_scan: bool = None):
    """Export ``model`` (eval mode, CPU, fp32) to ``path`` with a dynamic batch (and H, W when ``dynamic_size``).

    ``unrolled_scan``: the scan's recurrence in plain operators (no ``Scan`` loops), which needs a fixed size;
    default: when the size is fixed. Written to ``<path>.tmp<PID>`` and renamed. Returns the input and output
    names.
    """
    from torch.export import Dim
    say = progress or (lambda message: None)
    H, W = size
    check_size(size, dynamic_size)
    unrolled_scan = not dynamic_size if unrolled_scan is None else unrolled_scan
    if unrolled_scan and dynamic_size:
        raise ExportError("the scan in plain operators (unrolled) needs a fixed H x W: export with dynamic_size False")
    example = torch.randn(EXAMPLE_BATCH, input_channels(model), H, W)
    dims = {0: Dim.DYNAMIC}
    if dynamic_size:
        dims.update({2: Dim.DYNAMIC, 3: Dim.DYNAMIC})
    names = output_names(model)
    model = model.eval()
    started = time.time()
    say(f"tracing with torch.export (batch{', H, W' if dynamic_size else ''} dynamic), converting to ONNX ...")
    onnx_program, program = to_onnx(model, (example,), (dims,), input_names=[INPUT_NAME], output_names=names,
                                    static=unrolled_scan)
    _name_dynamic_dims(onnx_program.model, program, dynamic_size)
    onnx_program.model.metadata_props.update({f"vssm.{k}": v if isinstance(v, str) else json.dumps(v)
                                              for k, v in (metadata or {}).items()})
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        onnx_program.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    say(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) in {time.time() - started:.0f}s")
    return [INPUT_NAME], names


def _name_dynamic_dims(model, program, dynamic_size: bool):
    """Call the input's symbolic sizes batch, height and width everywhere in the graph (torch.export's s0, s1...)."""
    import re

    from onnxscript import ir
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder"
                       and n.name in program.graph_signature.user_inputs)
    wanted = ("batch", "height", "width")
    renames = {}
    for axis, label in zip((0, 2, 3), wanted):
        dim = placeholder.meta["val"].shape[axis]
        if isinstance(dim, torch.SymInt) and (axis == 0 or dynamic_size):
            renames[str(dim)] = label
    if not renames:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")

    def rename(value):
        if value.shape is None:
            return
        dims = [ir.SymbolicDim(pattern.sub(lambda m: renames[m.group(1)], d.value))
                if isinstance(d, ir.SymbolicDim) and d.value else d for d in value.shape]
        value.shape = ir.Shape(dims)

    graph = model.graph
    for value in list(graph.inputs) + list(graph.outputs):
        rename(value)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for value in node.outputs:
            rename(value)


# ---- verification ------------------------------------------------------------------------------------------
def verification_inputs(in_chans: int, size, dynamic_size: bool, seed: int = 0) -> list:
    """Random images: the export's size at batch 2 and 1, and a second, non-square size where H, W are dynamic."""
    H, W = size
    shapes = [(EXAMPLE_BATCH, in_chans, H, W), (1, in_chans, H, W)]
    if dynamic_size:
        shapes.append((1, in_chans, H + 16, W + 48))
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for shape in shapes]


def compare_outputs(session, model, images: torch.Tensor) -> dict:
    """{output name: (max abs difference, max abs difference / max |torch output|)} of one input."""
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = model(images)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    result = {}
    for name, g, e in zip(names, got, expected):
        e = e.float()
        g = torch.from_numpy(g)
        if g.shape != e.shape:
            result[name] = (float("inf"), float("inf"))
            continue
        err = (g - e).abs().max().item()
        err = float("inf") if err != err else err
        result[name] = (err, err / max(e.abs().max().item(), 1e-12))
    return result


def verify(path: str, model, size, dynamic_size: bool, progress=None, threads: int = 0,
           runtime: str = "onnxruntime") -> list:
    """``runtime`` (ONNX Runtime, or OpenVINO's CPU plugin at f32) against PyTorch on :func:`verification_inputs`.

    Returns one dict per input: shape, runtime, ``outputs`` ({name: (max abs, max rel)}), ``max_rel`` (the worst).
    """
    from .deploy.runtimes import open_session
    say = progress or (lambda message: None)
    session = open_session(path, runtime, "f32", threads)
    checks = []
    for images in verification_inputs(input_channels(model), size, dynamic_size):
        outputs = compare_outputs(session, model, images)
        check = {"shape": tuple(images.shape), "runtime": runtime, "outputs": outputs,
                 "max_rel": max(r for _, r in outputs.values()), "max_abs": max(a for a, _ in outputs.values())}
        checks.append(check)
        say(format_check(check))
    return checks


def format_check(check: dict) -> str:
    batch, _, H, W = check["shape"]
    worst = max(check["outputs"], key=lambda name: check["outputs"][name][1])
    status = "ok" if check["max_rel"] <= TOLERANCE else f"FAIL (> {TOLERANCE:g})"
    runtime = check.get("runtime", "onnxruntime")
    runtime = "openvino (f32)" if runtime == "openvino" else runtime
    return (f"{runtime} vs torch, batch {batch} at {H}x{W}: max abs difference {check['max_abs']:.2e}, "
            f"max rel {check['max_rel']:.2e} ({worst}) {status}")


# ---- command line ------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser("python -m vssm.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a registered model (vssm.list_models()); default: the model the checkpoint "
                                   "names (our trainer's checkpoints and hub folders do)")
    p.add_argument("--checkpoint", help="weights: a checkpoint of our trainer, the authors' release, a state dict, a "
                                        ".safetensors file, a hub folder or (with --backbone) a detection/segmentation "
                                        "checkpoint; without it the weights are random")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="input size traced (the size of the file where H, W are fixed); default: the checkpoint's "
                        "or the model's input size (224 224)")
    p.add_argument("--backbone", action="store_true",
                   help="export the dense backbone (its stage outputs stage0..stage3) instead of the classifier")
    p.add_argument("--static", action="store_true",
                   help="fix H x W at --size for every family, with the scan's recurrence in plain operators (no "
                        "Scan loops, for runtimes and compilers that handle loops poorly); the default "
                        "keeps H x W dynamic where the family allows it (SIZES), with Scan loops there")
    p.add_argument("--openvino", action="store_true",
                   help="also check the file in OpenVINO's CPU plugin at f32 (pip install openvino)")
    p.add_argument("--int8", action="store_true",
                   help="write a post-training statically quantized int8 model to --out (the fp32 file is kept "
                        "beside it as OUT.fp32.onnx); needs --calibration")
    p.add_argument("--int8-runtime", choices=("onnxruntime", "openvino"),
                   help="the runtime the --int8 file is encoded for (either runs it): onnxruntime, uint8 activations "
                        "with a zero point (default); openvino, symmetric int8 activations (1.05-1.15x faster there, "
                        "slower in ONNX Runtime)")
    p.add_argument("--calibration", metavar="FOLDER",
                   help="images to calibrate --int8 on, read as the trainer reads them (any layout; searched "
                        "recursively)")
    p.add_argument("--calibration-images", type=int, default=64, metavar="N",
                   help="how many images of --calibration to use, spread over the folder (64)")
    p.add_argument("--out", required=True, help="the ONNX file to write")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: read --checkpoint with plain pickle, which runs any code the file holds")
    return p.parse_args(argv)


def _metadata(name: str, model, info: dict, config: dict, size, policy: ExportPolicy, backbone: bool) -> dict:
    from .predict import class_names
    meta = {"model": name, "kind": "backbone" if backbone else "classifier",
            "input": {"name": INPUT_NAME, "channels": input_channels(model), "traced_size": list(size),
                      "dynamic": ["batch", "height", "width"] if policy.dynamic else ["batch"]},
            "preprocessing": {k: config.get(k) for k in ("mean", "std", "interpolation", "crop_pct")}}
    if info.get("source"):
        meta["checkpoint"] = os.path.basename(info["source"])
    if not backbone and model.num_classes:
        meta["classes"] = class_names(model, info.get("classes"))
    return meta


def fp32_path(out: str) -> str:
    """Where ``--int8`` keeps the fp32 file it quantized: ``OUT.fp32.onnx`` beside ``OUT``."""
    stem = out[:-5] if out.endswith(".onnx") else out
    return stem + ".fp32.onnx"


def _check_arguments(args):
    if args.int8 and not args.calibration:
        raise ExportError("--int8 needs --calibration FOLDER: images to calibrate the int8 activations on")
    if args.calibration and not args.int8:
        raise ExportError("--calibration is for --int8")
    if args.int8_runtime is not None and not args.int8:
        raise ExportError("--int8-runtime is for --int8")
    if args.int8 and args.backbone:
        raise ExportError("--int8 quantizes classifiers (its check compares their top-1 classes); export the "
                          "backbone in fp32")
    if args.openvino or args.int8_runtime == "openvino":
        from .deploy.runtimes import RuntimeMissing, require
        try:
            require("openvino")
        except RuntimeMissing as e:
            raise ExportError(str(e)) from None
    if args.int8:
        from .deploy.quantize import require_quantization
        require_quantization()


def export_policy(name: str, static: bool) -> ExportPolicy:
    """The family's policy, or a fixed size with the loop-free scan (``--static``)."""
    if static:
        return ExportPolicy(False, "--static: the size is fixed and the scan is in plain operators")
    return size_policy(name)


def run(args) -> int:
    """The export of parsed arguments: 0 when the file matches PyTorch, 1 when it does not."""
    from .checkpoint import checkpoint_info
    from .models.meta import check_memory
    from .predict import data_config, load_classifier
    from .runtime import retain_freed_memory
    retain_freed_memory()

    def say(message):
        print(message, file=sys.stderr, flush=True)

    require_packages()
    _check_arguments(args)
    check_output(args.out, inputs=[args.checkpoint], also=[fp32_path(args.out)] if args.int8 else [])
    if args.model is None and args.checkpoint is None:
        raise ExportError("--model is needed without --checkpoint")
    if args.size:
        check_size(tuple(args.size), False)
    chosen = {}

    def fits(meta_model, info=None):
        """The size is checked, and the export's memory estimated before the model is built: refused with the
        estimate when it cannot fit (the model, its trace and ONNX Runtime's session at batch 2)."""
        config = data_config(meta_model, (info or {}).get("data_config"))
        size = tuple(args.size) if args.size else tuple(config["input_size"][1:])
        source = None if args.size else (f"the input size {size[0]}x{size[1]} of the checkpoint's data_config "
                                         f"(no --size given)" if (info or {}).get("data_config") else
                                         f"the model's input size {size[0]}x{size[1]} (no --size given)")
        name = type(meta_model).__name__
        check_size(size, export_policy((info or {}).get("model") or args.model, args.static).dynamic, source)
        check_memory(meta_model, input_channels(meta_model), size, EXAMPLE_BATCH, "cpu",
                     f"exporting {name} at {size[0]}x{size[1]}", copies_of_weights=3, forward_passes=2)
        chosen.update(config=config, size=size)

    if args.backbone:
        saved = read_checkpoint(args.checkpoint, args.trust_checkpoint) if args.checkpoint else None
        args.model = args.model or checkpoint_info(saved, args.checkpoint).model
        if args.model is None:
            raise ExportError(f"{args.checkpoint} does not say which model it holds: give --model")
        model, report = load_backbone(args.model, saved, before_build=lambda meta_model: fits(meta_model))
        if report is not None:
            report.source = args.checkpoint
        saved = None
        info = {"source": args.checkpoint, "classes": None, "data_config": None}
    else:
        model, info = load_classifier(args.model, args.checkpoint, args.trust_checkpoint, before_build=fits)
        args.model = info["model"]
        report = info["report"]
    policy = export_policy(args.model, args.static)
    config, size = chosen["config"], chosen["size"]
    if args.int8:
        from .deploy.quantize import calibration_batches
        config = dict(config, input_size=(config["input_size"][0],) + size)
        calibration = calibration_batches(args.calibration, config, args.calibration_images, progress=say)
    if report is not None:
        say(f"loaded {report.describe()}")
    else:
        say("WARNING: no --checkpoint: the exported model has RANDOM weights")
    kind = "dense backbone" if args.backbone else "classifier"
    dims = "batch, H and W dynamic" if policy.dynamic else f"batch dynamic, H x W fixed at {size[0]}x{size[1]}"
    say(f"exporting the {kind} of {args.model} ({input_channels(model)} channels, traced at {size[0]}x{size[1]}; "
        f"{dims}: {policy.why})")
    path = fp32_path(args.out) if args.int8 else args.out
    export_onnx(model, path, size, policy.dynamic,
                _metadata(args.model, model, info, config, size, policy, args.backbone), progress=say)
    checks = verify(path, model, size, policy.dynamic, progress=say)
    if args.openvino:
        checks += verify(path, model, size, policy.dynamic, progress=say, runtime="openvino")
    worst = max(c["max_rel"] for c in checks)
    if worst > TOLERANCE:
        say(f"error: {path} differs from PyTorch by {worst:.2e} relative (> {TOLERANCE:g}); the file is kept "
            f"for inspection")
        return 1
    runtimes = "ONNX Runtime and OpenVINO (f32) match" if args.openvino else "ONNX Runtime matches"
    print(f"{path}: {runtimes} PyTorch (max rel difference {worst:.2e} <= {TOLERANCE:g})")
    if args.int8:
        from .deploy.quantize import quantize_int8, top1_agreement
        from .deploy.runtimes import open_session
        runtime = args.int8_runtime or "onnxruntime"
        quantize_int8(path, args.out, calibration, INPUT_NAME, progress=say, runtime=runtime)
        agreement, difference = top1_agreement(open_session(path, runtime), open_session(args.out, runtime),
                                               calibration)
        print(f"{args.out}: int8 for {runtime}; in {runtime}, top-1 agrees with fp32 on {agreement:.1%} of the "
              f"{sum(map(len, calibration))} calibration images (max logit difference {difference:.1e} of the "
              f"largest logit)")
    return 0


def main(argv=None) -> int:
    """Run the command line: 0 when the file matches PyTorch, 1 when it does not, 2 on unusable arguments (one
    ``error:`` line, :func:`vssm.cli.run_command`)."""
    from .cli import run_command
    from .deploy.quantize import QuantizationError
    from .models.meta import InsufficientMemoryError
    from .predict import PredictError
    return run_command(lambda argv: run(parse_args(argv)), argv,
                       errors=(ExportError, InsufficientMemoryError, PredictError, QuantizationError))


if __name__ == "__main__":
    sys.exit(main())
