"""python -m vssm.export --int8: a classifier trained briefly on the embedded digits, quantized on training images
read as the trainer reads them, agrees with its fp32 file on the held-out digits in ONNX Runtime and OpenVINO;
the products are int8, the scan stays float."""
import importlib.util
import os

import numpy as np
import pytest
import torch

import vssm
from vssm import export
from vssm.deploy import quantize
from vssm.deploy.runtimes import open_session

pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn", reason="the digits are written with scikit-learn")

CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic",
          "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from vssm.data.digits import prepare_digits
    return prepare_digits(str(tmp_path_factory.mktemp("digits")))


@pytest.fixture(scope="module")
def quantized(digits, tmp_path_factory):
    """(int8 path, fp32 path, val batches, val labels, fp32 accuracy of the PyTorch model): vmamba_nano trained
    for 60 steps (about 95% on the held-out digits), exported at 32 x 32 with --static --int8."""
    folder = tmp_path_factory.mktemp("int8")
    classes = [str(d) for d in range(10)]
    config = dict(CONFIG, classes=classes)
    train, labels = quantize.labelled_batches(os.path.join(digits, "train"), config, batch_size=10**6)
    images, labels = torch.from_numpy(train[0]), torch.from_numpy(labels)
    torch.manual_seed(0)
    model = vssm.create_model("vmamba_nano", num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        pick = torch.randint(len(images), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(images[pick]), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    checkpoint, out = str(folder / "best.pth"), str(folder / "digits.onnx")
    torch.save({"model": model.state_dict(), "classes": classes, "data_config": CONFIG}, checkpoint)
    status = export.main(["--model", "vmamba_nano", "--checkpoint", checkpoint, "--static", "--int8",
                          "--calibration", os.path.join(digits, "train"), "--calibration-images", "32",
                          "--out", out])
    assert status == 0
    val, val_labels = quantize.labelled_batches(os.path.join(digits, "val"), quantize.file_data_config(out))
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(np.concatenate(val))).argmax(-1).numpy() == val_labels).mean())
    return out, export.fp32_path(out), val, val_labels, accuracy


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_agrees_with_fp32_on_held_out_digits(quantized, runtime):
    pytest.importorskip(runtime)
    int8, fp32, val, labels, accuracy = quantized
    assert accuracy > 0.85, f"the briefly trained model reaches only {accuracy:.1%}"
    a = quantize.predictions(open_session(fp32, runtime), val).argmax(-1)
    b = quantize.predictions(open_session(int8, runtime), val).argmax(-1)
    assert (a == labels).mean() == pytest.approx(accuracy, abs=1 / len(labels) + 1e-9)
    assert (a == b).mean() >= 0.97, f"int8 agrees with fp32 on {(a == b).mean():.1%} of {len(labels)} digits"


def test_products_are_int8_and_the_scan_float(quantized):
    int8, fp32, *_ = quantized
    int8_ops, float_ops = quantize.float_and_int8_ops(int8)
    assert {"MatMul", "Conv"} <= set(int8_ops)
    assert not {"Exp", "Log", "Split", "Concat", "Gather", "Reshape"} & set(int8_ops), \
        f"the scan reads no dequantized tensor: {int8_ops}"
    assert {"Exp", "Log", "Split"} <= set(float_ops)
    assert float_ops.get("Conv") == 1, "the first convolution, on the images, stays float"
    assert os.path.getsize(int8) < 0.6 * os.path.getsize(fp32)
    import onnx
    graph = onnx.load(int8, load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    requantized = [n.name for n in graph.node if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) in
                   quantize.FLOAT_OUTPUT_OPS]
    assert not requantized, f"the products' float results are quantized again: {requantized[:3]}"
    meta = {p.key: p.value for p in onnx.load(int8, load_external_data=False).metadata_props}
    assert "vssm.int8" in meta and meta["vssm.model"] == "vmamba_nano"


@pytest.mark.parametrize("family", vssm.models.families(), ids=lambda f: f.name)
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_every_family_quantizes_and_runs(family, runtime, tmp_path):
    """Each registered family's nano classifier, static at 64 x 64, quantized on random images: the int8 file
    compiles in the runtime and stays near its fp32 file (random weights and images: a loose bound)."""
    pytest.importorskip(runtime)
    torch.manual_seed(0)
    model = vssm.create_model(family.nano, num_classes=5).eval()
    fp32, int8 = str(tmp_path / "m.onnx"), str(tmp_path / "m.int8.onnx")
    export.export_onnx(model, fp32, (64, 64), False, unrolled_scan=True)
    g = np.random.default_rng(0)
    quantize.quantize_int8(fp32, int8, [g.standard_normal((4, 3, 64, 64), dtype=np.float32) for _ in range(2)],
                           runtime=runtime)  # the encoding for that runtime
    assert activation_encodings(int8) == ({"int8 symmetric"} if runtime == "openvino" else {"uint8"})
    images = [g.standard_normal((2, 3, 64, 64), dtype=np.float32)]
    a = quantize.predictions(open_session(fp32, runtime), images)
    b = quantize.predictions(open_session(int8, runtime), images)
    assert np.abs(a - b).max() <= 0.2 * np.abs(a).max(), (np.abs(a - b).max(), np.abs(a).max())
    assert not float_readers_of_quantized_constants(int8)
    assert not weights_quantized_at_run_time(int8)


