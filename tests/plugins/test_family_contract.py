"""The family contract: families are declared once and read from the registry everywhere, the registry refuses
incomplete declarations, and a family written outside the package (examples/custom_family.py, named in
VSSM_PLUGINS) works through every entry point."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vssm
from vssm.models import ExportPolicy, Family, UnknownModelError, register_family
from vssm.models.staged import DenseBackbone
from vssm.models.vss import VSSNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN = os.path.join(ROOT, "examples", "custom_family.py")
CODE = ("vssm", "classification", "changedetection", "analyze", "scripts", "detection", "segmentation", "examples")


def _name_lists(path: str, names: set, own: set):
    """Literal lists, tuples, sets and dicts in ``path`` holding two or more of ``names`` not in ``own``."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            elements = node.elts
        elif isinstance(node, ast.Dict):
            elements = [k for k in node.keys if k is not None] + node.values
        else:
            continue
        found = {e.value for e in elements if isinstance(e, ast.Constant) and e.value in names} - own
        if len(found) >= 2:
            yield node.lineno, sorted(found)


def test_no_list_of_family_names_outside_the_families():
    """Consumers iterate over the registry: no literal collection of two or more family or model names exists
    outside a family's own module (where it declares its sizes)."""
    families = vssm.models.families()
    names = {n for f in families for n in (f.name, f.title, *f.sizes)}
    own_names = {f.classifier.__module__: {f.name, f.title, *f.sizes} for f in families}
    found = []
    for top in CODE:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for file in (f for f in files if f.endswith(".py")):
                path = os.path.join(folder, file)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                for line, listed in _name_lists(path, names, own_names.get(module, set())):
                    found.append(f"{os.path.relpath(path, ROOT)}:{line}: {listed}")
    assert not found, "lists of family names outside the registry:\n" + "\n".join(found)


def test_the_check_finds_a_list(tmp_path):
    path = tmp_path / "consumer.py"
    path.write_text('DEFAULT = ["vmamba_tiny_s1l8", "spatialmamba_tiny"]\nONE = ("vmamba_nano",)\n')
    assert list(_name_lists(str(path), set(vssm.list_models()), set())) == [
        (1, ["spatialmamba_tiny", "vmamba_tiny_s1l8"])]


def test_no_package_file_names_the_example_family():
    hits = []
    for folder, _, files in os.walk(os.path.join(ROOT, "vssm")):
        for file in (f for f in files if f.endswith((".py", ".json", ".md"))):
            with open(os.path.join(folder, file), errors="replace") as f:
                if "diagmamba" in f.read().lower():
                    hits.append(file)
    assert not hits


class ProbeNet(VSSNet):
    """A family that is never registered (each declaration below lacks something)."""


class ProbeBackbone(DenseBackbone, ProbeNet):
    pass


def _family(**changes):
    base = dict(name="probe", title="Probe", classifier=ProbeNet, backbone=ProbeBackbone,
                sizes={"probe_nano": dict(depths=(1, 1, 1, 1), dims=16)}, nano="probe_nano", tiny="probe_nano",
                export=ExportPolicy(True, "a test family"))
    return Family(**{**base, **changes})


@pytest.mark.parametrize("changes,message", [
    (dict(sizes={}), "declares no sizes"),
    (dict(tiny="probe_tiny"), "tiny 'probe_tiny' is not one of its sizes"),
    (dict(backbone=ProbeNet), "is not `class XBackbone(DenseBackbone, classifier)`"),
    (dict(classifier=torch.nn.Linear), "is not a vssm.models.staged.StagedModel subclass"),
    (dict(export=True), "export must be an ExportPolicy"),
    (dict(pretrained_cfgs={"probe_huge.in1k": {}}), "pretrained configs for sizes it does not declare"),
    (dict(name="vmamba"), "family 'vmamba' is already registered by vssm.models.vmamba"),
    (dict(sizes={"vmamba_nano": {}}, nano="vmamba_nano", tiny="vmamba_nano"),
     "model 'vmamba_nano' of family 'probe' is already registered by family 'vmamba'"),
])
def test_register_family_refuses_an_incomplete_declaration(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("`", ".")):
        register_family(_family(**changes))
    assert "probe" not in {f.name for f in vssm.models.families()}


