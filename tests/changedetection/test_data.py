"""Reading LEVIR-CD+ in both layouts, paired augmentation, clear errors, and the embedded pairs."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vssm.changedetection.data import ChangeDetectionDataset, DataError, list_pairs, read_label
from vssm.data import change_pairs as synthetic

from .helpers import CHANGEMAMBA, make_pairs

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def dataset(root, split="train", **kwargs):
    return ChangeDetectionDataset(str(root), split, MEAN, STD, **kwargs)


def test_both_layouts_read_the_same_pairs(tmp_path):
    levir = make_pairs(tmp_path / "levir", counts=(("train", 3),))
    mamba = make_pairs(tmp_path / "mamba", counts=(("train", 3),), layout=CHANGEMAMBA)
    a, b = dataset(levir), dataset(mamba)
    assert (a.layout, b.layout) == ("levir", "changemamba") and a.names == b.names == ["train_0.png", "train_1.png",
                                                                                        "train_2.png"]
    for i in range(3):
        for x, y in zip(a[i][:3], b[i][:3]):
            assert torch.equal(x, y)
    pre, post, label, index = a[1]
    assert pre.shape == post.shape == (3, 48, 48) and label.shape == (48, 48) and index == 1
    assert label.dtype == torch.long and set(label.unique().tolist()) <= {0, 1}
    raw = np.asarray(Image.open(os.path.join(levir, "train", "A", "train_1.png")), np.float32)
    torch.testing.assert_close(pre, torch.tensor((raw / 255 - 0.5) / 0.25).permute(2, 0, 1))
    # ChangeMamba's list file selects (and orders) the pairs
    (tmp_path / "mamba" / "train_set.txt").write_text("train_2.png\ntrain_0.png\n")
    assert dataset(mamba).names == ["train_2.png", "train_0.png"]


def test_paired_augmentation_moves_images_and_label_together(tmp_path):
    root = tmp_path / "d"
    for part in ("A", "B", "label"):
        os.makedirs(root / "train" / part)
    label = np.zeros((40, 40), np.uint8)
    label[5:12, 3:30] = 255  # an asymmetric shape: every flip and rotation moves it differently
    label[20:38, 30:34] = 255
    for part in ("A", "B"):
        Image.fromarray(np.repeat(label[..., None], 3, axis=2)).save(root / "train" / part / "x.png")
    Image.fromarray(label).save(root / "train" / "label" / "x.png")
    data = dataset(root, crop=24, hflip=0.5, vflip=0.5, rotate=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        pre, post, lab, _ = data[0]
        assert pre.shape == (3, 24, 24) and lab.shape == (24, 24)
        for img in (pre, post):
            torch.testing.assert_close((img * 0.25 + 0.5)[0] > 0.5, lab == 1)
        seen.add(lab.numpy().tobytes())
    assert len(seen) > 20  # the draws differ


@pytest.mark.parametrize("breakage,message", [
    ("unpaired", "unpaired file(s): train_1.png (only in A/label)"),
    ("size", "sizes differ (width x height): A 48x48, B 48x40, label 48x48"),
    ("label_values", "holds values [0, 1, 255]"),
    ("colour_label", "is a colour image"),
    ("corrupt", "cannot read image"),
    ("layout", "neither A/, B/, label/"),
    ("list", "names 3 missing file(s), e.g. T1/train_9.png, T2/train_9.png"),
    ("crop", "DATA.CROP_SIZE 64 exceeds pair"),
])
def test_bad_datasets_are_named(tmp_path, breakage, message):
    layout = CHANGEMAMBA if breakage == "list" else ("A", "B", "label")
    root = make_pairs(tmp_path / "d", counts=(("train", 3),), layout=layout)
    split = os.path.join(root, "train")
    kwargs = {}
    if breakage == "unpaired":
        os.remove(os.path.join(split, "B", "train_1.png"))
    elif breakage == "size":
        Image.new("RGB", (48, 40)).save(os.path.join(split, "B", "train_2.png"))
    elif breakage == "label_values":
        label = np.zeros((48, 48), np.uint8)
        label[:4], label[4:8] = 1, 255
        Image.fromarray(label).save(os.path.join(split, "label", "train_0.png"))
    elif breakage == "colour_label":
        Image.new("RGB", (48, 48), (255, 0, 0)).save(os.path.join(split, "label", "train_0.png"))
    elif breakage == "corrupt":
        with open(os.path.join(split, "A", "train_2.png"), "wb") as f:
            f.write(b"not an image")
    elif breakage == "layout":
        os.rename(os.path.join(split, "B"), os.path.join(split, "post"))
    elif breakage == "list":
        (tmp_path / "d" / "train_set.txt").write_text("train_0.png\ntrain_9.png\n")
    else:
        kwargs["crop"] = 64
    with pytest.raises(DataError, match=None) as info:
        dataset(root, **kwargs)
    assert message in str(info.value)
    if breakage in ("size", "label_values", "corrupt"):
        assert "train_" in str(info.value)  # the file is named


def test_labels_read_as_zero_one(tmp_path):
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "p.png")
    assert read_label(str(tmp_path / "p.png")).sum() == 1
    Image.new("1", (4, 4), 1).save(tmp_path / "b.png")
    assert read_label(str(tmp_path / "b.png")).sum() == 16


def test_generated_pairs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    changed, unchanged = [], []
    for _ in range(6):
        pre, post, label = synthetic.generate_pair(rng, size=64)
        assert pre.shape == post.shape == (64, 64, 3) and pre.dtype == np.uint8 and set(np.unique(label)) <= {0, 255}
        diff = np.abs(pre.astype(float) - post.astype(float)).mean(-1)
        changed.append(diff[label == 255].mean())
        unchanged.append(diff[label == 0].mean())
    assert 0 < np.mean(unchanged) < np.mean(changed)
    monkeypatch.setattr(synthetic, "SPLITS", {"train": (3, 0), "test": (2, 1)})
    root = synthetic.prepare_change_pairs(str(tmp_path / "pairs"))
    layout, pairs = list_pairs(root, "test")
    assert layout == "levir" and [p[0] for p in pairs] == ["test_0000.png", "test_0001.png"]
    assert synthetic.prepare_change_pairs(str(tmp_path / "pairs")) == root  # written once
