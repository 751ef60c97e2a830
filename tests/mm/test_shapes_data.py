"""The generated shapes sets (vssm.data.shapes, scripts/make_shapes_data.py): seeded, annotations that match the
pictures, both formats describing the same scenes, sets replaced when made otherwise."""
import json
import os
import runpy

import numpy as np
import pytest
from PIL import Image

from vssm.data.shapes import CLASSES, make_ade, make_coco, mask_to_rle, scene

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return out


def _decode(rle):
    """COCO's uncompressed RLE -> (H, W) bool, by pycocotools (the reader the evaluation uses)."""
    mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools comes with the OpenMMLab stack")
    h, w = rle["size"]
    return mask_utils.decode(mask_utils.frPyObjects(rle, h, w)).astype(bool)


@pytest.mark.parametrize("mask", [np.zeros((5, 4), bool), np.ones((5, 4), bool),
                                  np.eye(5, 4, dtype=bool), ~np.eye(5, 4, dtype=bool),
                                  np.random.default_rng(0).random((7, 9)) > 0.5])
def test_rle_decodes_to_the_mask(mask):
    rle = mask_to_rle(mask)
    assert sum(rle["counts"]) == mask.size and rle["size"] == list(mask.shape)
    np.testing.assert_array_equal(_decode(rle), mask)


def test_scenes_are_varied_and_their_masks_disjoint():
    rng = np.random.default_rng(0)
    counts, classes = [], set()
    for _ in range(40):
        image, shapes = scene(rng, 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        counts.append(len(shapes))
        covered = np.zeros((96, 96), int)
        for kind, visible in shapes:
            classes.add(kind)
            assert visible.sum() >= 20, "every shape is seen"
            covered += visible
        assert covered.max() <= 1, "a pixel belongs to one shape: the top one"
    assert min(counts) >= 1 and max(counts) >= 4 and len(set(counts)) >= 3
    assert classes == set(range(len(CLASSES)))


def test_coco_set_is_seeded_and_its_annotations_fit_the_masks(tmp_path):
    first = make_coco(str(tmp_path / "a"), train=3, val=2, size=64)
    again = make_coco(str(tmp_path / "b"), train=3, val=2, size=64)
    other = make_coco(str(tmp_path / "c"), train=3, val=2, size=64, seed=7)
    assert _files(first) == _files(again)
    assert _files(first) != _files(other)
    with open(os.path.join(first, "annotations", "instances_train2017.json")) as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    assert len(data["images"]) == 3 and len(os.listdir(os.path.join(first, "train2017"))) == 3
    for ann in data["annotations"]:
        mask = _decode(ann["segmentation"])
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum() > 0
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(CLASSES)


def test_ade_maps_paint_the_coco_masks_of_the_same_scenes(tmp_path):
    """Made with one seed, both formats hold the same scenes: the label map is the instances' classes."""
    coco = make_coco(str(tmp_path / "coco"), train=3, val=1, size=64, seed=3)
    ade = make_ade(str(tmp_path / "ade"), train=3, val=1, size=64, seed=3)
    with open(os.path.join(coco, "annotations", "instances_train2017.json")) as f:
        data = json.load(f)
    for image in data["images"]:
        expected = np.ones((64, 64), np.uint8)  # 1: background
        for ann in data["annotations"]:
            if ann["image_id"] == image["id"]:
                expected[_decode(ann["segmentation"])] = ann["category_id"] + 1
        stem = os.path.splitext(image["file_name"])[0]
        label = np.asarray(Image.open(os.path.join(ade, "annotations", "training", f"{stem}.png")))
        np.testing.assert_array_equal(label, expected)
        with open(os.path.join(coco, "train2017", image["file_name"]), "rb") as a, \
                open(os.path.join(ade, "images", "training", f"{stem}.jpg"), "rb") as b:
            assert a.read() == b.read()


def test_a_set_made_otherwise_is_replaced_and_the_same_one_kept(tmp_path):
    root = str(tmp_path / "ade")
    make_ade(root, train=3, val=1, size=48)
    label = os.path.join(root, "annotations", "training", "000000.png")
    made = os.stat(label).st_mtime_ns
    make_ade(root, train=3, val=1, size=48)
    assert os.stat(label).st_mtime_ns == made, "the same recipe: kept"
    make_ade(root, train=2, val=1, size=48)
    for folder in ("images", "annotations"):
        assert len(os.listdir(os.path.join(root, folder, "training"))) == 2, "no image of the older set left"
    assert np.asarray(Image.open(label)).shape == (48, 48)
    with pytest.raises(ValueError, match="train must be a whole number >= 1"):
        make_coco(str(tmp_path / "coco"), train=0)


def test_a_folder_that_is_not_a_finished_set_is_left_alone(tmp_path):
    """A folder without the marker (the user's own, or an interrupted writer's) is named, never overwritten;
    no scratch folder is left beside it."""
    root = tmp_path / "ade"
    (root / "images").mkdir(parents=True)
    (root / "images" / "mine.jpg").write_bytes(b"the user's")
    with pytest.raises(FileExistsError, match="ade exists and is not a finished generated set"):
        make_ade(str(root), train=2, val=1, size=48)
    assert (root / "images" / "mine.jpg").read_bytes() == b"the user's"
    assert sorted(os.listdir(tmp_path)) == ["ade"]


def test_script_writes_both_sets_and_names_bad_arguments(tmp_path, capsys):
    main = runpy.run_path(os.path.join(ROOT, "scripts", "make_shapes_data.py"))["main"]
    assert main(["--root", str(tmp_path), "--train", "2", "--val", "1", "--size", "48"]) == 0
    assert os.path.isfile(tmp_path / "shapes_coco" / "annotations" / "instances_val2017.json")
    assert len(os.listdir(tmp_path / "shapes_ade" / "images" / "training")) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(tmp_path), "--train", "many"])
    assert exit_.value.code == 2
    assert "error: argument --train: expected an integer, got 'many'" in capsys.readouterr().err
