"""The checkpoint reader's limits: numpy data rebuilt from a plain numeric description only, and what a file can
make it allocate bounded before anything is allocated (issue 26). Each crafted file is what an adversary would
ship; each test asserts the refusal, its message, and that legitimate files of the same kind still load."""
import os
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vssm
from vssm.checkpoint import (CheckpointError, CheckpointMismatchError, extract_state_dict, load_checkpoint,
                             read_checkpoint, read_training_checkpoint)


class _Reduce:
    """Pickles as ``fn(*args)`` with an optional BUILD ``state``: exactly the opcodes numpy's own pickles use."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _dtype(code, state):
    """A pickled numpy dtype: ``numpy.dtype(code, False, True)`` then BUILD ``state``."""
    return _Reduce(np.dtype, (code, False, True), state)


def _array(dtype, data: bytes, shape=(4,)):
    """A pickled numpy array: ``_reconstruct(ndarray, (0,), b'b')`` then BUILD (1, shape, dtype, False, data)."""
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    return _Reduce(multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, data))


def _save(tmp_path, extra, name="crafted.pth"):
    path = tmp_path / name
    torch.save({"model": vssm.create_model("vmamba_nano").state_dict(), "extra": extra}, path)
    return path


def _refused(path, *texts):
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    for text in texts:
        assert text in str(err.value), str(err.value)
    return str(err.value)


PLAIN = (3, "<", None, None, None, -1, -1, 0)  # numpy's state of a plain float64


@pytest.mark.parametrize("case,state", [
    ("a field 1 TiB past a 32-byte buffer", (3, "|", None, ("f",), {"f": (_dtype("f8", PLAIN), 2**40)}, 8, 1, 16)),
    ("a field 4 MB past the buffer", (3, "|", None, ("f",), {"f": (_dtype("f8", PLAIN), 4 * 2**20)}, 8, 1, 16)),
    ("a float64 flagged as holding objects", (3, "<", None, None, None, -1, -1, 0x3F)),
    ("an item size larger than the type", (3, "<", None, None, None, 4096, -1, 0)),
])
def test_crafted_dtype_states_are_refused(tmp_path, case, state):
    """The allowlisted dtype used to apply any pickled state (fields, offsets, flags) through numpy's
    __setstate__: a 'float64' array whose field reads 1 TiB (or 4 MB) past its data loaded with ok=True."""
    path = _save(tmp_path, _array(_dtype("f8", state), bytes(32)))
    _refused(path, "only plain numeric dtypes are read", "refusing to load")
    with pytest.raises(CheckpointError):
        load_checkpoint(vssm.create_model("vmamba_nano"), path)


@pytest.mark.parametrize("code", ["O8", "V8", "M8", "U4", "S4", "(2,)f8", "f8,i4"])
def test_dtype_codes_other_than_plain_numbers_are_refused(tmp_path, code):
    _refused(_save(tmp_path, _array(_dtype(code, PLAIN), bytes(32))), "not allowed")


def test_arrays_whose_data_does_not_match_their_shape_are_refused(tmp_path):
    _refused(_save(tmp_path, _array(_dtype("f8", PLAIN), bytes(8), shape=(10**6,))), "needs 8000000 bytes")
    _refused(_save(tmp_path, _Reduce(np.ndarray, ((10**12,),))), "numpy.ndarray(...) is not allowed")


def test_object_arrays_are_refused_also_inside_mmengine_history(tmp_path):
    _refused(_save(tmp_path, np.array([{"a": 1}, None], dtype=object)), "not allowed")
    history = pytest.importorskip("mmengine.logging.history_buffer")
    buffer = history.HistoryBuffer([1.0, 2.0], [1, 1])
    buffer._log_history = np.array([{"a": 1}, "b"], dtype=object)
    _refused(_save(tmp_path, {"message_hub": {"log_scalars": {"loss": buffer}}}), "not allowed")
    buffer._log_history = [1.0, 2.0]  # a list where the array belongs
    _refused(_save(tmp_path, {"message_hub": {"log_scalars": {"loss": buffer}}}), "HistoryBuffer whose _log_history")


def test_the_mm_test_tool_reads_through_the_same_reader(tmp_path):
    pytest.importorskip("mmengine")
    from mmengine.runner.checkpoint import _load_checkpoint

    from vssm.mm.tools import _use_safe_checkpoint_loading
    _use_safe_checkpoint_loading()
    crafted = _save(tmp_path, _array(_dtype("f8", (3, "<", None, None, None, -1, -1, 0x3F)), bytes(32)))
    with pytest.raises(CheckpointError, match="only plain numeric dtypes"):
        _load_checkpoint(str(crafted))


def test_plain_numeric_arrays_and_scalars_still_load(tmp_path):
    values = {"f8": np.arange(6, dtype=np.float64).reshape(2, 3), "big_endian": np.arange(3, dtype=">i4"),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)), "bool": np.ones(2, bool),
              "complex": np.array([1 + 2j]), "empty": np.zeros((0, 3), np.uint8), "scalar": np.float64(82.5),
              "dtype": np.dtype("i2"), "nested": [np.int64(3), (np.arange(2),)]}
    loaded = read_checkpoint(_save(tmp_path, values))["extra"]
    for key, value in values.items():
        if key == "nested":
            assert loaded[key][0] == 3 and loaded[key][1][0].tolist() == [0, 1]
        elif key == "dtype":
            assert loaded[key] == np.dtype("i2")
        else:
            assert type(loaded[key]) is type(value) and loaded[key].dtype == value.dtype
            np.testing.assert_array_equal(loaded[key], value)
    assert loaded["fortran"].flags.f_contiguous and loaded["f8"].flags.writeable


# ---- memory bombs ------------------------------------------------------------------------------------------
def _deflated_bomb(tmp_path, megabytes: int):
    """A .pth whose one tensor record, ``megabytes`` MB of zeros, is deflated: a few hundred KB on disk."""
    small = tmp_path / "small.pth"
    torch.save({"w": torch.zeros(4)}, small)
    numel = megabytes * 2**20 // 4
    with zipfile.ZipFile(small) as archive:
        entries = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    big = struct.pack("<i", numel)
    patched = entries[pkl].replace(b"K\x04tq\x07QK\x00K\x04\x85", b"J" + big + b"tq\x07QK\x00J" + big + b"\x85")
    assert patched != entries[pkl], "torch.save's pickle layout changed: update the crafted bomb"
    entries[pkl] = patched
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            if name.endswith("data/0"):
                with archive.open(name, "w", force_zip64=True) as f:
                    for _ in range(megabytes):
                        f.write(bytes(2**20))
            else:
                archive.writestr(name, data)
    return bomb


def test_a_deflated_record_is_refused_before_it_is_inflated(tmp_path):
    bomb = _deflated_bomb(tmp_path, 64)
    assert os.path.getsize(bomb) < 2**20
    message = _refused(bomb, "data/0 is compressed", "expands to 64.0 MiB", "torch.save never compresses")
    assert "refusing to load" in message


def test_a_re_zipped_checkpoint_of_real_weights_still_loads(tmp_path):
    """Weights barely compress: a re-zipped (deflated) checkpoint is within the bound and loads."""
    model = vssm.create_model("vmamba_nano")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as src, \
            zipfile.ZipFile(tmp_path / "rezipped.pth", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert load_checkpoint(vssm.create_model("vmamba_nano"), tmp_path / "rezipped.pth").ok


def test_a_declared_total_beyond_the_memory_available_is_refused(tmp_path, monkeypatch):
    import vssm.runtime
    torch.save(vssm.create_model("vmamba_nano").state_dict(), tmp_path / "w.pth")
    monkeypatch.setattr(vssm.runtime, "available_memory", lambda: 2**20)
    _refused(tmp_path / "w.pth", "more than the 1.0 MiB of memory available")


def test_a_stride_zero_head_is_refused_by_name(tmp_path):
    """zeros(1, 1).expand(5_000_000, 256): 4 bytes in the file, a 5M-class head (6.3 GB) once a model is built."""
    state = vssm.create_model("vmamba_nano").state_dict()
    state["classifier.head.weight"] = torch.zeros(1, 1).expand(5_000_000, 256)
    state["classifier.head.bias"] = torch.zeros(1).expand(5_000_000)
    torch.save({"model": state}, tmp_path / "expanded.pth")
    assert os.path.getsize(tmp_path / "expanded.pth") < 10 * 2**20
    _refused(tmp_path / "expanded.pth", "'classifier.head.", "stride-0", "holds 4 bytes")
    save_file({"w": torch.zeros(3)}, tmp_path / "fine.safetensors")  # safetensors: bounded by construction
    assert read_checkpoint(tmp_path / "fine.safetensors")["w"].shape == (3,)


# ---- what a checkpoint holds: clear errors ----------------------------------------------------------------------
def test_a_state_dict_that_is_a_list_and_an_epoch_that_is_a_string(tmp_path):
    weights = list(vssm.create_model("vmamba_nano").state_dict().values())
    torch.save({"model": weights, "epoch": 3}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="'model' entry is a list, not a dict of tensors"):
        load_checkpoint(vssm.create_model("vmamba_nano"), tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="'model' entry is a list"):
        read_training_checkpoint(tmp_path / "list.pth", required=("model", "epoch"))
    state = {"model": vssm.create_model("vmamba_nano").state_dict(), "optimizer": {"state": {}, "param_groups": []},
             "lr_scheduler": {}, "epoch": "3"}
    torch.save(state, tmp_path / "epoch.pth")
    with pytest.raises(CheckpointError, match="'epoch' entry is a str '3', not an integer >= 0"):
        read_training_checkpoint(tmp_path / "epoch.pth")
    state["epoch"] = 3
    torch.save(state, tmp_path / "good.pth")
    assert read_training_checkpoint(tmp_path / "good.pth")["epoch"] == 3
    with pytest.raises(CheckpointError, match="keys that are not names"):
        extract_state_dict({1: torch.zeros(1)})


def test_a_folder_and_a_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is a folder without weights"):
        read_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nothing.pth")


def test_four_channel_weights_into_a_one_channel_model_name_the_channels(tmp_path):
    torch.save(vssm.create_model("vmamba_nano", in_chans=4).state_dict(), tmp_path / "four.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(vssm.create_model("vmamba_nano", in_chans=1), tmp_path / "four.pth")
    assert "takes 4 input channels and the model's 1" in str(err.value)
    assert "build the model with in_chans=4" in str(err.value)
