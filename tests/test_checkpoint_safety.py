"""Reading checkpoints never runs code from the file: gadget chains fail closed, with no side effect.

Each hostile file is made with ``torch.save`` of an object whose ``__reduce__`` emits the chain, so the
pickle is what an attacker would ship. Every test asserts the refusal *and* that the chain's payload (a
file it would write) did not happen.
"""
import argparse
import os
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
import torch
from yacs.config import CfgNode

import vssm
from vssm.checkpoint import CheckpointError, load_checkpoint, read_checkpoint


class _Reduce:
    """Pickles as ``fn(*args)``: a REDUCE of whatever globals fn and args name."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):  # so that pickle accepts an instance as the callable of an outer REDUCE
        raise AssertionError("never called while pickling")


def _save(tmp_path, payload, name="hostile.pth"):
    path = tmp_path / name
    torch.save({"model": vssm.create_model("vmamba_nano").state_dict(), "extra": payload}, path)
    return path


def _refused(path, *matches):
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    text = str(err.value)
    for m in matches:
        assert m in text, text
    assert "weights_only=False" not in text, "the refusal must not advise plain pickle as a casual fix"
    assert "--trust-checkpoint" in text
    with pytest.raises(CheckpointError):  # and the same through the model loader
        load_checkpoint(vssm.create_model("vmamba_nano"), path)
    return text


def test_numpy_tofile_gadget_writes_nothing(tmp_path):
    """The reported hole: getattr(a crafted ndarray, 'tofile')(path) during loading."""
    target = tmp_path / "written_by_gadget.bin"
    array = np.frombuffer(b"owned by the checkpoint", dtype=np.uint8).copy()
    path = _save(tmp_path, _Reduce(_Reduce(getattr, array, "tofile"), str(target)))
    _refused(path, "tofile")
    assert not target.exists()


@pytest.mark.parametrize("fn,args", [
    (os.system, ("touch {target}",)),
    (subprocess.call, (["touch", "{target}"],)),
    (eval, ("open(r'{target}', 'w').close()",)),
    (exec, ("open(r'{target}', 'w').close()",)),
])
def test_code_execution_globals_are_refused_by_name(tmp_path, fn, args):
    target = tmp_path / "side_effect"
    args = tuple(a.format(target=target) if isinstance(a, str) else [s.format(target=target) for s in a]
                 for a in args)
    text = _refused(_save(tmp_path, _Reduce(fn, *args)), "the global")
    assert fn.__name__ in text
    assert not target.exists()


def test_getattr_is_only_for_mmengine_statistics(tmp_path):
    """The narrow getattr stand-in refuses every other class and attribute."""
    target = tmp_path / "written_by_gadget.bin"
    for obj, name in ((np.ndarray, "tofile"), (CfgNode, "merge_from_file"), (torch.Tensor, "numpy")):
        payload = _Reduce(_Reduce(getattr, obj, name), str(target))
        _refused(_save(tmp_path, payload), "not allowed")
    assert not target.exists()


def test_mmengine_history_buffer_methods_other_than_statistics_are_refused(tmp_path):
    history = pytest.importorskip("mmengine.logging.history_buffer")
    target = tmp_path / "side_effect"
    for name in ("update", "register_statistics", "__init__", "__class__"):
        _refused(_save(tmp_path, _Reduce(getattr, history.HistoryBuffer, name)), "not allowed")
    # a statistics method is read back, but calling it is not something a pickle may do
    method = _Reduce(getattr, history.HistoryBuffer, "mean")
    _refused(_save(tmp_path, _Reduce(method, str(target))), "unrecognized function")
    assert not target.exists()


def test_object_arrays_are_refused(tmp_path):
    """Only numeric numpy dtypes: an object array could carry arbitrary objects into the result."""
    _refused(_save(tmp_path, np.array([{"a": 1}, None], dtype=object)), "not allowed")


def test_allowed_config_substitute_cannot_be_turned_into_a_call(tmp_path):
    """A yacs CfgNode is rebuilt as a plain dict: REDUCE on its name builds a dict, nothing else."""
    target = tmp_path / "side_effect"
    path = _save(tmp_path, _Reduce(CfgNode, {"x": str(target)}))
    state = read_checkpoint(path)
    assert type(state["extra"]) is OrderedDict and state["extra"] == {"x": str(target)}
    assert not target.exists()


def test_release_and_training_layouts_still_load(tmp_path):
    """What the authors' and our checkpoints hold: configs, argparse namespaces, numpy scalars and arrays."""
    model = vssm.create_model("vmamba_nano")
    cfg = CfgNode({"MODEL": CfgNode({"NAME": "vssm", "DEPTHS": [2, 2, 8, 2]})})
    args = argparse.Namespace(batch_size=128, data_path="/data")
    path = tmp_path / "release.pth"
    torch.save({"model": model.state_dict(), "config": cfg, "args": args, "max_accuracy": np.float64(82.6),
                "history": np.arange(4, dtype=np.float32), "epoch": 264, "shape": torch.Size([1, 2]),
                "tags": frozenset({"a"})}, path)
    state = read_checkpoint(path)
    assert state["config"]["MODEL"]["NAME"] == "vssm" and state["args"].batch_size == 128
    assert float(state["max_accuracy"]) == 82.6 and state["history"].tolist() == [0, 1, 2, 3]
    assert load_checkpoint(vssm.create_model("vmamba_nano"), path).ok