def test_unknown_models_raise_their_own_error_naming_failed_plugins(monkeypatch):
    with pytest.raises(UnknownModelError, match="unknown model 'nomamba_nano'; registered: fractalmamba_base"):
        vssm.create_model("nomamba_nano")
    with pytest.warns(UserWarning, match="cannot load 'no_such_plugin_module'"):
        vssm.models.load_plugins("no_such_plugin_module")
    with pytest.raises(UnknownModelError, match="VSSM_PLUGINS entry 'no_such_plugin_module' could not be loaded: "
                                                "ModuleNotFoundError"):
        vssm.models.family_of("nomamba_nano")
    vssm.models._registry._PLUGIN_ERRORS.clear()


# ---- the example plugin through every entry point ----------------------------------------------------------

def _run(argv, cwd=ROOT, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, VSSM_PLUGINS=PLUGIN)
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    return out.stdout + out.stderr


def test_timm_and_the_library_build_the_plugin_family():
    out = _run([sys.executable, "-c", (
        "import json, timm, torch, vssm\n"
        "m = timm.create_model('diagmamba_nano', num_classes=5).eval()\n"
        "f = timm.create_model('diagmamba_nano', features_only=True).eval()\n"
        "x = torch.randn(2, 3, 64, 48)\n"
        "with torch.no_grad(): y, feats = m(x), f(x)\n"
        "b = vssm.models.dense_backbone('diagmamba_nano').eval()\n"
        "with torch.no_grad(): dense = b(x)\n"
        "ref = vssm.create_model('diagmamba_nano', num_classes=5, scan_backend='naive').eval()\n"
        "ref.load_state_dict(m.state_dict())\n"
        "with torch.no_grad(): r = ref(x)\n"
        "print(json.dumps({'logits': list(y.shape), 'feats': [list(t.shape) for t in feats],\n"
        "  'dense': [list(t.shape) for t in dense], 'naive_diff': float((y - r).abs().max()),\n"
        "  'families': [x.name for x in vssm.models.families()], 'mm': sorted(__import__('vssm.mm.backbone',\n"
        "  fromlist=['x']).backbones())}))")])
    result = json.loads(out.strip().splitlines()[-1])
    assert result["logits"] == [2, 5]
    assert result["feats"] == [[2, 32, 16, 12], [2, 64, 8, 6], [2, 128, 4, 3], [2, 256, 2, 2]]
    assert result["dense"] == result["feats"]
    assert result["naive_diff"] < 1e-4, "the default backend and the naive oracle agree on the diagonal orders"
    assert result["families"][-1] == "diagmamba" and "DiagMamba" in result["mm"]