def activation_encodings(path: str) -> set:
    """How the file's activations are quantized: "uint8" (a zero point), "int8 symmetric" (zero points all 0) or
    "int8" (others), over the QuantizeLinear nodes of computed tensors (not of stored weights)."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(path, load_external_data=False).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    found = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            zero = constants[node.input[2]]
            found.add("uint8" if zero.dtype == np.uint8 else "int8 symmetric" if not zero.any() else "int8")
    return found


def test_int8_for_openvino_agrees_with_fp32_on_held_out_digits(quantized, digits, tmp_path):
    """--int8-runtime openvino: symmetric int8 activations (no zero point for OpenVINO to subtract), the same
    agreement on the trained digits classifier, in OpenVINO and in ONNX Runtime."""
    _, fp32, val, labels, _ = quantized
    out = str(tmp_path / "digits.openvino.int8.onnx")
    config = dict(quantize.file_data_config(fp32), input_size=(3, 32, 32))
    quantize.quantize_int8(fp32, out, quantize.calibration_batches(os.path.join(digits, "train"), config, 32),
                           runtime="openvino")
    assert activation_encodings(out) == {"int8 symmetric"}
    assert activation_encodings(quantized[0]) == {"uint8"}  # the default, for ONNX Runtime
    for runtime in ("openvino", "onnxruntime"):
        if runtime == "openvino" and importlib.util.find_spec("openvino") is None:
            continue
        a = quantize.predictions(open_session(fp32, runtime), val).argmax(-1)
        b = quantize.predictions(open_session(out, runtime), val).argmax(-1)
        assert (a == b).mean() >= 0.97, f"{runtime}: int8 agrees with fp32 on {(a == b).mean():.1%} of the digits"
    import onnx
    meta = {p.key: p.value for p in onnx.load(out, load_external_data=False).metadata_props}
    assert "for openvino" in meta["vssm.int8"] and "symmetric int8 activations" in meta["vssm.int8"]


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_int8_runtime_is_checked(runtime, tmp_path, capsys):
    """--int8-runtime without --int8 is refused, the default named too; quantize_int8 names the runtimes it knows."""
    assert export.main(["--model", "vmamba_nano", "--int8-runtime", runtime, "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--int8-runtime is for --int8" in capsys.readouterr().err
    for bad in ("tensorrt", "OpenVINO", None, ["openvino"]):
        with pytest.raises(quantize.QuantizationError, match="one of onnxruntime, openvino"):
            quantize.quantize_int8("in.onnx", "out.onnx", [], runtime=bad)


def float_readers_of_quantized_constants(path: str) -> list:
    """Names of the nodes computing in float (their first input not dequantized) that read a dequantized constant:
    a weight or bias quantized for an int8 product and shared with them (a float convolution reading one is no
    longer a constant-weight convolution to ONNX Runtime, and runs several times slower)."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and n.input and n.input[0] not in dequantized
            and any(dequantized.get(name) in constants for name in n.input[1:])]


def test_products_after_a_pad_or_a_spatial_concat_stay_float():
    """OpenVINO's low-precision pass fails on a product whose quantized activation was zero-padded or concatenated
    along a spatial axis just before (QuadMamba-T's roll: "Input shape dimension equal 56 cannot be broadcasted"):
    such products are kept float; after a concatenation along the channels they stay int8."""
    from onnx import TensorProto, helper
    weight = helper.make_tensor("w", TensorProto.FLOAT, (8, 4), np.ones(32, np.float32))
    wide = helper.make_tensor("w2", TensorProto.FLOAT, (16, 4), np.ones(64, np.float32))
    pads = helper.make_tensor("pads", TensorProto.INT64, (6,), [0, 1, 0, 0, 1, 0])
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad"),
             helper.make_node("MatMul", ["padded", "w"], ["y"], name="after_pad"),
             helper.make_node("Concat", ["x", "x"], ["rolled"], name="roll", axis=1),
             helper.make_node("MatMul", ["rolled", "w"], ["r"], name="after_roll"),
             helper.make_node("Concat", ["x", "x"], ["wider"], name="cat", axis=-1),
             helper.make_node("MatMul", ["wider", "w2"], ["c"], name="after_channel_concat"),
             helper.make_node("MatMul", ["x", "w"], ["z"], name="plain")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 8))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "yrcz"],
                              [weight, wide, pads])
    assert quantize.float_products(helper.make_model(graph), "x") == ["after_pad", "after_roll"]


def weights_quantized_at_run_time(path: str) -> list:
    """Names of the int8 products (MatMul, Gemm, Conv) whose weight is quantized by a QuantizeLinear node at every run
    (a weight the graph computes from a stored one, quantized per tensor like an activation) instead of being a
    stored int8 constant quantized per output channel."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    found = []
    for node in graph.node:
        if node.op_type in quantize.QUANTIZED_OPS and len(node.input) > 1:
            dq = producer.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in producer:
                found.append(node.name)
    return found
