"""Image files of any channel count (vssm.data.images): what is read, what is refused, and the tensor transforms."""
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from vssm.data.images import (ChannelMismatchError, ImageReadError, ImageTransform, image_files, read_image,
                           tensor_transform)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_pil_images_become_rgb_or_grayscale(tmp_path, rng):
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((12, 16), 255, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    gray = read_image(tmp_path / "rgb.png", 1)
    assert gray.mode == "L" and gray.size == (16, 12)
    assert np.array_equal(np.asarray(gray), np.asarray(Image.fromarray(rgb).convert("L")))
    assert np.array_equal(np.asarray(read_image(tmp_path / "rgba.png", 3)), rgb)  # alpha dropped, as ImageNet needs
    four = read_image(tmp_path / "rgba.png", 4)  # its own 4 bands, as a tensor in [0, 1]
    assert isinstance(four, torch.Tensor) and four.shape == (4, 12, 16)
    assert torch.allclose(four[:3], torch.from_numpy(rgb).permute(2, 0, 1) / 255.0) and torch.all(four[3] == 1)
    with pytest.raises(ChannelMismatchError, match=r"rgb\.png is a 3-channel RGB image but 4 channels"):
        read_image(tmp_path / "rgb.png", 4)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    gray = np.asarray(read_image(tmp_path / "g16.png", 1))
    assert gray.min() == 0 and gray.max() == 255 and len(np.unique(gray)) > 32


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_arrays_of_any_channels(tmp_path, rng, layout):
    image = rng.integers(0, 65536, (5, 9, 11), dtype=np.uint16)  # (C, H, W)
    stored = image if layout == "chw" else np.moveaxis(image, 0, -1)
    np.save(tmp_path / "x.npy", stored)
    tifffile.imwrite(tmp_path / "x.tif", stored)
    for name in ("x.npy", "x.tif"):
        x = read_image(tmp_path / name, 5)
        assert x.dtype == torch.float32 and x.shape == (5, 9, 11)
        assert torch.allclose(x, torch.from_numpy(image.astype(np.float32) / 65535))
    floats = rng.normal(size=(9, 11, 2)).astype(np.float32)
    np.save(tmp_path / "f.npy", floats)
    assert torch.equal(read_image(tmp_path / "f.npy", 2), torch.from_numpy(floats).permute(2, 0, 1))


def test_eight_bit_arrays_of_one_or_three_channels_become_pil_images(tmp_path, rng):
    np.save(tmp_path / "g.npy", rng.integers(0, 256, (6, 7), dtype=np.uint8))
    tifffile.imwrite(tmp_path / "c.tif", rng.integers(0, 256, (6, 7, 3), dtype=np.uint8))
    assert read_image(tmp_path / "g.npy", 1).mode == "L"
    assert read_image(tmp_path / "c.tif", 3).mode == "RGB"


def test_channel_mismatch_and_unreadable_files(tmp_path, rng):
    tifffile.imwrite(tmp_path / "four.tif", rng.integers(0, 256, (6, 7, 4), dtype=np.uint8))
    with pytest.raises(ChannelMismatchError, match=r"four\.tif holds 4 channels .* but 3 channels are expected"):
        read_image(tmp_path / "four.tif", 3)
    np.save(tmp_path / "gray.npy", np.zeros((6, 7), np.uint8))
    with pytest.raises(ChannelMismatchError, match=r"gray\.npy holds 1 channel .* but 3 channels"):
        read_image(tmp_path / "gray.npy", 3)
    np.save(tmp_path / "volume.npy", np.zeros((2, 3, 6, 7), np.float32))
    with pytest.raises(ChannelMismatchError, match="4 dimensions"):
        read_image(tmp_path / "volume.npy", 3)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    for name in ("broken.png", "broken.tif", "missing.png"):
        with pytest.raises(ImageReadError, match=name.replace(".", r"\.")) as info:
            read_image(tmp_path / name, 3)
        assert not isinstance(info.value, ChannelMismatchError)


def test_image_files_of_folders(tmp_path):
    for name in ("b/2.png", "a.JPG", "c.npy", "notes.txt", "b/1.tiff"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p[len(str(tmp_path)) + 1:] for p in image_files(str(tmp_path))] == ["a.JPG", "b/1.tiff", "b/2.png", "c.npy"]
    with pytest.raises(ImageReadError, match="no such file or folder"):
        image_files(str(tmp_path / "nowhere"))


def test_tensor_transforms():
    image = torch.full((5, 40, 60), 0.75)
    image[:, :, :30] = 0.25  # left half darker
    mean, std = [0.5] * 5, [0.25] * 5
    evaluated = tensor_transform(32, False, mean, std, crop_pct=0.8)(image)
    assert evaluated.shape == (5, 32, 32)
    assert torch.allclose(evaluated[:, :, 0], torch.tensor(-1.0)) and torch.allclose(evaluated[:, :, -1],
                                                                                     torch.tensor(1.0))
    torch.manual_seed(0)
    flips = [tensor_transform(24, True, mean, std, scale=(1.0, 1.0), hflip=1.0)(image) for _ in range(3)]
    assert all(f.shape == (5, 24, 24) for f in flips)
    assert all(torch.allclose(f[:, :, 0], torch.tensor(1.0), atol=0.02) for f in flips)  # always flipped
    erased = tensor_transform(24, True, mean, std, scale=(1.0, 1.0), hflip=0.0, re_prob=1.0)(image)
    assert not torch.allclose(erased, tensor_transform(24, True, mean, std, scale=(1.0, 1.0), hflip=0.0)(image))


def test_image_transform_dispatches_on_the_image_kind():
    transform = ImageTransform(pil=lambda img: "pil", tensor=lambda x: "tensor")
    assert transform(Image.new("L", (4, 4))) == "pil" and transform(torch.zeros(2, 4, 4)) == "tensor"
    with pytest.raises(ImageReadError, match="tensors only"):
        ImageTransform(None, lambda x: x)(Image.new("RGB", (4, 4)))