def test_mmengine_log_history_loads(tmp_path):
    history = pytest.importorskip("mmengine.logging.history_buffer")
    buffer = history.HistoryBuffer([1.0, 2.0, 3.0], [1, 1, 1])
    backbone = {f"backbone.{k}": v for k, v in vssm.models.family_of("vmamba_nano").dense_backbone(
        "vmamba_nano").state_dict().items()}
    path = tmp_path / "iter_2.pth"
    torch.save({"state_dict": backbone, "message_hub": {"log_scalars": {"loss": buffer},
                "statistics": history.HistoryBuffer._statistics_methods}}, path)
    state = read_checkpoint(path)
    assert state["message_hub"]["log_scalars"]["loss"].mean() == 2.0


def test_trusted_opt_in_reads_anything(tmp_path):
    path = _save(tmp_path, _Opaque())  # an object outside the safe set
    _refused(path, f"the global {__name__}._Opaque")
    assert isinstance(read_checkpoint(path, trust_checkpoint=True)["extra"], _Opaque)


class _Opaque:
    pass


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("flag", ["--pretrained", "--resume"])
def test_trainer_refuses_the_gadget_and_writes_nothing(tmp_path, flag, capsys):
    from vssm.classification.main import cli
    target = tmp_path / "written_by_gadget.bin"
    array = np.frombuffer(b"owned", dtype=np.uint8).copy()
    path = _save(tmp_path, _Reduce(_Reduce(getattr, array, "tofile"), str(target)))
    cfg = os.path.join(ROOT, "configs", "classification", "vmamba", "vmamba_nano.yaml")
    code = cli(["--cfg", cfg, flag, str(path), "--output", str(tmp_path / "out"), "--opts", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0",
                "DATA.NUM_WORKERS", "0", "DATA.IMG_SIZE", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to load" in err and "tofile" in err
    assert not target.exists()


def test_mm_test_tool_refuses_the_gadget_and_writes_nothing(tmp_path):
    pytest.importorskip("mmseg", reason="the OpenMMLab stack is not installed (scripts/setup_mm.sh)")
    from vssm.mm.tools import test_main
    target = tmp_path / "written_by_gadget.bin"
    array = np.frombuffer(b"owned", dtype=np.uint8).copy()
    path = tmp_path / "iter_1.pth"
    torch.save({"state_dict": {}, "meta": _Reduce(_Reduce(getattr, array, "tofile"), str(target))}, path)
    config = os.path.join(ROOT, "configs", "segmentation", "vmamba", "upernet_vmamba_shapes-128x128_nano.py")
    from vssm.data.shapes import make_ade
    ade = make_ade(str(tmp_path / "ade"), train=2, val=2)
    data = [f"{split}_dataloader.dataset.data_root={ade}/" for split in ("train", "val", "test")]
    with pytest.raises(CheckpointError, match="tofile"):
        test_main([config, str(path), "--work-dir", str(tmp_path / "work"), "--cfg-options", *data])
    assert not target.exists()
