"""python -m vssm.predict on scikit-image's photographs: top-5 with names, class-attribution maps, errors."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

import vssm
from vssm.classification.config import get_config
from vssm.classification.task import run_metadata
from vssm.deploy.cam import CAM_METHODS, class_activation_maps, displayable, map_size, overlay_map
from vssm.data.images import read_image
from vssm.predict import build_transform, data_config, load_classifier, main

from .conftest import PHOTOS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANO = [n for n in vssm.list_models() if n.endswith("_nano")]
CLASSES = ["cat", "coffee", "person", "rocket", "tree", "water"]
SIZE = 64


def trainer_checkpoint(path, name, classes=CLASSES, in_chans=3, seed=0):
    """What classification/main.py writes as best.pth, for a freshly initialised ``name``."""
    torch.manual_seed(seed)
    model = vssm.create_model(name, num_classes=len(classes), in_chans=in_chans)
    family = name.split("_")[0]
    config = get_config(os.path.join(ROOT, "configs", "classification", family, f"{name}.yaml"),
                        ["DATA.IMG_SIZE", SIZE, "DATA.IN_CHANS", in_chans, "DATA.MEAN", [0.5] * in_chans,
                         "DATA.STD", [0.25] * in_chans])
    torch.save({"model": model.state_dict(), "epoch": 0, "acc1": 0.0, **run_metadata(config, classes)}, path)
    return model


def parse(out: str) -> dict:
    """{image: [its indented lines]} of the text output."""
    results = {}
    for line in out.splitlines():
        if line.startswith(" "):
            results[current].append(line.strip())
        else:
            current = line
            results[current] = []
    return results


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name", NANO)
def test_top5_with_trainer_classes_and_cam(name, photos, tmp_path, capsys):
    checkpoint = tmp_path / "best.pth"
    model = trainer_checkpoint(checkpoint, name).eval()
    images = [photos[p] for p in PHOTOS]
    code, out, err = run(capsys, "--model", name, "--checkpoint", checkpoint, "--cam", tmp_path / "cams",
                         "--batch-size", 2, *images)
    assert code == 0, err
    assert "RANDOM" not in err and f"input {SIZE}x{SIZE}" in err
    results = parse(out)
    assert list(results) == images
    for lines in results.values():
        ranked = [line.split(maxsplit=2) for line in lines[:5]]
        assert [r[0] for r in ranked] == ["1.", "2.", "3.", "4.", "5."]
        assert all(r[2] in CLASSES for r in ranked) and len({r[2] for r in ranked}) == 5
        probabilities = [float(r[1].rstrip("%")) for r in ranked]
        assert probabilities == sorted(probabilities, reverse=True)
        assert lines[5].startswith(f"attribution map of '{ranked[0][2]}'")
    # the printed top-1 is the model's, with the trainer's preprocessing (shorter side to 64, centre crop, mean
    # 0.5, std 0.25)
    with Image.open(images[1]) as img:
        img = TF.center_crop(TF.resize(img.convert("RGB"), SIZE, TF.InterpolationMode.BICUBIC), SIZE)
    with torch.no_grad():
        logits = model(((TF.to_tensor(img) - 0.5) / 0.25)[None])
    assert results[images[1]][0].split(maxsplit=2)[2] == CLASSES[logits.argmax().item()]
    for photo in PHOTOS:  # 64 x 64 inputs drawn 4 times larger, titled, with a colour bar beside
        with Image.open(tmp_path / "cams" / f"{photo}_gradcam.png") as cam:
            assert cam.format == "PNG" and cam.height > 4 * SIZE and cam.width > 4 * SIZE + 40
            assert np.asarray(cam.convert("RGB")).std() > 5
            top = results[photos[photo]][0].split(maxsplit=2)
            assert cam.text["Title"] == (f"{photo}.png: {top[2]} ({float(top[1].rstrip('%')):.1f}%); "
                                         f"gradcam, stage 3 (2x2 cells); weights: best.pth"), cam.text


@pytest.mark.parametrize("name", NANO)
def test_attribution_maps_are_not_constant(name, photos):
    torch.manual_seed(0)
    model, _ = load_classifier(name)
    config = data_config(model, img_size=SIZE)
    transform = build_transform(config)
    images = torch.stack([transform(read_image(photos[p], 3)) for p in PHOTOS])
    with torch.no_grad():
        top = model(images).argmax(-1).tolist()
    # each image's top class: for an arbitrary class of a randomly initialised model the evidence can be all
    # negative, which grad-cam rightly draws as a flat map (seen for one class in one test order)
    maps = class_activation_maps(model, images, top)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() - m.min() > 0.5 for m in maps)  # each scaled to [0, 1] by grad-cam: not flat
    picture = displayable(images[0], config["mean"], config["std"])
    assert picture.shape == (SIZE, SIZE, 3) and 0 <= picture.min() and picture.max() <= 1
    assert overlay_map(picture, maps[0]).dtype == np.uint8


def test_other_cam_method_and_json(photos, tmp_path, capsys):
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    method = "gradcam++"
    assert method in CAM_METHODS
    code, out, err = run(capsys, "--model", "vmamba_nano", "--checkpoint", checkpoint, "--cam", tmp_path,
                         "--cam-method", method, "--json", "--topk", 3, photos["chelsea"], photos["coffee"])
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == [photos["chelsea"], photos["coffee"]]
    assert all(len(r["top"]) == 3 and r["top"][0]["name"] in CLASSES for r in records)
    assert all(os.path.isfile(r["cam"]) and r["cam"].endswith(f"_{method}.png") for r in records)


def test_random_weights_say_so_and_name_imagenet_classes(photos, capsys):
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    imagenet = {info.index_to_description(i) for i in range(1000)}
    code, out, err = run(capsys, "--model", "spatialmamba_nano", "--img-size", 96, photos["astronaut"])
    assert code == 0
    assert err.count("RANDOM weights") == 2 and "MEANINGLESS" in err  # before and after the predictions
    names = [line.split(maxsplit=2)[2] for line in parse(out)[photos["astronaut"]]]
    assert len(names) == 5 and all(n in imagenet for n in names)


def test_grayscale_photograph_through_a_one_channel_model(photos, tmp_path, capsys):
    checkpoint = tmp_path / "gray.pth"
    trainer_checkpoint(checkpoint, "quadmamba_nano", classes=["a", "b", "c"], in_chans=1)
    code, out, err = run(capsys, "--model", "quadmamba_nano", "--checkpoint", checkpoint, "--cam", tmp_path,
                         photos["camera"], photos["chelsea"])  # a colour photograph is read as luminance
    assert code == 0, err
    assert "1 channels" in err and out.count("attribution map") == 2
    with Image.open(tmp_path / "camera_gradcam.png") as cam:
        assert min(cam.size) > 4 * SIZE and "weights: gray.pth" in cam.text["Title"]


def test_errors(photos, tmp_path, capsys):
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    # an unreadable image is reported, the others still classified, the exit status says so
    code, out, err = run(capsys, "--model", "vmamba_nano", "--checkpoint", checkpoint, broken, photos["coffee"])
    assert code == 1
    assert f"{broken}\n  error: cannot read image {broken}" in out and out.count("  1. ") == 1
    assert "1 of 2 image(s) could not be read or classified" in err
    # a checkpoint of another model, a missing path, an unknown model, a corrupt checkpoint, no CUDA
    code, _, err = run(capsys, "--model", "spatialmamba_nano", "--checkpoint", checkpoint, photos["coffee"])
    assert code == 2 and "does not fit --model spatialmamba_nano (it was trained as vmamba_nano" in err
    code, _, err = run(capsys, "--model", "vmamba_nano", tmp_path / "nowhere")
    assert code == 2 and "no such file or folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "--model", "vmamba_nano", empty)
    assert code == 2 and "no images under" in err
    code, _, err = run(capsys, "--model", "vmamba_nope", photos["coffee"])
    assert code == 2 and "unknown model 'vmamba_nope'" in err
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    code, _, err = run(capsys, "--model", "vmamba_nano", "--checkpoint", truncated, photos["coffee"])
    assert code == 2 and "truncated or corrupt" in err
    if not torch.cuda.is_available():
        code, _, err = run(capsys, "--model", "vmamba_nano", "--device", "cuda", photos["coffee"])
        assert code == 2 and "CUDA is not available" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "vmamba_nano", "--topk", "0", photos["coffee"]])
    assert exit_info.value.code == 2
    assert "error: --topk must be at least 1, got 0" in capsys.readouterr().err


def test_attribution_picture_of_a_small_input_is_upscaled_and_says_random_weights(photos, tmp_path, capsys):
    """Before: a bare 32 x 32 overlay with no title, no scale, and nothing saying the weights were random."""
    from vssm.analysis.plots import png_title
    code, out, err = run(capsys, "--model", "vmamba_nano", "--img-size", 32, "--cam-stage", -2, "--cam", tmp_path,
                         "--topk", 1, photos["coffee"])
    assert code == 0, err
    _, probability, name = parse(out)[photos["coffee"]][0].split(maxsplit=2)
    path = tmp_path / "coffee_gradcam.png"
    assert png_title(path) == (f"coffee.png: {name} ({float(probability.rstrip('%')):.1f}%); gradcam, stage 2 "
                               f"(2x2 cells); random weights (no --checkpoint)")
    with Image.open(path) as cam:
        picture = np.asarray(cam.convert("RGB"))
    assert picture.shape[0] >= 256 and picture.shape[1] >= 256 + 40
    # the input drawn 8 times larger, one pixel per pixel: 256 rows and columns of the overlay, the bar beside it
    coloured = (picture.max(axis=2).astype(int) - picture.min(axis=2)) > 30
    rows, cols = np.nonzero(coloured.any(axis=1))[0], np.nonzero(coloured.any(axis=0))[0]
    assert len(rows) >= 256 and len(cols) >= 256


def test_save_cam_figure_upscales_by_whole_pixels(tmp_path):
    from vssm.deploy.cam import upscaled
    picture = np.random.default_rng(0).random((32, 24, 3)).astype(np.float32)
    attribution = np.linspace(0, 1, 32 * 24, dtype=np.float32).reshape(32, 24)
    big, big_map = upscaled(picture, attribution, 11)
    assert big.shape == (352, 264, 3) and big_map.shape == (352, 264)
    assert np.array_equal(big[::11, ::11], picture) and np.array_equal(big[10::11, 10::11], picture)
    assert 0 <= big_map.min() and big_map.max() <= 1 and abs(big_map.mean() - attribution.mean()) < 0.01


def test_a_flat_attribution_map_says_so(tmp_path):
    """A map with nothing in it (e.g. Grad-CAM's ReLU of only negative evidence) is not drawn as if it were one."""
    from vssm.analysis.plots import png_title
    from vssm.deploy.cam import save_cam_figure
    picture = np.full((32, 32, 3), 0.5, np.float32)
    save_cam_figure(str(tmp_path / "flat.png"), picture, np.zeros((32, 32), np.float32), "digit.png: 3 (91.1%)")
    assert png_title(tmp_path / "flat.png") == "digit.png: 3 (91.1%); flat map (all 0): nothing localised at this stage"
    attribution = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    save_cam_figure(str(tmp_path / "map.png"), picture, attribution, "digit.png: 3 (91.1%)")
    assert png_title(tmp_path / "map.png") == "digit.png: 3 (91.1%)"


def test_small_images_need_an_earlier_stage(photos):
    torch.manual_seed(0)
    model, _ = load_classifier("vmamba_nano")
    config = data_config(model, img_size=32)
    image = build_transform(config)(read_image(photos["chelsea"], 3))[None]
    assert map_size(model, (32, 32)) == (1, 1) and map_size(model, (32, 32), stage=-2) == (2, 2)
    with torch.no_grad():
        top = model(image).argmax(-1).tolist()  # the top class: see test_attribution_maps_are_not_constant
    flat = class_activation_maps(model, image, top)  # the last stage is a single token: nothing to localise
    assert flat.max() == flat.min()
    finer = class_activation_maps(model, image, top, stage=-2)
    assert finer.max() - finer.min() > 0.5
    with pytest.raises(ValueError, match="stage 4 does not exist"):
        class_activation_maps(model, image, [0], stage=4)
