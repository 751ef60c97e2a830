"""Post-training static int8 quantization of an exported vssm ONNX file (ONNX Runtime's quantization tools).

    python -m vssm.export --model vmamba_nano --checkpoint best.pth --int8 --calibration DIGITS/val --out m.onnx

:func:`quantize_int8` writes a QDQ model (``QuantizeLinear`` / ``DequantizeLinear`` around int8 operands):
the weights of every convolution and of every matrix product with a constant weight (the linear layers) are
int8 per output channel, their input activations 8-bit with a scale calibrated (min / max) on images read as the
trainer reads them (:func:`calibration_batches`: ``vssm.data.images.read_image`` and the evaluation transform of
the checkpoint's data config): uint8 with a zero point for ONNX Runtime, symmetric int8 for OpenVINO
(``--int8-runtime openvino``, :data:`INT8_ACTIVATIONS`). ONNX Runtime and OpenVINO run those products in int8.
Before quantizing, weights the graph computes from stored ones by layout operators are stored as computed
(:func:`fold_weight_layouts`), so that they are quantized as weights too, and each int8 product gets its own copy of
the constants it shares with other operators (:func:`private_constants`), so that those keep reading them in float.

What stays in float, and why: the stem's first convolution, which reads the images (3 input channels, a small share
of the work; OpenVINO's CPU plugin computes it wrongly when the network input itself is quantized: 66% top-1
agreement on the digits instead of 100%); convolutions with kernels above 7 x 7 or dilations (Spatial-Mamba's
11 x 11 depthwise state fusion: OpenVINO has no int8 implementation of them and refuses to compile the file); products
whose activation was just padded or concatenated along H or W (QuadMamba's windows and rolls: OpenVINO's
low-precision pass fails on them, see :func:`float_products`); the selective scan (the step sizes' products and
softplus, ``exp`` of the decays, the recurrence, the gathers by scan order), the normalisations, the activations and
the residual sums. The recurrence multiplies hundreds of decays in [0, 1] and adds contributions of very different
sizes along a sequence of up to 3136 steps: one int8 scale for a tensor whose values span many orders of magnitude
would round most of them to zero, and its error would be carried to every later step. The elementwise operators gain
nothing from int8 on a CPU anyway (they are memory-bound, and a quantize / dequantize pair costs more than the
operator).
"""
import os

import numpy as np

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # the operators whose weights and inputs become int8
# products whose output stays float: int8 operands, a float result (ONNX Runtime: MatMulIntegerToFloat). Their
# consumers (residual sums, norms, the scan, the logits) read it as computed, with no quantize / dequantize pass
# over it. Convolutions keep an int8 output: ONNX Runtime has no integer convolution with a float result.
FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")


class QuantizationError(ValueError):
    """Calibration images missing or unreadable, or the quantization tools not installed."""


def require_quantization():
    import importlib.util
    if importlib.util.find_spec("onnxruntime") is None:
        raise QuantizationError("int8 quantization needs onnxruntime (its quantization tools): pip install "
                                "onnxruntime (requirements.txt pins the tested version)")


