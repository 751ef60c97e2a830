import os

import numpy as np
import pytest
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee")  # colour photographs inside scikit-image's wheel (camera: grayscale)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """scikit-image's photographs as PNG files: {name: path}, plus the grayscale "camera"."""
    import skimage.data
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in PHOTOS + ("camera",):
        paths[name] = os.path.join(folder, f"{name}.png")
        Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(paths[name])
    return paths