def test_diagonal_orders_follow_the_diagonals():
    import importlib.util
    spec = importlib.util.spec_from_file_location("custom_family", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_family"] = module
    try:
        spec.loader.exec_module(module)
        orders = module.diagonal_orders(3, 4)
        grid = np.arange(12).reshape(3, 4)
        anti = [grid[i, s - i] for s in range(6) for i in range(3) if 0 <= s - i < 4]
        main = [grid[i, i + d] for d in range(-2, 4) for i in range(3) if 0 <= i + d < 4]
        assert orders[0].tolist() == anti and orders[1].tolist() == main
        assert orders[2].tolist() == anti[::-1] and orders[3].tolist() == main[::-1]
    finally:
        del sys.modules["custom_family"]
        vssm.models._registry._FAMILIES.pop("diagmamba", None)
        for name in ("diagmamba_nano", "diagmamba_tiny"):
            vssm.models._registry._MODELS.pop(name, None)


@pytest.fixture(scope="module")
def trained_plugin_model(tmp_path_factory):
    """diagmamba_nano trained for one epoch on the embedded digits by the classification trainer."""
    out = tmp_path_factory.mktemp("diag")
    text = _run([sys.executable, "classification/main.py", "--cfg", "configs/classification/vmamba/vmamba_nano.yaml",
                 "--output", str(out), "--opts", "MODEL.NAME", "diagmamba_nano", "TRAIN.EPOCHS", "1",
                 "TRAIN.WARMUP_EPOCHS", "0", "DATA.NUM_WORKERS", "0", "DATA.IMG_SIZE", "32"])
    assert "model: diagmamba_nano" in text and "* Acc@1" in text
    return out / "diagmamba_nano" / "default" / "best.pth"


def test_the_classification_trainer_trains_it(trained_plugin_model):
    record = vssm.checkpoint.read_checkpoint(str(trained_plugin_model))
    assert record["acc1"] > 30, "one epoch on the digits is well above chance (10 %)"


def test_predict_export_and_flops_take_it(trained_plugin_model, tmp_path):
    from skimage import data as photos
    from PIL import Image
    image = tmp_path / "coins.png"
    Image.fromarray(photos.coins()).convert("RGB").save(image)
    text = _run([sys.executable, "-m", "vssm.predict", "--model", "diagmamba_nano", "--checkpoint",
                 str(trained_plugin_model), str(image)])
    assert "coins.png" in text
    onnx = tmp_path / "diag.onnx"
    text = _run([sys.executable, "-m", "vssm.export", "--model", "diagmamba_nano", "--size", "64", "64", "--out",
                 str(onnx)])
    assert onnx.exists() and "fixed at 64x64" in text
    text = _run([sys.executable, "analyze/flops.py", "--model", "diagmamba_nano"])
    assert "| diagmamba_nano |" in text


def test_the_change_detection_trainer_takes_it(tmp_path):
    from ..changedetection.helpers import make_pairs
    data = make_pairs(tmp_path / "pairs")
    text = _run([sys.executable, "changedetection/main.py", "--cfg", "configs/changedetection/vmamba/vmamba_nano.yaml",
                 "--data-path", data, "--output", str(tmp_path / "out"), "--opts", "MODEL.BACKBONE", "diagmamba_nano",
                 "TRAIN.EPOCHS", "1", "DATA.BATCH_SIZE", "4", "DATA.CROP_SIZE", "32", "DATA.NUM_WORKERS", "0",
                 "MODEL.DECODER.WIDTH", "16"])
    assert "diagmamba_nano encoder" in text and " * Precision" in text


def test_openmmlab_builds_it_from_a_config(tmp_path):
    pytest.importorskip("mmdet")
    config = tmp_path / "diag.py"
    config.write_text(
        "_base_ = ['%s']\nmodel = dict(backbone=dict(type='DiagMamba', arch='diagmamba_nano'))\n"
        % os.path.join(ROOT, "configs", "detection", "_base_", "mask_rcnn_shapes_nano.py"))
    out = _run([sys.executable, "-c", (
        "import sys, torch\n"
        "from mmengine.config import Config\n"
        "from mmdet.registry import MODELS\n"
        "from mmdet.utils import register_all_modules\n"
        "register_all_modules()\n"
        "import vssm.mm.mmdet\n"
        "cfg = Config.fromfile(sys.argv[1])\n"
        "model = MODELS.build(cfg.model)\n"
        "print(type(model.backbone).__name__, [tuple(f.shape) for f in model.backbone(torch.randn(1, 3, 64, 64))])"),
        str(config)])
    assert "DiagMamba [(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]" in out


def test_env_and_gpu_check_list_it():
    out = _run([sys.executable, "-c", (
        "from vssm.devtools.gpu_check.throughput import plan\n"
        "from vssm.env import families, to_markdown\n"
        "print(sorted({m for m, _, _ in plan(True)}))\n"
        "print(families())")])
    assert "'diagmamba_nano'" in out.splitlines()[0]
    assert "'name': 'diagmamba', 'title': 'DiagMamba', 'module': 'custom_family'" in out