def calibration_batches(folder: str, config: dict, limit: int = 64, batch_size: int = 8, progress=None) -> list:
    """Up to ``limit`` images under ``folder`` (recursively, sorted), read with ``vssm.data.images.read_image`` and
    transformed with the evaluation transform of ``config`` (timm's data config: size, interpolation, crop,
    mean, std): a list of (batch, in_chans, H, W) float32 arrays. Unreadable files are skipped and counted."""
    from ..data.images import ImageReadError, image_files, read_image
    from ..predict import build_transform
    say = progress or (lambda message: None)
    if not os.path.isdir(folder):
        raise QuantizationError(f"--calibration {folder}: not a folder of images")
    try:
        files = image_files(folder)
    except ImageReadError as e:
        raise QuantizationError(f"--calibration {folder}: {e}") from None
    if not files:
        raise QuantizationError(f"--calibration {folder}: no images (.jpg, .png, ..., .npy, .tif) under it")
    if limit < 1:
        raise QuantizationError(f"the calibration needs at least one image, got a limit of {limit}")
    files = files[::max(1, len(files) // limit)][:limit]  # spread over the folder (its classes are subfolders)
    transform, in_chans = build_transform(config), config["input_size"][0]
    images, skipped = [], []
    for path in files:
        try:
            images.append(transform(read_image(path, in_chans)).numpy().astype(np.float32))
        except (ImageReadError, OSError, ValueError, RuntimeError) as e:
            skipped.append(f"{path}: {e}")
    if not images:
        raise QuantizationError(f"--calibration {folder}: none of its {len(files)} images could be read "
                                f"(first: {skipped[0]})")
    say(f"calibration: {len(images)} images from {folder}" + (f" ({len(skipped)} unreadable, skipped)" if skipped
                                                               else ""))
    return [np.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over a list of batches."""

    def __init__(self, input_name: str, batches: list):
        self.input_name, self.batches = input_name, list(batches)
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self):
        self.position = 0


LARGEST_INT8_KERNEL = 7  # OpenVINO's CPU plugin has no int8 convolution for larger kernels (or dilations)


def float_products(model, input_name: str = "images") -> list:
    """Names of the products (:data:`QUANTIZED_OPS`) kept in float, because a runtime computes them wrongly or
    cannot compile them in int8:

    - the convolution on the input images (OpenVINO's CPU plugin: 66% top-1 agreement instead of 100%);
    - convolutions with a kernel side above :data:`LARGEST_INT8_KERNEL` or a dilation (Spatial-Mamba's 11 x 11
      state fusion; OpenVINO: "No suitable implementations");
    - the scans' step-size products (:mod:`vssm.deploy.rewrites`' batched ``MatMul``, named
      ``directional_product*``): their output goes through softplus into the decays ``exp(dt A)`` that the
      recurrence multiplies along the whole sequence, and they are a small share of the work;
    - products whose activation was just zero-padded or concatenated along an axis other than the channels
      (QuadMamba pads its map to whole windows and rolls it, a roll being two slices concatenated along H or
      W): OpenVINO's low-precision pass turns the zero point of the activation into a constant that varies
      along that axis, then fails on the product (QuadMamba-T: "Input shape dimension equal 56 cannot be
      broadcasted"). Concatenations along the channels stay int8.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}

    def spatial_move(node) -> bool:  # a Pad, or a Concat not along the last (channel) axis
        if node is None or node.op_type not in ("Pad", "Concat"):
            return False
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return node.op_type == "Pad" or not (axis == -1 or axis == rank.get(node.output[0], 0) - 1)

    from .rewrites import PRODUCT_NAME
    kept = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        if node.name.startswith(PRODUCT_NAME) or spatial_move(producer.get(node.input[0])):
            kept.append(node.name)
            continue
        if node.op_type != "Conv":
            continue
        attrs = {a.name: list(a.ints) for a in node.attribute if a.name in ("kernel_shape", "dilations")}
        if (input_name in node.input or max(attrs.get("kernel_shape", [1])) > LARGEST_INT8_KERNEL
                or max(attrs.get("dilations", [1])) > 1):
            kept.append(node.name)
    return kept


# the activations' int8 encoding per target runtime: (ONNX's type, symmetric). ONNX Runtime's integer products
# are fastest with uint8 activations and a zero point; OpenVINO's CPU plugin keeps a zero point as a
# DequantizationSubtract before each product (118 of them, 5.75 ms of VMamba-T's 66 ms at batch 1), so for it the
# activations are int8 around zero. int8 / f32 in OpenVINO, batch 1 / 8, uint8 -> symmetric int8 (one run,
# interleaved): VMamba-T 1.36 / 1.35 -> 1.50 / 1.51, Spatial-Mamba-T 1.17 / 1.14 -> 1.30 / 1.31, QuadMamba-T
# 1.31 / 1.28 -> 1.38 / 1.37, FractalMamba-T 1.33 / 1.42 -> 1.41 / 1.59; the same files in ONNX Runtime: VMamba-T
# 1.31 / 1.38 -> 1.27 / 1.27 (so each runtime gets its own file)
INT8_ACTIVATIONS = {"onnxruntime": ("QUInt8", False), "openvino": ("QInt8", True)}


def quantize_int8(fp32_path: str, int8_path: str, batches: list, input_name: str = "images", progress=None,
                  runtime: str = "onnxruntime"):
    """Write ``int8_path``: ``fp32_path`` statically quantized (QDQ, int8 weights per channel, min / max
    calibration on ``batches``) in its convolutions and constant-weight matrix products (:data:`QUANTIZED_OPS`)
    except :func:`float_products`, the matrix products with a float output (:data:`FLOAT_OUTPUT_OPS`);
    everything else, the scan included, stays float, reading float constants (:func:`private_constants`). The
    activations are encoded for ``runtime`` (:data:`INT8_ACTIVATIONS`: uint8 with a zero point for ONNX Runtime,
    symmetric int8 for OpenVINO); either runtime runs either file. Written to ``<int8_path>.tmp<PID>`` and
    renamed; the metadata of the fp32 file is kept, with ``vssm.int8`` added."""
    if not isinstance(runtime, str) or runtime not in INT8_ACTIVATIONS:
        raise QuantizationError(f"int8 for runtime {runtime!r}: one of {', '.join(INT8_ACTIVATIONS)}")
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import CalibrationDataReader
    require_quantization()
    say = progress or (lambda message: None)
    reader = type("CalibrationReader", (_Reader, CalibrationDataReader), {})(input_name, batches)
    tmp = f"{int8_path}.tmp{os.getpid()}"
    activation_type, symmetric = INT8_ACTIVATIONS[runtime]
    say(f"quantizing {os.path.basename(fp32_path)} to int8 for {runtime} ({', '.join(QUANTIZED_OPS)}; calibrating "
        f"on {sum(len(b) for b in batches)} images) ...")
    source_model = onnx.load(fp32_path)
    fold_weight_layouts(source_model)
    kept_float = float_products(source_model, input_name)
    private_constants(source_model, kept_float)
    try:
        quantize_static(source_model, tmp, reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                        activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=kept_float,
                        extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": symmetric,
                                       "WeightSymmetric": True,
                                       "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)})
        model = onnx.load(tmp)
        float_consumers_read_float(model, kept_float)
        source = {p.key: p.value for p in source_model.metadata_props}
        activations = "symmetric int8" if symmetric else "uint8"
        source["vssm.int8"] = (f"QDQ static for {runtime}: int8 weights (per channel) and {activations} activations "
                               f"in {', '.join(QUANTIZED_OPS)}; the scan and the rest in float")
        del model.metadata_props[:]
        for key, value in source.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, tmp)
        os.replace(tmp, int8_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        data = tmp + ".data"
        if os.path.exists(data):
            os.remove(data)
    say(f"wrote {int8_path} ({os.path.getsize(int8_path) / 2**20:.1f} MiB)")


# operators that only lay out or cut their inputs' values (VMamba's x_proj weight (K, R + 2N, D) is reshaped to
# (K (R + 2N), D) and transposed in the graph before its product; QuadMamba's locality predictor splits a weight)
LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Split", "Slice",
              "Concat")


def fold_weight_layouts(model) -> int:
    """Replace each :data:`LAYOUT_OPS` node whose inputs are all initializers by an initializer of its result, in
    graph order (so chains fold whole). A product's weight computed so in the graph is then a constant to the
    quantization tools, which quantize it per output channel like every stored weight; otherwise they quantize it
    as an activation, per tensor, at every run (VMamba-T's x_proj products, 12 of them, and OpenVINO then computes
    those in float). ``model``: an onnx ModelProto, edited in place. Returns how many nodes were folded."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    initializers = {t.name: t for t in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    folded = []
    for node in model.graph.node:
        if (node.op_type not in LAYOUT_OPS or node.domain not in ("", "ai.onnx") or not node.input
                or not all(name in initializers for name in node.input if name)
                or any(name in graph_outputs for name in node.output)):
            continue
        inputs = [name for name in node.input if name]
        graph = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in node.output],
                                  [initializers[name] for name in inputs])
        single = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        for name, value in zip(node.output, ReferenceEvaluator(single).run(None, {})):
            initializers[name] = numpy_helper.from_array(value, name)
            model.graph.initializer.append(initializers[name])
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    used = set(_inputs_everywhere(model.graph)) | graph_outputs | {i.name for i in model.graph.input}
    for tensor in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(tensor)
    return len(folded)


def _inputs_everywhere(graph):
    """Every input name of every node of ``graph`` and of the graphs inside its nodes (Scan / Loop bodies)."""
    for node in graph.node:
        yield from node.input
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _inputs_everywhere(sub)


def private_constants(model, kept_float=()) -> int:
    """Give each product to be quantized (:data:`QUANTIZED_OPS`, not in ``kept_float``) its own copy of every
    initializer it shares with another node. The exporter stores equal constants once (at random initialisation a
    zero BatchNorm bias of 256 channels is also the zero bias of Spatial-Mamba's float 11 x 11 state-fusion
    convolutions), and the quantization tools quantize a product's weight or bias where it is stored: every other
    reader then reads its dequantized copy, a computed tensor rather than a constant, and ONNX Runtime runs those
    convolutions without its blocked layout (Spatial-Mamba-T's stage-2 fusion: 3.2 ms per call against 0.3). A copy
    per product keeps the other readers on the float constant. ``model``: an onnx ModelProto, edited in place.
    Returns how many inputs were given a copy."""
    from collections import Counter
    initializers = {t.name: t for t in model.graph.initializer}
    uses = Counter(name for name in _inputs_everywhere(model.graph) if name in initializers)
    uses.update(o.name for o in model.graph.output if o.name in initializers)
    taken, copied = set(initializers), 0
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.name in kept_float:
            continue
        for i, name in enumerate(node.input):
            if name not in initializers or uses[name] < 2:
                continue
            copy = type(initializers[name])()
            copy.CopyFrom(initializers[name])
            copy.name = next(f"{name}.{node.name}.{k}" for k in range(len(taken) + 1)
                             if f"{name}.{node.name}.{k}" not in taken)
            taken.add(copy.name)
            model.graph.initializer.append(copy)
            node.input[i] = copy.name
            uses[name] -= 1
            copied += 1
    return copied


def float_consumers_read_float(model, kept_float=()) -> int:
    """Point the float operators that read ``DequantizeLinear(QuantizeLinear(t))`` at ``t`` itself, where ``t`` is
    an activation that exists in float (not the result of an int8 product): the quantization tools route every
    consumer of a quantized product's input through the rounded copy, the scan's gathers and the residual sums
    included. In float they read the value as computed, and ONNX Runtime no longer dequantizes the whole tensor
    again for each of them (it copies a ``DequantizeLinear`` per consumer: one per step of the scan). Unused
    quantize / dequantize pairs are removed. ``model``: an onnx ModelProto, edited in place; ``kept_float``: names of
    products left in float. Returns how many inputs were redirected."""
    nodes, kept_float = list(model.graph.node), set(kept_float)
    int8_products = {n.name for n in nodes if n.op_type in QUANTIZED_OPS and n.name not in kept_float}
    producer = {out: n for n in nodes for out in n.output}
    redirected = 0
    for node in nodes:
        if node.name in int8_products or node.op_type == "QuantizeLinear":
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                continue
            source = producer.get(q.input[0])
            if source is not None and source.name in int8_products:
                continue  # an int8 product's result: no float copy of it exists once the runtime fuses the product
            node.input[i] = q.input[0]
            redirected += 1
    outputs = {o.name for o in model.graph.output}
    for kind in ("DequantizeLinear", "QuantizeLinear"):  # dequantize first: its removal may leave a quantize unused
        used = {name for n in model.graph.node for name in n.input} | outputs
        unused = [n for n in model.graph.node if n.op_type == kind and n.output[0] not in used]
        for n in unused:
            model.graph.node.remove(n)
    return redirected


def float_and_int8_ops(path: str) -> tuple:
    """({op_type: count} of the operators that read a dequantized int8 tensor, {op_type: count} of the others) of
    a quantized file: which layers compute on int8 and which stay in float."""
    from collections import Counter

    import onnx
    model = onnx.load(path, load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    skip = {"QuantizeLinear", "DequantizeLinear", "Constant"}
    int8 = Counter(n.op_type for n in model.graph.node if n.op_type not in skip and set(n.input) & dequantized)
    rest = Counter(n.op_type for n in model.graph.node if n.op_type not in skip and not set(n.input) & dequantized)
    return dict(int8), dict(rest)


def file_data_config(path: str) -> dict:
    """timm's data config of an exported file, from its metadata (``vssm.preprocessing``, ``vssm.input``)."""
    import json

    import onnx
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    if "vssm.preprocessing" not in meta or "vssm.input" not in meta:
        raise QuantizationError(f"{path} has no vssm.preprocessing / vssm.input metadata: not a vssm export")
    config = json.loads(meta["vssm.preprocessing"])
    image = json.loads(meta["vssm.input"])
    config["input_size"] = (image["channels"], *image["traced_size"])
    config["classes"] = json.loads(meta["vssm.classes"]) if "vssm.classes" in meta else None
    return config


def labelled_batches(folder: str, config: dict, batch_size: int = 32) -> tuple:
    """Every image of a ``folder/<class>/`` layout, read as the trainer reads them: (batches, labels), labels
    the index of each image's class folder in ``config["classes"]`` (sorted folder names without them)."""
    from ..data.images import image_files, read_image
    from ..predict import build_transform
    classes = config.get("classes") or sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    transform, in_chans = build_transform(config), config["input_size"][0]
    images, labels = [], []
    for label, name in enumerate(classes):
        sub = os.path.join(folder, name)
        for path in image_files(sub) if os.path.isdir(sub) else []:
            images.append(transform(read_image(path, in_chans)).numpy().astype(np.float32))
            labels.append(label)
    if not images:
        raise QuantizationError(f"{folder}: no images in class folders named as the model's classes {classes[:5]}")
    batches = [np.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return batches, np.array(labels)


def predictions(session, batches: list) -> np.ndarray:
    """(images, classes) logits of a classifier's session over ``batches``."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images})[0] for images in batches])


def top1_agreement(session_a, session_b, batches: list) -> tuple:
    """(fraction of images whose top-1 class is the same in both sessions, max |logit difference| / max |logit|)
    of a classifier's two files (fp32 and int8) on ``batches``."""
    a, b = predictions(session_a, batches), predictions(session_b, batches)
    return float((a.argmax(-1) == b.argmax(-1)).mean()), float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
